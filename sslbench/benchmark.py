"""``sslbench benchmark SUITE``: run a matrix of recipes x seeds, skipping finished cells.

A suite file lists recipes (each with optional overrides) and seeds::

    name: embedded
    seeds: [0, 1, 2]
    cells:
      - recipe: recipes/quickstart.yaml
      - recipe: recipes/embedded/moco_v3_vit.yaml
        overrides: [train.max_steps=200]
    baselines:                      # optional: evaluated once per seed, not once per cell
      - recipe: recipes/quickstart.yaml       # its data, backbone and protocols
        kinds: [raw_pixels, random_init]

Without a ``baselines:`` key every cell also evaluates its recipe's ``eval.baselines``. With
one, cells skip their own baselines and each listed (recipe, kind) is evaluated once per seed:
recipes that share a backbone would otherwise re-measure the same random-init network.

Each (cell, seed) pretrains into ``runs/<suite>/<recipe>-s<seed>`` — a fixed directory, so a
killed cell resumes from its checkpoint — then evaluates and records like ``sslbench run``.
A cell whose records already exist for every protocol is skipped. Cells are independent, so a
cluster can run them in parallel with any launcher (one ``sslbench benchmark SUITE --only
NAME`` or ``torchrun ... sslbench run`` per cell).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .errors import UserError


@dataclass
class Cell:
    recipe: str
    overrides: list[str] = field(default_factory=list)
    seed: int = 0
    baselines: tuple[str, ...] = ()  # non-empty: a baseline cell (evaluation only)

    @property
    def name(self) -> str:
        kinds = "+".join(k.replace(":", "-") for k in self.baselines)
        return f"{Path(self.recipe).stem}{'-' + kinds if kinds else ''}-s{self.seed}"


def load_suite(path: str | Path) -> tuple[str, list[Cell]]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"suite file not found: {p}")
    raw = yaml.safe_load(p.read_text()) or {}
    unknown = set(raw) - {"name", "seeds", "cells", "baselines"}
    if unknown:
        raise UserError(f"{p}: unknown key(s) {sorted(unknown)} "
                        f"(valid: name, seeds, cells, baselines)")
    seeds = raw.get("seeds", [0])
    own_baselines = "baselines" not in raw
    cells = []
    for i, c in enumerate(raw.get("cells") or []):
        if isinstance(c, str):
            c = {"recipe": c}
        if not isinstance(c, dict) or "recipe" not in c or set(c) - {"recipe", "overrides"}:
            raise UserError(f"{p}: cell {i} must be a recipe path or {{recipe, overrides}}")
        overrides = list(c.get("overrides") or []) + ([] if own_baselines
                                                      else ["eval.baselines=[]"])
        for s in seeds:
            cells.append(Cell(c["recipe"], overrides, int(s)))
    if not cells:
        raise UserError(f"{p}: no cells; list recipes under 'cells:'")
    for i, b in enumerate(raw.get("baselines") or []):
        if (not isinstance(b, dict) or "recipe" not in b or not b.get("kinds")
                or set(b) - {"recipe", "kinds", "overrides"}):
            raise UserError(f"{p}: baselines entry {i} must be {{recipe, kinds: [raw_pixels | "
                            f"random_init | timm:NAME, ...], overrides}}")
        for s in seeds:
            cells.append(Cell(b["recipe"], list(b.get("overrides") or []), int(s),
                              tuple(b["kinds"])))
    return str(raw.get("name") or p.stem), cells


def _done(cfg, recipe_name: str, kinds: tuple[str, ...] = ()) -> bool:
    """Every protocol x eval seed of this cell (its SSL run, or each baseline kind) has a
    record for the cell's seed."""
    from .leaderboard.record import record_path
    from .run import feature_layer, identity_settings, kind_protocols, record_identity

    results = Path(cfg.leaderboard.dir) / "results"
    for kind in kinds or ("run",):
        method, backbone = record_identity(cfg, kind)
        layer = feature_layer(cfg, kind)
        for protocol in kind_protocols(kind, list(cfg.eval.protocols), layer):
            for ev in cfg.eval.seeds:
                for fraction in cfg.eval.label_fractions:
                    rec = {"recipe": {"name": recipe_name}, "method": method,
                           "backbone": backbone, "protocol": protocol, "seed": cfg.train.seed,
                           "eval_seed": ev, "dataset": cfg.data.name,
                           "protocol_settings": identity_settings(protocol, fraction, layer)}
                    if not record_path(results, rec).is_file():
                        return False
    return True


def matches(name: str, globs: str) -> bool:
    """Whether ``name`` matches any of the comma-separated shell globs in ``globs``."""
    return any(fnmatch.fnmatch(name, g.strip()) for g in globs.split(",") if g.strip())


def run_suite(path: str | Path, only: Optional[str] = None, skip: Optional[str] = None,
              dry_run: bool = False, quiet: bool = False, extra: Optional[list[str]] = None
              ) -> list[tuple[Cell, str]]:
    """Run (or list, with ``dry_run``) the suite's cells; returns (cell, status) pairs."""
    from .config import load_recipe
    from .leaderboard import write_board
    from .run import evaluate, recipe_info, run

    suite, cells = load_suite(path)
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
        status = "done" if _done(cfg, info["name"], cell.baselines) else "todo"
        if status == "todo" and not dry_run:
            if cell.baselines:
                for kind in cell.baselines:
                    evaluate(cfg, info, kind, None, quiet=quiet)
                if cfg.leaderboard.render:
                    write_board(cfg.leaderboard.dir)
            else:
                run(cfg, info, Path("runs") / suite / cell.name, quiet)
            status = "ran"
        out.append((cell, status))
        if not quiet or dry_run:  # a dry run's listing is its output, even under --quiet
            print(f"[{len(out)}] {cell.name:<40} {status}", flush=True)
    if cfg is not None and any(s == "ran" for _, s in out):
        from .tracking import log_leaderboard

        # the aggregated board as a wandb.Table in the suite's group (no-op with W&B off)
        log_leaderboard(cfg.leaderboard.dir, cfg.logging, group=cfg.logging.group)
    return out
