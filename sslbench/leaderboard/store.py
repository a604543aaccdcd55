"""Read result records back from a results directory (the leaderboard's input)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from .record import schema_problems


def _read(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(record, "") for a valid record file, else (None, the problem in one line)."""
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        return None, f"cannot read it: {' '.join(str(e).split())}"
    except json.JSONDecodeError as e:
        return None, f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
    problems = schema_problems(rec)
    if problems:
        return None, "; ".join(problems)
    return rec, ""


def load_record(path: str | Path) -> dict[str, Any]:
    """Read and validate one record file (:func:`record.schema_problems`).

    Raises:
        UserError: the file cannot be read, is not JSON, or is not a valid record.
    """
    path = Path(path)
    rec, problem = _read(path)
    if rec is None:
        raise UserError(f"invalid result record {path}: {problem}; fix or remove that file "
                        f"('sslbench leaderboard validate' lists every problem)")
    return rec


def load_records(results_dir: str | Path, skip_bad: bool = False) -> list[dict[str, Any]]:
    """Load every ``*.json`` record under ``results_dir``, recursively, in sorted path order.

    Hidden files and directories (names starting with ``.``) are skipped; ``sslbench
    leaderboard validate`` reports them. A missing directory gives an empty list.

    Args:
        results_dir: the results directory.
        skip_bad: skip a file that is not a valid record with one line on stderr,
            ``sslbench: warning: skipped <path>: <problem>`` (what the renderers use), instead
            of raising.

    Raises:
        UserError: without ``skip_bad``, a file is not valid JSON or not a valid record (one
            line, naming the file).
    """
    root = Path(results_dir)
    if not root.is_dir():
        return []
    records = []
    for path in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if not path.is_file():
            continue
        if not skip_bad:
            records.append(load_record(path))
            continue
        rec, problem = _read(path)
        if rec is None:
            print(f"sslbench: warning: skipped {path}: {problem}", file=sys.stderr)
        else:
            records.append(rec)
    return records
