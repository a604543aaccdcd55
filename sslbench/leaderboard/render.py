"""The board in each output format: Markdown, JSON, CSV (and HTML for the committed page).

Rows come from :mod:`.aggregation`; :mod:`.markdown` and :mod:`.html` are the two document
renderers, JSON and CSV are written here.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..utils import atomic_write_text
from .aggregation import canonical, finite, load_rows, paired
from .html import render_html
from .markdown import render_markdown

FORMATS = ("md", "json", "csv")
CSV_COLUMNS = ("dataset", "protocol", "method", "backbone", "recipe", "metric", "n", "mean",
               "std", "ci95", "seeds", "protocol_settings", "se", "vs_random_mean",
               "vs_random_ci95", "vs_random_verdict", "mdd", "pretrain_wall_time_s",
               "pretrain_total_flops", "pretrain_flops_per_image")


# --------------------------------------------------------------------------- json / csv


def _json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) as None: standard JSON has neither."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def render_json(rows: list[dict[str, Any]]) -> str:
    """Render aggregated rows as a JSON list, the paired statistics of
    :func:`.aggregation.add_paired` included; a non-finite number is written as null."""
    return json.dumps(_json_safe(rows), indent=2, sort_keys=True, default=str,
                      allow_nan=False) + "\n"


def _csv_number(value: Any) -> str:
    """A finite number exactly (``repr``); empty when missing or not finite."""
    value = finite(value)
    return "" if value is None else repr(value)


def _csv_line(row: dict[str, Any], metric: str, summary: dict[str, Any]) -> list[Any]:
    """One CSV line of a row's ``metric``, in :data:`CSV_COLUMNS` order."""
    vs_random = paired(row, "vs_random", metric) or {}
    power = paired(row, "mdd", metric) or {}
    return [row["dataset"], row["protocol"], row["method"], row["backbone"], row["recipe"],
            metric, summary["n"], repr(summary["mean"]), repr(summary["std"]),
            _csv_number(summary["ci95"]), ";".join(f"{s}/{e}" for s, e in row["seeds"]),
            canonical(row["protocol_settings"]),
            _csv_number((row.get("mean_se") or {}).get(metric)),
            _csv_number(vs_random.get("mean")), _csv_number(vs_random.get("ci95")),
            vs_random.get("verdict", ""), _csv_number(power.get("mdd")),
            _csv_number(row.get("pretrain_wall_time_s")),
            _csv_number(row.get("pretrain_total_flops")),
            _csv_number(row.get("pretrain_flops_per_image"))]


def render_csv(rows: list[dict[str, Any]]) -> str:
    """Render one CSV line per (group, metric) in :data:`CSV_COLUMNS` order: the summary over
    seeds (``seeds`` is ``seed/eval_seed`` joined by ``;``), the metric's mean test-set
    standard error (``se``), its paired difference to random init (mean, 95% half-width,
    verdict) and MDD (:func:`.aggregation.add_paired`), and the row's mean pretraining wall
    time and FLOPs; an unknown or non-finite number is empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        for name, m in r["metrics"].items():
            writer.writerow(_csv_line(r, name, m))
    return buf.getvalue()


_RENDERERS = {"md": render_markdown, "json": render_json, "csv": render_csv}


def render(results_dir: str | Path, fmt: str) -> str:
    """Load, aggregate and render the records under ``results_dir`` as ``md``, ``json`` or ``csv``.

    A file that is not a valid record is skipped with a one-line warning on stderr.

    Raises:
        UserError: unknown format.
    """
    if fmt not in _RENDERERS:
        raise UserError(f"unknown leaderboard format '{fmt}' (valid: {', '.join(FORMATS)})")
    return _RENDERERS[fmt](load_rows(results_dir))


def write_board(leaderboard_dir: str | Path, html: bool = False) -> Path:
    """Render ``<leaderboard_dir>/results`` into ``<leaderboard_dir>/LEADERBOARD.md`` atomically.

    With ``html=True`` also write the static page ``<leaderboard_dir>/index.html``. Returns the
    markdown file's path. A file that is not a valid record is skipped with one warning line.
    """
    leaderboard_dir = Path(leaderboard_dir)
    rows = load_rows(leaderboard_dir / "results")
    path = atomic_write_text(leaderboard_dir / "LEADERBOARD.md", render_markdown(rows))
    if html:
        atomic_write_text(leaderboard_dir / "index.html", render_html(rows))
    return path
