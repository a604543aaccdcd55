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

Warnings, one line each (``<path>: warning: ...``), do not make a directory invalid: a record
whose protocol settings say its solver did not converge (``chosen_converged`` false, written by
the linear probe, sslbench/eval/linear.py) names the C values (and the refit) that stopped
short. A record with no convergence information (written before it was recorded) gets none.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

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


def _validate(path: Path) -> tuple[int, list[str], list[str]]:
    """(record files, problems, warnings) of a leaderboard or results directory."""
    if not path.is_dir():
        return 0, [f"{path}: no such directory"], []
    root = results_root(path)
    problems: list[str] = []
    warnings: list[str] = []
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
        problems += [f"{file}: {p}" for p in _check_file(file, root, seen, warnings)]
    return n, problems, warnings


def validate_dir(path: str | Path = BOARD_DIR) -> list[str]:
    """Check every record file under a leaderboard directory (or a results directory).

    Args:
        path: a leaderboard directory holding ``results/``, or a results directory.

    Returns:
        One ``"<file>: <problem>"`` line per problem, in file order; empty when all is clean.
    """
    return _validate(Path(path))[1]


def validate_warnings(path: str | Path = BOARD_DIR) -> list[str]:
    """One ``"<file>: warning: <what>"`` line per valid record that carries a warning (a solver
    that did not converge), in file order; empty when there is none."""
    return _validate(Path(path))[2]


def _unconverged(settings: dict[str, Any]) -> list[str]:
    """The fits of a record that did not converge: ``C=<c>`` per C of the path whose final
    gradient exceeds the tolerance, and the refit."""
    tol, grads = settings.get("tol"), settings.get("chosen_grad_by_C")
    fits = []
    if isinstance(grads, dict) and isinstance(tol, (int, float)):
        fits = [f"C={c}" for c, g in grads.items() if not (isinstance(g, (int, float))
                                                          and g <= tol)]
    refit = settings.get("chosen_refit")
    if isinstance(refit, dict) and refit.get("converged") is False:
        fits.append(f"the refit on train + val (C={settings.get('chosen_C')})")
    return fits


def convergence_warning(rec: dict[str, Any]) -> Optional[str]:
    """The warning for a record whose solver did not converge (``chosen_converged`` false);
    None when it converged or the record carries no convergence information."""
    settings = rec.get("protocol_settings")
    if not isinstance(settings, dict) or settings.get("chosen_converged") is not False:
        return None
    fits = _unconverged(settings)
    where = f" at {', '.join(fits)}" if fits else ""
    return (f"warning: {rec.get('protocol')} solver did not converge{where} (max |gradient| "
            f"above tol {settings.get('tol')} within max_iter {settings.get('max_iter')}); "
            f"raise eval.linear.max_iter and re-evaluate")


def _check_file(file: Path, root: Path, seen: dict[str, Path], warnings: list[str]
                ) -> list[str]:
    """The problems of one record file; its warning, if any, is appended to ``warnings``."""
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
    warning = convergence_warning(rec)
    if warning:
        warnings.append(f"{file}: {warning}")
    return problems


def main(path: str | Path = BOARD_DIR) -> int:
    """Print one line per problem and per warning and a summary; return 0 when there is no
    problem (warnings or not), 2 otherwise."""
    n, problems, warnings = _validate(Path(path))
    for line in problems + warnings:
        print(line)
    where = results_root(path)
    noted = f", {len(warnings)} warning(s)" if warnings else ""
    if problems:
        print(f"{len(problems)} problem(s){noted} in {n} record file(s) under {where}")
        return 2
    print(f"{n} record file(s) under {where}: all valid{noted}")
    return 0
