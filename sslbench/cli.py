"""``sslbench`` command line: methods | pretrain | eval | run | benchmark | leaderboard |
check-method | new-method | export.

Bad input (unknown key, wrong type, missing path, unsupported backbone...) prints one line and
exits with code 2; ``--debug`` shows the traceback. A failed run (e.g. non-finite loss) exits 1.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Optional

from . import __version__
from .config import BOARD_DIR, RUNS_DIR
from .errors import UserError


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summaries")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sslbench", description=__doc__.splitlines()[0])
    ap.add_argument("--version", action="version", version=f"sslbench {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    _add_methods(sub)
    _add_run_commands(sub)
    _add_suite_commands(sub)
    _add_method_tools(sub)
    _add_leaderboard(sub)
    _add_export(sub)
    return ap


def _add_methods(sub: argparse._SubParsersAction) -> None:
    """methods: list the registered methods."""
    p = sub.add_parser("methods", help="list registered methods (built-in and plugins)")
    p.add_argument("--plugins", nargs="*", default=[], help="plugin .py files to load first")
    _add_common(p)


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """pretrain | eval | run: one recipe or run directory."""
    p = sub.add_parser("pretrain", help="pretrain a method; writes a run directory")
    p.add_argument("target", help="recipe YAML, or an existing run directory to resume")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--out", help="run directory (default runs/<run-id>); resumes if it has a "
                                 "checkpoint")
    _add_common(p)

    p = sub.add_parser("eval", help="evaluate a run (or a baseline): probes, k-NN, "
                                    "fine-tuning, LP-FT")
    p.add_argument("target", help="run directory, or a recipe YAML for --backbone baselines")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--protocol", default="all",
                   help="linear | linear_sgd | knn | finetune | lpft, comma-separated, or all "
                        "(default)")
    p.add_argument("--backbone", default="run",
                   help="run (the pretrained backbone) | random | pixels | supervised (trained "
                        "from scratch on the labels) | timm:NAME (timm's pretrained weights; "
                        "backbone.checkpoint=PATH overrides)")
    _add_common(p)

    p = sub.add_parser("run", help="pretrain, evaluate, record and render the leaderboard")
    p.add_argument("target", help="recipe YAML (or a run directory to resume)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--out", help="run directory (default runs/<run-id>)")
    _add_common(p)


def _add_suite_commands(sub: argparse._SubParsersAction) -> None:
    """benchmark | wandb-sync: many runs at once."""
    p = sub.add_parser("benchmark", help="run a suite of recipes x seeds, skipping finished cells")
    p.add_argument("suite", help="suite YAML (e.g. recipes/suites/embedded.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides for every cell")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their status")
    p.add_argument("--only", help="globs on cell names (<recipe>-s<seed>) to run, comma-separated "
                        "(e.g. 'dino_*-s0,mae_vit-*')")
    p.add_argument("--skip", help="globs on cell names to skip, comma-separated")
    _add_common(p)

    p = sub.add_parser("wandb-sync", help="upload offline W&B runs (wandb sync) found under "
                                          "run directories")
    p.add_argument("paths", nargs="*", default=[RUNS_DIR], help="directories to search "
                                                              "(default runs)")
    p.add_argument("--dry-run", action="store_true", help="list the offline runs only")
    _add_common(p)


def _add_method_tools(sub: argparse._SubParsersAction) -> None:
    """check-method | new-method: for method authors."""
    p = sub.add_parser("check-method", help="run the conformance kit on a method "
                                            "(contract checks on tiny backbones, 2-process DDP)")
    p.add_argument("name", help="registered method name")
    p.add_argument("--family", choices=("resnet", "vit"), help="only this backbone family")
    p.add_argument("--plugins", nargs="*", default=[], help="plugin .py files to load first")
    p.add_argument("--no-ddp", action="store_true", help="skip the 2-process gloo DDP check")
    _add_common(p)

    p = sub.add_parser("new-method", help="scaffold a method plugin package sslbench-NAME "
                                          "(entry point, placeholder method, tests, recipe)")
    p.add_argument("name", help="new method name: a lowercase Python identifier")
    p.add_argument("--dir", help="target directory (default ./sslbench-NAME); must not exist")
    _add_common(p)


def _add_leaderboard(sub: argparse._SubParsersAction) -> None:
    """leaderboard: render | validate | compare | submit."""
    p = sub.add_parser("leaderboard", help="render the leaderboard from stored records, check "
                                           "them, compare two boards, or submit results to the "
                                           "committed board")
    p.add_argument("action", nargs="?", default="render",
                   choices=("render", "validate", "compare", "submit"),
                   help="render (default) [DIR] | validate [DIR] (check every record file) | "
                        "compare A B (row by row, B - A within 95%% intervals) | submit SRC "
                        "(validate SRC's records and copy them into --to)")
    p.add_argument("paths", nargs="*", metavar="DIR",
                   help="leaderboard directories, records under DIR/results (render, validate: "
                        "default --dir)")
    p.add_argument("--format", help="render: md (default) | json | csv | html; "
                                    "compare: text (default) | md | json")
    p.add_argument("--out", metavar="FILE", help="write the rendered board (or the comparison) "
                                                 "to FILE, not stdout")
    p.add_argument("--metric", default="acc", help="compare: the metric to compare (default acc)")
    p.add_argument("--to", default=BOARD_DIR,
                   help="submit: destination board (default leaderboard, the committed one)")
    p.add_argument("--dry-run", action="store_true",
                   help="submit: print what would change, write nothing")
    p.add_argument("--dir", default=BOARD_DIR,
                   help="leaderboard directory (default leaderboard)")
    p.add_argument("--write", action="store_true",
                   help="also (re)write <dir>/LEADERBOARD.md and <dir>/index.html")
    p.add_argument("--wandb", action="store_true",
                   help="also log the aggregated board as a wandb.Table (job_type leaderboard)")
    p.add_argument("--group", help="W&B group for --wandb (e.g. the suite name)")
    _add_common(p)


def _add_export(sub: argparse._SubParsersAction) -> None:
    """export: a finished run as a timm / Hugging Face Hub model folder."""
    p = sub.add_parser("export", help="write a finished run as a timm / Hugging Face Hub model "
                                      "folder (config.json, model.safetensors, README.md)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished pretraining run directory")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the model folder to write (new or empty)")
    p.add_argument("--force", action="store_true",
                   help="overwrite the export files in a non-empty OUT_DIR")
    p.add_argument("--board", metavar="DIR", help="leaderboard directory whose records give the "
                                                  "model card's numbers (default: the run's "
                                                  "leaderboard.dir)")
    _add_common(p)


def _load(target: str, overrides: list[str]):
    from .recipe import load_recipe
    from .run import load_run, recipe_info

    t = Path(target)
    if t.is_dir():
        cfg, info = load_run(t)
        if overrides:
            cfg = load_recipe(t / "config.yaml", overrides)
        return cfg, info.get("recipe") or recipe_info(None), t
    cfg = load_recipe(t, overrides)
    return cfg, recipe_info(t), None


def _run_dir(cfg, recipe, given: Optional[str], existing: Optional[Path]) -> Path:
    from .run import default_run_id

    if existing is not None:
        return existing
    if given:
        return Path(given)
    return Path(RUNS_DIR) / default_run_id(cfg, recipe)


def cmd_methods(args) -> int:
    from .registry import load_plugin_file
    from .ssl import METHODS

    for path in args.plugins:
        load_plugin_file(path)
    rows = [(n, ", ".join(METHODS.get(n).families), METHODS.origin(n), METHODS.get(n).paper)
            for n in METHODS.names()]
    header = ("method", "backbones", "source", "paper")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header[:3])]
    for row in (header, *rows):
        print("  ".join(f"{c:<{w}}" for c, w in zip(row[:3], widths)) + f"  {row[3]}")
    return 0


def cmd_pretrain(args) -> int:
    from .run import pretrain

    cfg, recipe, existing = _load(args.target, args.overrides)
    run_dir = _run_dir(cfg, recipe, args.out, existing)
    info = pretrain(cfg, recipe, run_dir, args.quiet)
    if not args.quiet and info:
        pt = info.get("pretrain", {})
        print(f"pretrained {run_dir}: {pt.get('steps')} steps, {pt.get('wall_time_s', 0):.1f} s, "
              f"{pt.get('img_per_s', 0):.0f} img/s")
    return 0


def cmd_eval(args) -> int:
    from .run import PROTOCOLS, evaluate

    cfg, recipe, run_dir = _load(args.target, args.overrides)
    kind = {"random": "random_init", "pixels": "raw_pixels"}.get(args.backbone, args.backbone)
    if kind == "run" and run_dir is None:
        raise UserError(f"{args.target} is a recipe, not a run directory; pass a run made by "
                        f"'sslbench pretrain', or use --backbone random|pixels|supervised|timm:NAME")
    protocols = list(PROTOCOLS) if args.protocol == "all" else args.protocol.split(",")
    records = evaluate(cfg, recipe, kind, run_dir if kind == "run" else None, protocols,
                       quiet=args.quiet)
    if not args.quiet:
        _print_records(records)
    return 0


def cmd_run(args) -> int:
    from .run import run

    t0 = time.perf_counter()
    cfg, recipe, existing = _load(args.target, args.overrides)
    run_dir = _run_dir(cfg, recipe, args.out, existing)
    records, board = run(cfg, recipe, run_dir, args.quiet)
    if not args.quiet and records:
        print(_summary(records))
        if board is not None:
            print(f"full board: {board} and {board.parent / 'index.html'} (print it: sslbench "
                  f"leaderboard render {board.parent})")
        print(f"run directory: {run_dir}   total wall time: {time.perf_counter() - t0:.1f} s")
    return 0


def _summary(records: list[dict]) -> str:
    """This job's results, one line per (subject, protocol, label fraction): test and OOD
    accuracy with the 95% interval of the test set (1.96 x the bootstrap SE over test glyphs),
    averaged over evaluation seeds."""
    from .identity import label_fraction

    groups: dict[tuple, list[dict]] = {}
    for r in records:
        fraction = label_fraction(r["protocol_settings"])
        groups.setdefault((r["method"], r["backbone"], r["protocol"], fraction), []).append(r)

    def cell(recs: list[dict], key: str) -> str:
        vals = [r["metrics"][key] for r in recs if key in r["metrics"]]
        ses = [r["metrics"][f"{key}_se"] for r in recs if f"{key}_se" in r["metrics"]]
        if not vals:
            return "-"
        text = f"{100 * sum(vals) / len(vals):5.1f}"
        return text + (f" ± {196 * sum(ses) / len(ses):.1f}" if ses else "")

    lines = [f"{'method':<14} {'backbone':<22} {'protocol':<9} {'labels':>6}  "
             f"{'test acc %':<12} {'OOD acc %':<12}"]
    for (method, backbone, protocol, fraction), recs in groups.items():
        labels = f"{100 * fraction:.0f}%" if fraction < 1 else "all"
        lines.append(f"{method[:14]:<14} {backbone[:22]:<22} {protocol[:9]:<9} {labels:>6}  "
                     f"{cell(recs, 'acc'):<12} {cell(recs, 'ood_acc'):<12}")
    return "\n".join(lines)


def cmd_benchmark(args) -> int:
    from .suite import run_suite

    out = run_suite(args.suite, args.only, args.skip, args.dry_run, args.quiet, args.overrides)
    if out and not args.dry_run and not args.quiet:
        from .recipe import load_recipe

        board = load_recipe(out[-1][0].recipe, args.overrides).leaderboard.dir
        print(f"records: {board}/results; board: {board}/LEADERBOARD.md; compare with the "
              f"committed board: sslbench leaderboard compare leaderboard {board}")
    return 0


def cmd_leaderboard(args) -> int:
    n = len(args.paths)
    usage = {"compare": "A B", "submit": "SRC"}.get(args.action, "[DIR]")
    if not {"compare": n == 2, "submit": n == 1}.get(args.action, n <= 1):
        raise UserError(f"'sslbench leaderboard {args.action}' takes {usage}, got {n} "
                        f"director{'y' if n == 1 else 'ies'}; "
                        f"usage: sslbench leaderboard {args.action} {usage}")
    if args.action == "submit":
        from .leaderboard.submit import submit

        submit(args.paths[0], args.to, dry_run=args.dry_run, quiet=args.quiet)
        return 0
    directory = args.paths[0] if args.paths else args.dir
    if args.action == "validate":
        from .leaderboard.validate import main as validate

        return validate(directory)
    if args.action == "compare":
        from .leaderboard.compare import compare

        text = compare(args.paths[0], args.paths[1], args.format or "text", args.metric)
    else:
        text = _render_board(args, directory)
    if args.out:
        from .utils import atomic_write_text

        atomic_write_text(args.out, text)
        if not args.quiet:
            print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


def _render_board(args, directory: str) -> str:
    """``leaderboard render``: the board of ``directory`` in ``--format``."""
    from .leaderboard import render, write_board
    from .leaderboard.render import FORMATS

    fmt = args.format or "md"
    if fmt not in (*FORMATS, "html"):
        raise UserError(f"unknown leaderboard format '{fmt}' "
                        f"(valid: {', '.join((*FORMATS, 'html'))})")
    if args.write:
        write_board(directory, html=True)
    if args.wandb:
        from .config import LoggingConfig
        from .leaderboard.wandb_table import log_leaderboard

        from omegaconf import OmegaConf

        log_leaderboard(directory, OmegaConf.structured(LoggingConfig), group=args.group)
    if fmt == "html":
        from .leaderboard.html import render_html_dir

        return render_html_dir(Path(directory) / "results")
    return render(Path(directory) / "results", fmt)


def cmd_wandb_sync(args) -> int:
    from .tracking import wandb_sync

    return wandb_sync(args.paths, args.dry_run, args.quiet)


def cmd_check_method(args) -> int:
    import torch

    from .conformance import check_method

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    checks = check_method(args.name, [args.family] if args.family else None,
                          ddp=not args.no_ddp, plugins=args.plugins)
    failed = [c for c in checks if c.ok is False]
    for c in checks:
        if not args.quiet or c.ok is False:
            print(c.line())
    if not args.quiet:
        print(f"{args.name}: {len(checks) - len(failed)}/{len(checks)} checks passed or skipped"
              + ("" if not failed else f", {len(failed)} FAILED"))
    return 1 if failed else 0


def cmd_new_method(args) -> int:
    from .scaffold import scaffold

    root = scaffold(args.name, args.dir)
    if not args.quiet:
        print(f"created {root}/ (method '{args.name}', package sslbench_{args.name}); next:\n"
              f"  edit {root}/sslbench_{args.name}/__init__.py (the TODOs)\n"
              f"  pip install -e {root}\n"
              f"  sslbench check-method {args.name}\n"
              f"  sslbench run {root}/recipes/embedded.yaml\n"
              f"see {root}/README.md for the submission steps")
    return 0


def cmd_export(args) -> int:
    from .export import export_run

    out = export_run(args.run_dir, args.out_dir, force=args.force, board=args.board)
    if not args.quiet:
        how = (f"timm.create_model('local-dir:{args.out_dir}', pretrained=True)"
               if out["timm_loads"] else "sslbench.export.load_export (timm cannot build its "
                                         "32 px ResNet stem; see its README.md)")
        print(f"exported {args.run_dir} -> {args.out_dir} (config.json, model.safetensors, "
              f"README.md; {out['rows']} board rows); load it with {how}")
    return 0


def _print_records(records: list[dict]) -> None:
    for r in records:
        m = r["metrics"]
        extra = "".join(f"  {k}={v:.4f}" for k, v in m.items() if k != "acc")
        print(f"{r['method']:>12} {r['backbone']:>22} {r['protocol']:>7} seed={r['seed']} "
              f"ev={r['eval_seed']}  acc={m.get('acc', float('nan')):.4f}{extra}")


COMMANDS = {"methods": cmd_methods, "pretrain": cmd_pretrain, "eval": cmd_eval, "run": cmd_run,
            "benchmark": cmd_benchmark, "leaderboard": cmd_leaderboard,
            "check-method": cmd_check_method, "new-method": cmd_new_method,
            "wandb-sync": cmd_wandb_sync, "export": cmd_export}


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # key=value overrides may appear anywhere after the subcommand (argparse cannot intermix
    # them with options), so pull them out first.
    overrides = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    rest = [a for i, a in enumerate(argv) if i == 0 or a not in overrides]
    args = _parser().parse_args(rest)
    if hasattr(args, "overrides"):
        if args.overrides:  # positional words left over: not key=value, so not overrides
            print(f"sslbench: error: '{args.overrides[0]}' is not a key=value override "
                  f"(e.g. train.max_steps=100)", file=sys.stderr)
            return 2
        args.overrides = overrides
    elif overrides:
        print(f"sslbench: error: '{args.cmd}' takes no key=value overrides "
              f"(got {overrides[0]})", file=sys.stderr)
        return 2
    if args.cmd in ("pretrain", "eval", "run", "benchmark"):
        from .utils import git_commit

        git_commit()  # provenance of the code this process runs, before the checkout can move
    try:
        return COMMANDS[args.cmd](args)
    except UserError as e:
        if args.debug:
            raise
        print(f"sslbench: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sslbench: interrupted (a checkpoint-resumable run continues with "
              "'sslbench pretrain RUN_DIR')", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` & co.: stop quietly, like coreutils
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:  # noqa: BLE001
        if args.debug:
            raise
        code, line = _failure(e)
        print(f"sslbench: error: {line}", file=sys.stderr)
        return code


def _one_line(e: BaseException) -> str:
    """The message of ``e`` as one line. A DataLoader worker re-raises its error with the
    worker's traceback in the message: keep the original error's last line only."""
    text = str(e).strip() or type(e).__name__
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    lines = text.splitlines()
    return lines[0] if lines else text


def _failure(e: Exception) -> tuple[int, str]:
    """Exit code and one line for an error that is not a UserError: 1 for a run that failed,
    2 for an unusable path."""
    import errno

    from .engine import TrainingError

    if isinstance(e, TrainingError):
        return getattr(e, "exit_code", 1), _one_line(e)
    if isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        if e.errno == errno.ENOSPC:
            return 1, (f"no space left on the device while writing{where}; free space and run "
                       f"again (files written before are unchanged; pretraining resumes from "
                       f"its last checkpoint)")
        if isinstance(e, (PermissionError, NotADirectoryError, IsADirectoryError,
                          FileExistsError)) or e.errno in (errno.EROFS, errno.EACCES):
            return 2, (f"cannot write{where}: {e.strerror or e}; choose a writable location "
                       f"(--out, leaderboard.dir)")
        return 1, f"I/O error{where}: {e.strerror or e}"
    first = _one_line(e)
    if "Original Traceback" in str(e) and "UserError" in str(e).splitlines()[-1]:
        return 2, first  # a UserError raised inside a DataLoader worker
    return 1, (f"internal error ({type(e).__name__}: {first}); please report it, with the "
               f"traceback from --debug")


if __name__ == "__main__":
    sys.exit(main())
