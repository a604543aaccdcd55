"""README's "Submit your method" path, end to end, as a newcomer runs it in a shell:

scaffold a plugin -> install it -> see it in ``sslbench methods`` -> run a suite with it ->
see it on the HTML leaderboard (and a second ``benchmark`` call skips the finished cell).

The plugin is installed with pip into a temporary ``--target`` directory put on PYTHONPATH, so
its entry point is discovered exactly as after ``pip install``, without touching the test venv.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NAME = "newbie"


def _sslbench(args: list[str], cwd: Path, env: dict, timeout: int = 600) -> str:
    r = subprocess.run([sys.executable, "-m", "sslbench", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (f"sslbench {' '.join(args)} failed:\n"
                               f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r.stdout


def test_scaffold_install_list_suite_board(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    # 1. scaffold
    _sslbench(["new-method", NAME, "--dir", f"sslbench-{NAME}"], tmp_path, env)
    pkg = tmp_path / f"sslbench-{NAME}"
    assert (pkg / "pyproject.toml").is_file()

    # 2. install (a real pip build of the package, entry point included)
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                        "--no-build-isolation", "--target", str(tmp_path / "site"), str(pkg)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    env["PYTHONPATH"] = str(tmp_path / "site")

    # 3. listed, as a plugin
    line = next((ln for ln in _sslbench(["methods"], tmp_path, env).splitlines()
                 if ln.startswith(f"{NAME} ")), None)
    assert line is not None and f"plugin sslbench_{NAME}:Newbie" in line, line

    # 4. a suite with the plugin's recipe (tiny budget), as README's step "run the suite"
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: newcomer\n"
        "seeds: [0]\n"
        "cells:\n"
        f"  - recipe: {pkg / 'recipes' / 'embedded.yaml'}\n"
        "    overrides: [train.max_steps=3, train.batch_size=32, train.checkpoint_every=3,\n"
        "                'eval.protocols=[knn]', 'eval.baselines=[random_init]']\n")
    common = ["logging.wandb=false", "leaderboard.dir=lb", "-q"]
    _sslbench(["benchmark", str(suite), *common], tmp_path, env)
    records = sorted(p.name for p in (tmp_path / "lb").rglob("*.json"))
    assert any(p.startswith(f"embedded__{NAME}__test_resnet__knn__seed0") for p in records), records
    assert any("random_init" in p for p in records), records
    assert (tmp_path / "runs" / "newcomer" / "embedded-s0" / "backbone.safetensors").is_file()

    # resumable: the finished cell is reported done and not run again
    listing = _sslbench(["benchmark", str(suite), "--dry-run", *common], tmp_path, env)
    assert "done" in listing and "todo" not in listing, listing

    # 5. on the HTML leaderboard, validated
    _sslbench(["leaderboard", "validate", "--dir", "lb"], tmp_path, env)
    _sslbench(["leaderboard", "--format", "html", "--dir", "lb", "--out", "board.html"],
              tmp_path, env)
    html = (tmp_path / "board.html").read_text()
    assert NAME in html and "random_init" in html
