"""Check every result record file under a leaderboard directory (``sslbench leaderboard validate``).

Each problem is one line, ``<path>: <problem>``. The checks:

- the file reads as UTF-8 JSON, is an object and has no key twice in one object;
- ``schema_version`` is known; every field of :data:`record.REQUIRED_FIELDS` is present with a
  type from :data:`record.FIELD_TYPES` (optional fields, e.g. ``source``, too when present);
- ``kind`` is ``measured`` or ``reported``; reported records name their ``source``;
- every metric is a finite number in [0, 1]; ``created`` is an ISO timestamp;
- ``protocol_settings.label_fraction``, when given, is in (0, 1];
- the file sits where :func:`record.record_path` puts that record (renamed or hand-edited
  files are caught), and no two files hold the same record key (the path ``record_path``
  gives: dataset, recipe, method, backbone, protocol, seeds, label fraction);
- the loader accepts it (so a clean directory always renders).
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

from ..errors import UserError
from .record import (
    FIELD_TYPES, KINDS, KNOWN_SCHEMA_VERSIONS, OPTIONAL_FIELDS, REQUIRED_FIELDS, record_path,
)
from .store import load_record


def _type_names(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", dict: "a mapping",
             type(None): "null", list: "a list", bool: "a boolean"}
    ordered = [names[t] for t in types if not (t is int and float in types)]
    return " or ".join(ordered)


def _has_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true/false are not numbers here
        return bool in types
    return isinstance(value, types)


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


def check_record(rec: Any) -> list[str]:
    """Problems with one parsed record (no file-name or cross-file checks)."""
    if not isinstance(rec, dict):
        return [f"must be a JSON object, got {type(rec).__name__}"]
    if "schema_version" not in rec:
        return ["missing field 'schema_version'"]
    version = rec["schema_version"]
    if isinstance(version, bool) or version not in KNOWN_SCHEMA_VERSIONS:
        known = ", ".join(str(v) for v in KNOWN_SCHEMA_VERSIONS)
        return [f"unknown schema_version {json.dumps(version)} (known: {known})"]
    problems = [f"missing field '{f}'" for f in REQUIRED_FIELDS if f not in rec]
    for field in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS):
        if field in rec and not _has_type(rec[field], FIELD_TYPES[field]):
            problems.append(f"field '{field}' must be {_type_names(FIELD_TYPES[field])}, "
                            f"got {json.dumps(rec[field], default=str)[:60]}")
    if isinstance(rec.get("kind"), str) and rec["kind"] not in KINDS:
        problems.append(f"kind '{rec['kind']}' is not one of {', '.join(KINDS)}")
    if rec.get("kind") == "reported" and not (isinstance(rec.get("source"), str)
                                              and rec["source"].strip()):
        problems.append("reported record has no 'source' (the paper / table it is from)")
    metrics = rec.get("metrics")
    if isinstance(metrics, dict):
        if not metrics:
            problems.append("metrics must not be empty")
        for name, value in metrics.items():
            if not _has_type(value, (int, float)) or not math.isfinite(value):
                problems.append(f"metric '{name}' is not a finite number: {json.dumps(value)}")
            elif not 0.0 <= value <= 1.0:
                problems.append(f"metric '{name}' = {value} is outside [0, 1]")
    settings = rec.get("protocol_settings")
    if isinstance(settings, dict) and "label_fraction" in settings:
        fraction = settings["label_fraction"]
        if not _has_type(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
            problems.append(f"protocol_settings.label_fraction must be a number in (0, 1], "
                            f"got {json.dumps(fraction, default=str)}")
    recipe = rec.get("recipe")
    if isinstance(recipe, dict) and not _has_type(recipe.get("name"), (str, type(None))):
        problems.append("field 'recipe.name' must be a string or null")
    if isinstance(rec.get("created"), str):
        try:
            _dt.datetime.fromisoformat(rec["created"].replace("Z", "+00:00"))
        except ValueError:
            problems.append(f"field 'created' is not an ISO timestamp: {rec['created']!r}")
    return problems


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
        rel = file.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not file.is_file():
            continue
        n += 1
        problems += [f"{file}: {p}" for p in _check_file(file, root, seen)]
    return n, problems


def validate_dir(path: str | Path = "leaderboard") -> list[str]:
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
        return [f"cannot read: {e}"]
    try:
        rec = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKeys as e:
        return [f"key '{e}' appears twice in one JSON object"]
    except json.JSONDecodeError as e:
        return [f"not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"]
    problems = check_record(rec)
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
    if not problems:
        try:
            load_record(file)
        except UserError as e:
            problems.append(str(e).replace(f"{file}: ", "").replace(f" {file}", ""))
    return problems


def main(path: str | Path = "leaderboard") -> int:
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
