"""``sslbench benchmark SUITE``: run a matrix of recipes x seeds, skipping finished cells.

A suite file lists recipes (each with optional overrides) and seeds::

    name: embedded
    seeds: [0, 1, 2]
    cells:
      - recipe: recipes/quickstart.yaml
      - recipe: recipes/embedded/moco_v3_vit.yaml
        overrides: [train.max_steps=200]
      - recipe: recipes/embedded/moco_v2_resnet.yaml
        seeds: [0, 1, 2, 3, 4, 5]   # optional: this entry's own seeds instead of the suite's
    baselines:                      # optional: evaluated once per seed, not once per cell
      - recipe: recipes/quickstart.yaml       # its data, backbone and protocols
        kinds: [raw_pixels, random_init]
        seeds: [0, 1, 2, 3, 4, 5]   # optional, as for cells

An entry's own ``seeds`` serve a row whose paired interval needs more pairs than the rest:
paired differences use the seeds both rows have, so its baselines need those seeds too.

Without a ``baselines:`` key every cell also evaluates its recipe's ``eval.baselines``. With
one, cells skip their own baselines and each listed (recipe, kind) is evaluated once per seed:
recipes that share a backbone would otherwise re-measure the same random-init network.

Each (cell, seed) pretrains into ``runs/<suite>/<recipe>-s<seed>`` — a fixed directory, so a
killed cell resumes from its checkpoint — then evaluates and records like ``sslbench run``, into
``leaderboard.dir`` (default the local ``runs/leaderboard``). A cell is skipped when every record
it writes exists there with the same identity (dataset contents, resolved config, seeds), so a
fresh clone re-runs every cell; a cell another process holds (its lock) is skipped as busy.
Cells are independent, so a cluster can run them in parallel with any launcher (one ``sslbench
benchmark SUITE --only NAME`` or ``torchrun ... sslbench run`` per cell).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .config import RUNS_DIR
from .errors import UserError
from .identity import check_name


@dataclass
class Cell:
    recipe: str
    overrides: list[str] = field(default_factory=list)
    seed: int = 0
    baselines: tuple[str, ...] = ()  # non-empty: a baseline cell (evaluation only)
    label: Optional[str] = None  # the cell's own name (default: the recipe's file name)

    @property
    def name(self) -> str:
        kinds = "+".join(k.replace(":", "-") for k in self.baselines)
        return f"{self.label or Path(self.recipe).stem}{'-' + kinds if kinds else ''}-s{self.seed}"


def load_suite(path: str | Path) -> tuple[str, list[Cell]]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"suite file not found: {p}")
    raw = yaml.safe_load(p.read_text()) or {}
    unknown = set(raw) - {"name", "seeds", "cells", "baselines"}
    if unknown:
        raise UserError(f"{p}: unknown key(s) {sorted(unknown)} "
                        f"(valid: name, seeds, cells, baselines)")
    seeds = _seeds(raw.get("seeds", [0]), f"{p}: seeds")
    own_baselines = "baselines" not in raw
    cells = []
    for i, c in enumerate(raw.get("cells") or []):
        if isinstance(c, str):
            c = {"recipe": c}
        if not isinstance(c, dict) or "recipe" not in c or set(c) - {"recipe", "overrides",
                                                                      "name", "seeds"}:
            raise UserError(f"{p}: cell {i} must be a recipe path or "
                            f"{{recipe, overrides, name, seeds}}")
        overrides = list(c.get("overrides") or []) + ([] if own_baselines
                                                      else ["eval.baselines=[]"])
        label = c.get("name")
        if label is not None:
            check_name(label, f"{p}: cell {i} name")
        for s in (_seeds(c["seeds"], f"{p}: cell {i} seeds") if "seeds" in c else seeds):
            cells.append(Cell(c["recipe"], overrides, s, label=label))
    if not cells:
        raise UserError(f"{p}: no cells; list recipes under 'cells:'")
    names = [c.name for c in cells if not c.baselines]
    for n in names:
        if names.count(n) > 1:  # each cell owns its run directory runs/<suite>/<cell>
            raise UserError(f"{p}: two cells are named '{n}'; give one of them its own "
                            f"'name:' (e.g. {{recipe: ..., overrides: [...], name: other}})")
    for i, b in enumerate(raw.get("baselines") or []):
        if (not isinstance(b, dict) or "recipe" not in b or not b.get("kinds")
                or set(b) - {"recipe", "kinds", "overrides", "seeds"}):
            raise UserError(f"{p}: baselines entry {i} must be {{recipe, kinds: [raw_pixels | "
                            f"random_init | timm:NAME, ...], overrides, seeds}}")
        for s in (_seeds(b["seeds"], f"{p}: baselines entry {i} seeds") if "seeds" in b
                  else seeds):
            cells.append(Cell(b["recipe"], list(b.get("overrides") or []), s,
                              tuple(b["kinds"])))
    return str(raw.get("name") or p.stem), cells


def _seeds(value, where: str) -> list[int]:
    """A non-empty list of distinct non-negative integer seeds, or a one-line error."""
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise UserError(f"{where} must be a non-empty list of non-negative integers, e.g. [0, 1, 2]"
                        f"; got {value!r}")
    if len(set(value)) != len(value):
        raise UserError(f"{where} lists a seed twice: {value}")
    return list(value)


def _done(cfg, recipe: dict, kinds: tuple[str, ...] = ()) -> bool:
    """Every record this cell writes (its SSL run, or each baseline kind: every protocol x eval
    seed x label fraction) exists in the results directory it writes to, with the same identity
    (dataset contents, resolved config, seeds; ``sslbench.identity``)."""
    from .leaderboard.record import record_path
    from .run import expected_records

    results = Path(cfg.leaderboard.dir) / "results"
    return all(record_path(results, rec).is_file()
               for kind in kinds or ("run",) for rec in expected_records(cfg, recipe, kind))


def matches(name: str, globs: str) -> bool:
    """Whether ``name`` matches any of the comma-separated shell globs in ``globs``."""
    return any(fnmatch.fnmatch(name, g.strip()) for g in globs.split(",") if g.strip())


def run_suite(path: str | Path, only: Optional[str] = None, skip: Optional[str] = None,
              dry_run: bool = False, quiet: bool = False, extra: Optional[list[str]] = None
              ) -> list[tuple[Cell, str]]:
    """Run (or list, with ``dry_run``) the suite's cells; returns (cell, status) pairs."""
    from .recipe import load_recipe
    from .leaderboard import write_board
    from .run import RunBusy, evaluate, recipe_info, run, run_lock

    suite, cells = load_suite(path)
    check_name(suite, "suite name", f"fix 'name:' in {path}: it becomes the directory runs/<name>")
    out = []
    cfg = None
    for cell in cells:
        if only and not matches(cell.name, only):
            continue
        if skip and matches(cell.name, skip):
            continue
        cfg = load_recipe(cell.recipe, [*cell.overrides, f"train.seed={cell.seed}",
                                        *(extra or [])])
        if cfg.logging.group is None:
            cfg.logging.group = suite
        info = recipe_info(cell.recipe)
        status = "done" if _done(cfg, info, cell.baselines) else "todo"
        cell_dir = Path(RUNS_DIR) / suite / cell.name
        if status == "todo" and not dry_run:
            try:
                if cell.baselines:
                    with run_lock(cell_dir):  # one process per cell, like the SSL cells
                        for kind in cell.baselines:
                            evaluate(cfg, info, kind, None, quiet=quiet, suite=suite)
                    if cfg.leaderboard.render:
                        write_board(cfg.leaderboard.dir)
                else:
                    run(cfg, info, cell_dir, quiet, suite=suite)
                status = "ran"
            except RunBusy:  # another worker has this cell: leave it to them
                status = "busy (another process runs it)"
        out.append((cell, status))
        if not quiet or dry_run:  # a dry run's listing is its output, even under --quiet
            print(f"[{len(out)}] {cell.name:<40} {status}", flush=True)
    if cfg is not None and any(s == "ran" for _, s in out):
        from .leaderboard.wandb_table import log_leaderboard

        # the aggregated board as a wandb.Table in the suite's group (no-op with W&B off)
        log_leaderboard(cfg.leaderboard.dir, cfg.logging, group=cfg.logging.group,
                        run_dir=Path(RUNS_DIR) / suite)  # where `sslbench wandb-sync` looks
    return out
