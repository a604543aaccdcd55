"""The aggregated board as a W&B table: one row per board row, logged in a run of its own."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..config import RUNS_DIR
from ..distributed import is_main
from ..tracking import Tracker
from .aggregation import label_fraction, load_rows, paired

LEADERBOARD_COLUMNS = ["dataset", "protocol", "label_fraction", "method", "backbone", "recipe",
                       "kind", "n_seeds", "acc", "acc_ci95", "ood_acc", "ood_acc_ci95",
                       "acc_vs_random", "acc_vs_random_ci95", "acc_vs_random_verdict",
                       "acc_mdd", "acc_se", "pretrain_wall_time_s", "pretrain_total_flops",
                       "pretrain_flops_per_image", "commits"]


def leaderboard_rows(leaderboard_dir: str | Path) -> list[list[Any]]:
    """The aggregated board (mean over seeds, 95% t-CI half-width; top-1 paired with random
    init: difference, its 95% half-width, verdict and MDD; top-1's mean test-set standard
    error; mean pretraining wall time and FLOPs) as table rows, accuracies in percent, in
    :data:`LEADERBOARD_COLUMNS` order."""

    def pct(m: Optional[dict], key: str) -> Optional[float]:
        v = (m or {}).get(key)
        return None if v is None else round(100.0 * v, 3)

    rows = []
    for r in load_rows(Path(leaderboard_dir) / "results"):
        acc, ood = r["metrics"].get("acc"), r["metrics"].get("ood_acc")
        vs_random = paired(r, "vs_random")
        rows.append([r["dataset"], r["protocol"],
                     label_fraction(r),
                     r["method"], r["backbone"], r["recipe"], r["kind"], r["n"],
                     pct(acc, "mean"), pct(acc, "ci95"), pct(ood, "mean"), pct(ood, "ci95"),
                     pct(vs_random, "mean"), pct(vs_random, "ci95"),
                     (vs_random or {}).get("verdict"), pct(paired(r, "mdd"), "mdd"),
                     pct(r.get("mean_se"), "acc"), r.get("pretrain_wall_time_s"),
                     r.get("pretrain_total_flops"), r.get("pretrain_flops_per_image"),
                     ",".join(c[:9] for c in r["git_commits"])])
    return rows


def log_leaderboard(leaderboard_dir: str | Path, logging_cfg: Any, group: Optional[str] = None,
                    run_dir: Optional[Path] = None) -> bool:
    """Log the aggregated leaderboard as a ``wandb.Table`` in a run with job_type
    ``leaderboard`` (group ``group``, else the config's). False when W&B is off."""
    if logging_cfg is None or not logging_cfg.wandb or not is_main():
        return False
    import copy

    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(logging_cfg, {}) if OmegaConf.is_config(logging_cfg) \
        else copy.copy(logging_cfg)
    if group is not None:
        cfg.group = group
    rows = leaderboard_rows(leaderboard_dir)
    tracker = Tracker(None, cfg, f"leaderboard-{cfg.group or 'all'}", "leaderboard",
                      {"leaderboard_dir": str(leaderboard_dir), "rows": len(rows)},
                      Path(run_dir or cfg.dir or RUNS_DIR),  # where `wandb-sync` looks
                      tags=["leaderboard"])
    try:
        tracker.log_table("leaderboard", LEADERBOARD_COLUMNS, rows)
    finally:
        tracker.finish()
    return True
