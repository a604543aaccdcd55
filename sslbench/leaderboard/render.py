"""The board in each output format: Markdown, JSON, CSV (and HTML for the committed page).

Rows come from :mod:`.aggregation`; :mod:`.markdown` and :mod:`.html` are the two document
renderers, JSON and CSV are written here.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..utils import atomic_write_text
from .aggregation import canonical, load_rows
from .html import render_html
from .markdown import render_markdown

FORMATS = ("md", "json", "csv")
CSV_COLUMNS = ("dataset", "protocol", "method", "backbone", "recipe", "metric", "n", "mean",
               "std", "ci95", "seeds", "protocol_settings")


# --------------------------------------------------------------------------- json / csv


def render_json(rows: list[dict[str, Any]]) -> str:
    """Render aggregated rows as a JSON list."""
    return json.dumps(rows, indent=2, sort_keys=True, default=str) + "\n"


def render_csv(rows: list[dict[str, Any]]) -> str:
    """Render one CSV line per (group, metric); ``seeds`` is ``seed/eval_seed`` joined by ``;``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        seeds = ";".join(f"{s}/{e}" for s, e in r["seeds"])
        for name, m in r["metrics"].items():
            writer.writerow([r["dataset"], r["protocol"], r["method"], r["backbone"],
                             r["recipe"], name, m["n"], repr(m["mean"]), repr(m["std"]),
                             "" if m["ci95"] is None else repr(m["ci95"]), seeds,
                             canonical(r["protocol_settings"])])
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
