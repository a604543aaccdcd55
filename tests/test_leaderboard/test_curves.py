"""Training loss curves on the board: kept in records, averaged per row, drawn in the HTML."""
from __future__ import annotations

from conftest import make_record

from sslbench.leaderboard.aggregation import aggregate


def _rec(seed: int, protocol: str, curve: list[list[float]] | None, **kw):
    pretrain = {"steps": 60, "wall_time_s": 5.0}
    if curve is not None:
        pretrain["loss_curve"] = curve
    return make_record(seed=seed, run_id=f"run-{seed}", protocol=protocol, pretrain=pretrain, **kw)


def test_row_curve_is_the_mean_over_runs_at_shared_steps():
    a = [[20, 4.0], [40, 3.0], [60, 2.0]]
    b = [[20, 6.0], [40, 5.0], [60, 4.0], [80, 1.0]]  # step 80 only in one run: dropped
    records = [_rec(0, "linear", a), _rec(1, "linear", b),
               # a second eval seed of run 0 counts run 0 once, not twice
               _rec(0, "linear", a, eval_seed=1)]
    row, = aggregate(records)
    curve = row["loss_curve"]
    assert curve["steps"] == [20, 40, 60] and curve["runs"] == 2
    assert curve["mean"] == [5.0, 4.0, 3.0]
    assert curve["min"] == [4.0, 3.0, 2.0] and curve["max"] == [6.0, 5.0, 4.0]


def test_rows_without_curves_have_none():
    row, = aggregate([_rec(0, "linear", None), _rec(1, "linear", None)])
    assert row["loss_curve"] is None
    base, = aggregate([make_record(method="random_init", run_id=None, pretrain=None)])
    assert base["loss_curve"] is None
