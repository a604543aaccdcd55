"""Check every result record file under a leaderboard directory (``sslbench leaderboard validate``).

Each problem is one line, ``<path>: <problem>``. The checks:

- the file reads as UTF-8 JSON, is an object and has no key twice in one object;
- the record passes :func:`record.schema_problems`: the published ``record.schema.json`` (schema
  version 1 or 2, every field's type and domain, safe names, reported records name their
  ``source``) plus finite metrics, an ISO ``created`` and, for version 2, an identity that
  agrees with the record and hashes to ``identity_hash``. The loader makes the same check, so a
  clean directory always renders;
- the file sits where :func:`record.record_path` puts that record (renamed or hand-edited
  files are caught), and no two files hold the same record key (the path ``record_path``
  gives);
- no ``*.json`` file is hidden (a name starting with ``.``): the board would skip it silently.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import BOARD_DIR
from .record import record_path, schema_problems


class _DuplicateKeys(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise _DuplicateKeys(k)
        seen[k] = v
    return seen


def record_key(rec: dict[str, Any]) -> str:
    """The identity of a record: the file name :func:`record_path` gives it (dataset, recipe,
    method, backbone, protocol, seeds, label fraction), relative to the results directory."""
    return record_path(Path("."), rec).as_posix()


def results_root(path: str | Path) -> Path:
    """``<path>/results`` for a leaderboard directory, else ``path`` itself."""
    path = Path(path)
    return path / "results" if (path / "results").is_dir() else path


def _validate(path: Path) -> tuple[int, list[str]]:
    if not path.is_dir():
        return 0, [f"{path}: no such directory"]
    root = results_root(path)
    problems: list[str] = []
    seen: dict[str, Path] = {}
    n = 0
    for file in sorted(root.rglob("*.json")):
        if not file.is_file():
            continue
        n += 1
        if any(part.startswith(".") for part in file.relative_to(root).parts):
            problems.append(f"{file}: hidden file: the board skips it; rename it to where its "
                            f"record belongs, or delete it")
            continue
        problems += [f"{file}: {p}" for p in _check_file(file, root, seen)]
    return n, problems


def validate_dir(path: str | Path = BOARD_DIR) -> list[str]:
    """Check every record file under a leaderboard directory (or a results directory).

    Args:
        path: a leaderboard directory holding ``results/``, or a results directory.

    Returns:
        One ``"<file>: <problem>"`` line per problem, in file order; empty when all is clean.
    """
    return _validate(Path(path))[1]


def _check_file(file: Path, root: Path, seen: dict[str, Path]) -> list[str]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return [f"cannot read: {' '.join(str(e).split())}"]
    try:
        rec = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKeys as e:
        return [f"key '{e}' appears twice in one JSON object"]
    except json.JSONDecodeError as e:
        return [f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"]
    problems = schema_problems(rec)
    if problems:
        return problems
    try:
        key = record_key(rec)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        return [f"cannot work out the record's file name: {e}"]
    if file != root / key:
        problems.append(f"file name does not match the record; it belongs at {key}")
    if key in seen:
        problems.append(f"duplicate record: same key ({key}) as {seen[key]}")
    else:
        seen[key] = file
    return problems


def main(path: str | Path = BOARD_DIR) -> int:
    """Print one line per problem and a summary; return 0 when clean, 2 otherwise."""
    n, problems = _validate(Path(path))
    for line in problems:
        print(line)
    where = results_root(path)
    if problems:
        print(f"{len(problems)} problem(s) in {n} record file(s) under {where}")
        return 2
    print(f"{n} record file(s) under {where}: all valid")
    return 0
