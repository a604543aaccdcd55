"""Evaluation protocols, one module each, registered by name (:mod:`sslbench.eval.protocol`):
frozen-feature protocols (linear probe, k-NN, SGD probe), fine-tuning and LP-FT; what is
evaluated (:mod:`sslbench.eval.kinds`); plus the check every protocol's hyperparameter choice
goes through."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

# (grid key, chosen key, validation-accuracy key, what the value is) per protocol family
_GRIDS = (("c_grid", "chosen_C", "chosen_val_acc_by_C", "C"),
          ("lr_grid", "chosen_lr", "chosen_val_acc_by_lr", "lr"))


def beaten_neighbour(grid: Sequence[float], chosen: float,
                     score: Callable[[float], Optional[float]]) -> Optional[float]:
    """The inner neighbour of ``chosen`` when ``chosen`` is an end of ``grid`` (sorted, at least
    two values) and scores strictly higher than that neighbour, else None (a tie, or a missing
    score, does not bind)."""
    if len(grid) < 2 or chosen not in (grid[0], grid[-1]):
        return None
    inner = grid[1] if chosen == grid[0] else grid[-2]
    a, b = score(chosen), score(inner)
    return None if a is None or b is None or a <= b else inner


def grid_edge(settings: dict[str, Any]) -> Optional[str]:
    """A note when the hyperparameter chosen on validation sits at an end of its grid and beats
    its inner neighbour there (so the best value may lie outside the grid), else None.

    >>> grid_edge({"lr_grid": [1e-3, 3e-3], "chosen_lr": 3e-3,
    ...            "chosen_val_acc_by_lr": {"0.001": 0.8, "0.003": 0.9}})
    'lr 0.003 is the largest of lr_grid [0.001, 0.003]: extend the grid upwards'
    """
    for grid_key, chosen_key, val_key, what in _GRIDS:
        if grid_key not in settings or chosen_key not in settings:
            continue
        # the values actually searched where the protocol grew its grid (linear: extend_grid)
        searched = settings.get("chosen_c_searched") if grid_key == "c_grid" else None
        grid = sorted(float(v) for v in (searched or settings[grid_key]))
        chosen = float(settings[chosen_key])
        val = settings.get(val_key) or {}
        if beaten_neighbour(grid, chosen, lambda v: val.get(f"{v:g}")) is None:
            return None
        lowest = chosen == grid[0]
        name = "the searched values" if searched else grid_key
        fix = "; or raise eval.linear.extend_grid" if searched else ""
        return (f"{what} {chosen:g} is the {'smallest' if lowest else 'largest'} of {name} "
                f"[{', '.join(f'{v:g}' for v in grid)}]: extend the grid "
                f"{'downwards' if lowest else 'upwards'}{fix}")
    return None
