"""``sslbench benchmark SUITE``: run a matrix of recipes x seeds, skipping finished cells.

A suite file lists recipes (each with optional overrides) and seeds::

    name: embedded
    seeds: [0, 1, 2]
    cells:
      - recipe: recipes/quickstart.yaml
      - recipe: recipes/embedded/moco_v3_vit.yaml
        overrides: [train.max_steps=200]

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

    @property
    def name(self) -> str:
        return f"{Path(self.recipe).stem}-s{self.seed}"


def load_suite(path: str | Path) -> tuple[str, list[Cell]]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"suite file not found: {p}")
    raw = yaml.safe_load(p.read_text()) or {}
    unknown = set(raw) - {"name", "seeds", "cells"}
    if unknown:
        raise UserError(f"{p}: unknown key(s) {sorted(unknown)} (valid: name, seeds, cells)")
    seeds = raw.get("seeds", [0])
    cells = []
    for i, c in enumerate(raw.get("cells") or []):
        if isinstance(c, str):
            c = {"recipe": c}
        if not isinstance(c, dict) or "recipe" not in c or set(c) - {"recipe", "overrides"}:
            raise UserError(f"{p}: cell {i} must be a recipe path or {{recipe, overrides}}")
        for s in seeds:
            cells.append(Cell(c["recipe"], list(c.get("overrides") or []), int(s)))
    if not cells:
        raise UserError(f"{p}: no cells; list recipes under 'cells:'")
    return str(raw.get("name") or p.stem), cells


def _done(cfg, recipe_name: str) -> bool:
    """All protocols of the SSL run of this cell have a record for its seed."""
    from .leaderboard.record import record_path

    results = Path(cfg.leaderboard.dir) / "results"
    for protocol in cfg.eval.protocols:
        for ev in cfg.eval.seeds:
            rec = {"recipe": {"name": recipe_name}, "method": cfg.method.name,
                   "backbone": cfg.backbone.name, "protocol": protocol,
                   "seed": cfg.train.seed, "eval_seed": ev, "dataset": cfg.data.name}
            if not record_path(results, rec).is_file():
                return False
    return True


def run_suite(path: str | Path, only: Optional[str] = None, skip: Optional[str] = None,
              dry_run: bool = False, quiet: bool = False, extra: Optional[list[str]] = None
              ) -> list[tuple[Cell, str]]:
    """Run (or list, with ``dry_run``) the suite's cells; returns (cell, status) pairs."""
    from .config import load_recipe
    from .run import recipe_info, run

    suite, cells = load_suite(path)
    out = []
    for cell in cells:
        if only and not fnmatch.fnmatch(cell.name, only):
            continue
        if skip and fnmatch.fnmatch(cell.name, skip):
            continue
        cfg = load_recipe(cell.recipe, [*cell.overrides, f"train.seed={cell.seed}",
                                        *(extra or [])])
        if cfg.logging.group is None:
            cfg.logging.group = suite
        info = recipe_info(cell.recipe)
        status = "done" if _done(cfg, info["name"]) else "todo"
        if status == "todo" and not dry_run:
            run(cfg, info, Path("runs") / suite / cell.name, quiet)
            status = "ran"
        out.append((cell, status))
        if not quiet:
            print(f"[{len(out)}] {cell.name:<40} {status}", flush=True)
    return out
