"""Read result records back from a results directory (the leaderboard's input)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from .record import validate_record

_STRING_FIELDS = ("method", "backbone", "backbone_family", "dataset", "protocol", "created")
_MAPPING_FIELDS = ("protocol_settings", "recipe", "provenance")


def _structure_problems(rec: dict[str, Any]) -> list[str]:
    """Type checks the renderer relies on that ``validate_record`` does not make."""
    problems = [f"field '{f}' must be a string" for f in _STRING_FIELDS
                if not isinstance(rec[f], str)]
    problems += [f"field '{f}' must be a mapping" for f in _MAPPING_FIELDS
                 if not isinstance(rec[f], dict)]
    if rec["pretrain"] is not None and not isinstance(rec["pretrain"], dict):
        problems.append("field 'pretrain' must be a mapping or null")
    return problems


def load_record(path: str | Path) -> dict[str, Any]:
    """Read and validate one record file.

    Raises:
        UserError: the file cannot be read, is not JSON, or is not a valid record.
    """
    path = Path(path)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read result record {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"result record {path} is not valid JSON: {e.msg} "
                        f"(line {e.lineno}, column {e.colno})") from None
    if not isinstance(rec, dict):
        raise UserError(f"result record {path} must be a JSON object, "
                        f"got {type(rec).__name__}")
    problems = validate_record(rec)
    if not problems:
        problems = _structure_problems(rec)
    if problems:
        raise UserError(f"invalid result record {path}: {'; '.join(problems)}")
    return rec


def load_records(results_dir: str | Path) -> list[dict[str, Any]]:
    """Load every ``*.json`` record under ``results_dir``, recursively, in sorted path order.

    Hidden files and directories (names starting with ``.``, e.g. atomic-write temp files)
    are skipped. A missing directory gives an empty list.

    Raises:
        UserError: a file is not valid JSON or not a valid record (one line, naming the file).
    """
    root = Path(results_dir)
    if not root.is_dir():
        return []
    records = []
    for path in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.is_file():
            records.append(load_record(path))
    return records
