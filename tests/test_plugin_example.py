"""The worked plugin example (examples/plugin_method, Barlow Twins) through its real entry point.

``scripts/test.sh`` installs it (``pip install --no-deps -e examples/plugin_method``); without it
these tests skip, saying how to install it.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO
from sslbench.cli import main

EXAMPLE = REPO / "examples" / "plugin_method"
ORIGIN = "plugin sslbench_barlowtwins:BarlowTwins"

try:
    importlib.metadata.distribution("sslbench-barlowtwins")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("the example plugin 'sslbench-barlowtwins' is not installed; install it with "
                ".venv/bin/pip install -q --no-deps -e examples/plugin_method (scripts/test.sh "
                "does)", allow_module_level=True)


def _run(args: list[str], timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def test_methods_lists_the_plugin_through_its_entry_point():
    r = _run(["-m", "sslbench", "methods"])
    assert r.returncode == 0, r.stderr
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("barlow_twins ")), None)
    assert line is not None, r.stdout
    assert ORIGIN in line and "resnet, vit" in line and "Zbontar" in line
    # sslbench itself does not register it: only the entry point (loaded lazily) does
    r = _run(["-c", "import sslbench.ssl as s; print(sorted(s.METHODS._items))"])
    assert r.returncode == 0, r.stderr
    assert "barlow_twins" not in r.stdout and "simclr" in r.stdout
    assert not list((REPO / "sslbench").rglob("*barlow*"))


@pytest.mark.slow
def test_run_plugin_recipe_records_and_html_board(tmp_path, capsys):
    lb = tmp_path / "lb"
    code = main(["run", str(EXAMPLE / "recipes" / "embedded.yaml"), "--out", str(tmp_path / "run"),
                 "train.max_steps=3", "train.batch_size=32", "train.checkpoint_every=3",
                 "eval.protocols=[knn]", "eval.baselines=[]", "logging.wandb=false",
                 f"leaderboard.dir={lb}", "-q"])
    assert code == 0
    records = [json.loads(p.read_text()) for p in lb.glob("results/**/*.json")]
    assert records, "no record written"
    assert {(r["method"], r["protocol"]) for r in records} == {("barlow_twins", "knn")}
    rec = records[0]
    assert rec["pretrain"]["steps"] == 3 and 0 <= rec["metrics"]["acc"] <= 1
    assert rec["config"]["method"]["name"] == "barlow_twins"
    capsys.readouterr()
    assert main(["leaderboard", "--format", "html", "--dir", str(lb)]) == 0
    html = capsys.readouterr().out
    assert "<html" in html.lower() and "barlow_twins" in html


@pytest.mark.slow
def test_example_own_tests_pass():
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    r = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], timeout=1800,
             cwd=EXAMPLE, env=env)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "failed" not in r.stdout
