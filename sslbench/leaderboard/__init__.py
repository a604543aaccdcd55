"""Leaderboard: result records, loading, aggregation over seeds and rendering."""
from __future__ import annotations

from .aggregation import aggregate, load_rows
from .markdown import render_markdown
from .record import record_path, validate_record, write_record
from .render import render, render_csv, render_json, write_board
from .store import load_records
from .validate import validate_dir

__all__ = [
    "aggregate", "load_records", "load_rows", "record_path", "render", "render_csv",
    "render_json", "render_markdown", "validate_dir", "validate_record", "write_board",
    "write_record",
]
