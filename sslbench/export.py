"""``sslbench export RUN_DIR OUT_DIR``: a finished pretraining run as a timm / Hugging Face Hub
model folder.

``OUT_DIR`` gets the three files timm's ``push_to_hf_hub`` writes:

- ``config.json``: timm's pretrained config (``architecture``, ``num_classes`` 0,
  ``num_features``, ``global_pool``, ``model_args`` that rebuild the exact architecture,
  ``pretrained_cfg`` with the preprocessing sslbench used), plus an ``sslbench`` block naming
  the run;
- ``model.safetensors``: the backbone's weights under timm's own key names (no head);
- ``README.md``: a model card (front matter for the Hub, the method, recipe, seed, commit,
  data, this run's board numbers and the provenance).

``timm.create_model("local-dir:OUT_DIR", pretrained=True)`` (timm >= 1.0.16; ``hf-hub:`` after
an upload) rebuilds the backbone with these weights: ``model(x)`` gives the pooled features
sslbench evaluated. One exception: timm cannot build the **32 px ResNet stem**
(``backbone.small_input``; 3x3 stride-1 first conv, no max-pool, :mod:`.backbones.small_input`).
Every timm ResNet stem has stride 2 (a 7x7 conv, or a deep 3x3 stack whose first conv has
stride 2) followed by a stride-2 max-pool (or, with ``replace_stem_pool``, a stride-2 conv), and
no constructor argument changes either, so no ``model_args`` can describe it. Such an export
carries ``model_args.sslbench_small_input``, an argument timm's ResNet does not take: loading
it with timm fails ("unexpected keyword argument 'sslbench_small_input'") instead of putting the
weights into the wrong stem (a deep stem's weights have the same shapes and would load
silently). :func:`load_export` (or the three lines in the model card) loads it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import timm
import yaml
from torch import nn

from .backbones import Backbone, adapt_small_input, load_backbone
from .errors import UserError

EXPORT_FILES = ("config.json", "model.safetensors", "README.md")
SMALL_INPUT_ARG = "sslbench_small_input"  # model_args key timm refuses: the 32 px ResNet stem
SMALL_INPUT_STEM = ("conv1: 3x3 stride 1 padding 1 (a deep stem keeps its convs, the first "
                    "loses its stride); maxpool: Identity. timm's ResNet cannot build this "
                    "stem; load with sslbench.export.load_export or see README.md")
_DROP_ARGS = ("num_classes", "drop_rate", "drop_path_rate", "drop_block_rate")
_METRICS = ("acc", "ood_acc")  # the board columns the model card shows


# -- input ----------------------------------------------------------------------------------------

def _finished_run(run_dir: Path) -> tuple[Any, dict[str, Any], Backbone]:
    """(config, run.json, backbone) of a finished run; UserError when it is none."""
    from .run import load_run

    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}; pass a run made by "
                        f"'sslbench pretrain'")
    cfg, info = load_run(run_dir)
    weights = run_dir / "backbone.safetensors"
    if info.get("status") != "done" or not weights.is_file():
        status = info.get("status") or "no run.json"
        raise UserError(f"{run_dir} has not finished pretraining (status {status}"
                        f"{'' if weights.is_file() else ', no backbone.safetensors'}); "
                        f"continue it with: sslbench pretrain {run_dir}")
    return cfg, info, load_backbone(weights)


def _check_out_dir(out_dir: Path, run_dir: Path, force: bool) -> None:
    """Refuse an ``OUT_DIR`` that is a file, the run itself, or not empty (unless ``force``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory; choose another OUT_DIR")
    if out_dir.resolve() == run_dir.resolve():
        raise UserError(f"OUT_DIR {out_dir} is the run directory; choose another OUT_DIR")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UserError(f"{out_dir} exists and is not empty; choose another OUT_DIR, or pass "
                        f"--force to overwrite its {', '.join(EXPORT_FILES)}")


# -- config.json ----------------------------------------------------------------------------------

def _global_pool(model: nn.Module) -> str:
    """timm's name of the model's pooling (``avg`` for ResNets, ``token`` for ViTs)."""
    pool = getattr(model, "global_pool", "")
    return pool if isinstance(pool, str) else str(getattr(pool, "pool_type", "") or "")


def small_input_stem(bb: Backbone) -> bool:
    """Whether ``bb`` has the 32 px ResNet stem, which timm cannot build."""
    return bb.family == "resnet" and bool(bb.small_input)


def model_args(bb: Backbone) -> dict[str, Any]:
    """The ``timm.create_model`` arguments that rebuild ``bb``'s architecture (the head, set by
    ``num_classes``, and drop rates, which change no weight, left out, as timm's own exports do);
    plus :data:`SMALL_INPUT_ARG` for the 32 px ResNet stem."""
    args = {k: v for k, v in bb.timm_kwargs.items() if k not in _DROP_ARGS}
    if small_input_stem(bb):
        args[SMALL_INPUT_ARG] = SMALL_INPUT_STEM
    return args


def pretrained_cfg(bb: Backbone, cfg: Any) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` for ``bb``: the preprocessing sslbench evaluated with (square
    center crop of the short side, bilinear resize to ``data.image_size``, ``data.mean/std``)."""
    source = getattr(bb.model, "pretrained_cfg", {}) or {}
    size = int(cfg.data.image_size)
    out: dict[str, Any] = {
        "custom_load": False,
        "input_size": [3, size, size],
        "fixed_input_size": bool(source.get("fixed_input_size"))
        and not bb.timm_kwargs.get("dynamic_img_size", False),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": [float(v) for v in cfg.data.mean],
        "std": [float(v) for v in cfg.data.std],
        "num_classes": 0,
    }
    for key in ("first_conv", "classifier"):
        if source.get(key):
            out[key] = source[key]
    return out


def timm_config(bb: Backbone, cfg: Any, info: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The ``config.json`` of an export (timm's hub layout plus an ``sslbench`` block)."""
    prov = info.get("provenance") or {}
    recipe = info.get("recipe") or {}
    config: dict[str, Any] = {
        "architecture": bb.name,
        "num_classes": 0,
        "num_features": int(bb.num_features),
        "global_pool": _global_pool(bb.model),
        "model_args": model_args(bb),
        "pretrained_cfg": pretrained_cfg(bb, cfg),
        "sslbench": {"run_id": run_id, "method": cfg.method.name, "recipe": recipe.get("name"),
                     "seed": int(cfg.train.seed), "dataset": cfg.data.name,
                     "small_input": bool(bb.small_input),
                     "git_commit": prov.get("git_commit"),
                     "sslbench_version": prov.get("sslbench_version")},
    }
    if small_input_stem(bb):
        config["sslbench"]["small_input_stem"] = SMALL_INPUT_STEM
    return config


def timm_weights(bb: Backbone) -> bytes:
    """``model.safetensors``: the backbone's state dict (timm's key names, no head)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in bb.model.state_dict().items()}
    return save(state, metadata={"format": "pt"})


# -- README.md ------------------------------------------------------------------------------------

def board_rows(run_dir: Path, cfg: Any, board: Optional[Path]) -> tuple[Path, list[dict]]:
    """(results directory, aggregated board rows of this run's records). A record is this run's
    when its ``run_id`` is the run directory's name and its config differs from the run's in
    ``eval.*`` keys only (what ``sslbench eval RUN`` may change): a same-named directory
    holding another pretraining does not count."""
    from .config import to_dict
    from .identity import config_diff
    from .leaderboard import aggregate, load_records

    results = Path(board if board is not None else cfg.leaderboard.dir) / "results"
    mine = to_dict(cfg)
    records = [r for r in load_records(results, skip_bad=True)
               if r.get("run_id") == run_dir.name and isinstance(r.get("config"), dict)
               and not config_diff(mine, r["config"], ignore=("eval",))]
    return results, aggregate(records) if records else []


def _board_table(results: Path, rows: list[dict[str, Any]]) -> list[str]:
    """The model card's results section: one line per (dataset, protocol, settings)."""
    from .identity import label_fraction
    from .leaderboard.formatting import ci_text, fraction_text
    from .leaderboard.markdown import md_cell

    if not rows:
        return [f"No records of this run in `{results}` yet (`sslbench eval RUN_DIR` writes "
                f"them; export again afterwards)."]
    lines = [f"Accuracy in % (mean ± 95% CI over evaluation seeds), from the records in "
             f"`{results}` naming this run:", "",
             "| dataset | protocol | label fraction | feature layer | n | "
             + " | ".join(_METRICS) + " |", "|---" * (5 + len(_METRICS)) + "|"]
    for r in rows:
        settings = r.get("protocol_settings") or {}
        cells = [r["dataset"], r["protocol"],
                 fraction_text(label_fraction(settings)),
                 settings.get("feature_layer", "final"), r["n"]]
        cells += [ci_text(r["metrics"][m]) if m in r["metrics"] else "–" for m in _METRICS]
        lines.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    return lines


def _front_matter(cfg: Any) -> str:
    """YAML front matter for the Hub (no ``license``: the weights' terms follow the data's)."""
    tags = ["timm", "image-feature-extraction", "self-supervised", "sslbench", cfg.method.name]
    meta = {"library_name": "timm", "pipeline_tag": "image-feature-extraction",
            "tags": list(dict.fromkeys(str(t) for t in tags))}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _usage(bb: Backbone, config: dict[str, Any]) -> list[str]:
    """How to load the export: timm directly, or by hand for the 32 px ResNet stem."""
    if not small_input_stem(bb):
        return ["```python", "import timm", "",
                'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True)'
                "  # or hf-hub:OWNER/REPO", "model.eval()",
                "features = model(images)  # (B, num_features): pooled, no head", "```"]
    args = {k: v for k, v in config["model_args"].items() if k != SMALL_INPUT_ARG}
    conv = bb.model.conv1
    stem = ("model.conv1[0].stride = (1, 1)" if isinstance(conv, nn.Sequential) else
            f"model.conv1 = nn.Conv2d(3, {conv.out_channels}, 3, stride=1, padding=1, bias=False)")
    return ["This backbone has sslbench's **32 px ResNet stem** (`backbone.small_input`): "
            "3×3 stride-1 first conv, no max-pool. timm cannot build it (every timm ResNet stem "
            "has stride 2 and a stride-2 max-pool or conv, and no `model_args` changes that), "
            f"so `config.json` carries `model_args.{SMALL_INPUT_ARG}`, which timm refuses "
            "(\"unexpected keyword argument\") rather than load the weights into the wrong "
            "stem. Load it by hand:", "",
            "```python", "import timm", "from safetensors.torch import load_file",
            "from torch import nn", "",
            f"model = timm.create_model({bb.name!r}, pretrained=False, num_classes=0"
            + "".join(f", {k}={v!r}" for k, v in args.items()) + ")",
            stem, "model.maxpool = nn.Identity()",
            'model.load_state_dict(load_file("model.safetensors"))', "model.eval()", "```", "",
            "or, with sslbench installed: `sslbench.export.load_export(\"PATH\")`."]


def _details(cfg: Any, info: dict[str, Any], bb: Backbone, run_id: str) -> list[str]:
    """The model card's table of what was trained, on what, and by which code."""
    from .leaderboard.formatting import seconds
    from .leaderboard.markdown import md_cell

    recipe, prov = info.get("recipe") or {}, info.get("provenance") or {}
    pt = info.get("pretrain") or {}
    commit = prov.get("git_commit") or "unknown"
    if prov.get("git_dirty"):
        commit += " (uncommitted changes)"
    data = cfg.data
    rows = [("run", run_id), ("method", cfg.method.name),
            ("architecture", f"{bb.name} ({bb.family}, {bb.num_features} features)"),
            ("input", f"{data.image_size} px, mean {list(data.mean)}, std {list(data.std)}"
                      + (", 32 px stem" if small_input_stem(bb) else "")),
            ("data", f"{data.name} (split {data.pretrain_split or data.train_split})"
                     + (f", {data.path}" if data.path else "")),
            ("recipe", f"{recipe.get('name')} ({recipe.get('path')}, sha256 "
                       f"{recipe.get('sha256')})"),
            ("seed", cfg.train.seed),
            ("pretraining", f"{pt.get('steps', '?')} steps, {pt.get('images_seen', '?')} images "
                            f"seen, {seconds(pt.get('wall_time_s'))} on "
                            f"{prov.get('device') or 'unknown device'}"),
            ("commit", commit)]
    return ["| | |", "|---|---|"] + [f"| {k} | {md_cell(v)} |" for k, v in rows]


def model_card(cfg: Any, info: dict[str, Any], bb: Backbone, config: dict[str, Any],
               run_id: str, results: Path, rows: list[dict[str, Any]], weights_sha: str) -> str:
    """``README.md`` of an export: front matter, details, usage, board numbers, provenance."""
    prov = info.get("provenance") or {}
    versions = ", ".join(f"{k.replace('_version', '')} {prov[k]}" for k in (
        "sslbench_version", "torch", "timm", "kornia", "numpy", "python") if prov.get(k))
    parts = [_front_matter(cfg), f"# {run_id}", "",
             f"A {bb.name} backbone pretrained with **{cfg.method.name}** (self-supervised, no "
             f"labels) by sslbench and exported with `sslbench export`. "
             f"The model has no head: it returns the pooled {bb.num_features}-d representation "
             f"sslbench evaluated.", "", "## Model details", "",
             *_details(cfg, info, bb, run_id), "", "## How to use", "", *_usage(bb, config), "",
             "## Results on the sslbench board", "", *_board_table(results, rows), "",
             "## Provenance", "",
             f"- run config sha256: `{info.get('config_sha256') or 'unknown'}`; the full resolved "
             f"config is in the run's `config.yaml` and `run.json`",
             f"- trained with {versions or 'unknown versions'}",
             f"- `backbone.safetensors` sha256: `{weights_sha}`",
             "- license: not stated. The weights derive from the training data "
             f"(`{cfg.data.name}`); add a `license:` line to the front matter that its terms "
             "allow before publishing.", ""]
    return "\n".join(parts)


# -- the command -----------------------------------------------------------------------------------

def export_run(run_dir: str | Path, out_dir: str | Path, force: bool = False,
               board: Optional[str | Path] = None) -> dict[str, Any]:
    """Write the run ``run_dir`` into ``out_dir`` as a timm / Hub model folder.

    Everything is checked and built before the first file is written; each file is written
    atomically. ``board``: the leaderboard directory whose records give the card's numbers
    (default: the run's ``leaderboard.dir``). Returns the ``config`` written, the number of board
    ``rows`` in the card, and whether ``timm_loads`` the folder by itself (False: 32 px stem).

    Raises:
        UserError: no such run, an unfinished run, or an ``out_dir`` that is a file, the run
            itself, or not empty (without ``force``).
    """
    from .utils import atomic_write, atomic_write_text

    run, out = Path(run_dir), Path(out_dir)
    cfg, info, bb = _finished_run(run)
    _check_out_dir(out, run, force)
    config = timm_config(bb, cfg, info, run.name)
    weights = timm_weights(bb)
    results, rows = board_rows(run, cfg, Path(board) if board is not None else None)
    sha = hashlib.sha256((run / "backbone.safetensors").read_bytes()).hexdigest()
    card = model_card(cfg, info, bb, config, run.name, results, rows, sha)
    atomic_write(out / "model.safetensors", lambda p: p.write_bytes(weights))
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(out / "README.md", card)
    return {"config": config, "rows": len(rows), "timm_loads": not small_input_stem(bb)}


def load_export(path: str | Path) -> nn.Module:
    """The timm model of an export folder, the 32 px ResNet stem included (what
    ``timm.create_model("local-dir:PATH", pretrained=True)`` gives for every other export), in
    eval mode."""
    from safetensors.torch import load_file

    p = Path(path)
    try:
        config = json.loads((p / "config.json").read_text(encoding="utf-8"))
        args = dict(config.get("model_args") or {})
        small = args.pop(SMALL_INPUT_ARG, None)
        model = timm.create_model(config["architecture"], pretrained=False,
                                  num_classes=config.get("num_classes", 0), **args)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{p} is not a timm model folder with a valid config.json "
                        f"({type(e).__name__}: {e}); export it again") from None
    if small is not None:
        adapt_small_input(model)
    model.load_state_dict(load_file(str(p / "model.safetensors")))
    return model.eval()
