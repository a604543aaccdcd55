"""Each default, name list and directory name has one home (issue "One home for each thing").

Greps the package for the duplicates that once existed; a new copy fails here."""
from __future__ import annotations

import re

import pytest

from conftest import REPO

PKG = REPO / "sslbench"


def _sources() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text() for p in sorted(PKG.rglob("*.py"))}


def _where(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [f for f, text in _sources().items() if rx.search(text)]


@pytest.mark.parametrize("pattern, home", [
    # "a missing label_fraction means 1.0"
    (r"""get\(\s*["']label_fraction["']\s*,\s*1""", ["sslbench/identity.py"]),
    # the default directories
    (r"""["']runs/leaderboard["']|=\s*["']leaderboard["']\s*[,)]?\s*$|"""
     r"""Path\(\s*["']runs["']\s*\)|default=\[?["'](runs|leaderboard)["']""", []),
    (r"""^(RUNS_DIR|BOARD_DIR|LOCAL_BOARD_DIR)\s*=""", ["sslbench/config.py"]),
    # the baseline names, the data-source names
    (r"""^BASELINES\s*=""", ["sslbench/identity.py"]),
    (r"""^SOURCES\s*=""", ["sslbench/datasets/sources.py"]),
])
def test_one_home(pattern, home):
    rx = re.compile(pattern, re.M)
    found = [f for f, text in _sources().items() if rx.search(text)]
    assert found == home


@pytest.mark.parametrize("pattern", [
    r"max_iter: int = \d",            # L-BFGS budget: eval.linear.max_iter only
    r"batch_size: int = 512",         # eval batch: eval.batch_size only
    r"BASELINE_METHODS|VALID_KINDS|FROZEN_PROTOCOLS|resolve_object|^FAMILIES\s*=",  # dead/dupes
    r"time_budget_s|val_split: Optional",  # config keys nothing read
])
def test_gone(pattern):
    assert _where(pattern if not pattern.startswith("^") else f"(?m){pattern}") == []


def test_lr_grid_default_defined_once():
    text = (PKG / "config.py").read_text()
    assert text.count("[1e-3, 3e-3]") == 1


def test_no_function_over_80_lines():
    """Long functions hide more than one job; the package keeps each under 80 lines."""
    import ast

    long = []
    for path, text in _sources().items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{path}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


def test_config_imports_no_name_owner():
    """config.py checks names against lists their owners publish (registry.publish); it imports
    none of those owners, not even late."""
    text = (PKG / "config.py").read_text()
    assert re.findall(r"from \.(datasets|optim|run|ssl|eval)\b", text) == []
