"""Leaderboard: result records, loading, aggregation over seeds and rendering."""
from __future__ import annotations

from .record import record_path, validate_record, write_record
from .render import aggregate, render, render_csv, render_json, render_markdown, write_board
from .store import load_records
from .validate import validate_dir

__all__ = [
    "aggregate", "load_records", "record_path", "render", "render_csv", "render_json",
    "render_markdown", "validate_dir", "validate_record", "write_board", "write_record",
]
