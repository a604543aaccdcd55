"""The speed benchmark runs (a few steps on CPU): the GPU check script depends on it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO


def _speed(tmp_path, *args: str) -> dict:
    out = tmp_path / "speed.json"
    r = subprocess.run([sys.executable, "benchmarks/pretrain_speed.py", "--cells", "quickstart",
                        "--steps", "2", "--warmup", "2", "--rounds", "1", "--workers", "0",
                        "--out", str(out), *args, "train.batch_size=16"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| quickstart | sslbench |" in r.stdout
    return json.loads(out.read_text())


@pytest.mark.slow
def test_pretrain_speed_reports_throughput_flops_and_views_share(tmp_path):
    data = _speed(tmp_path, "--no-reference")
    [ours] = data["figures"]
    assert ours["loop"] == "sslbench" and ours["median"] > 0
    assert ours["flops_per_image"] > 1e6 and 0 < ours["views_share"] < 1
    assert data["peak_flops"] > 0 and "matmul" in data["peak_source"]


@pytest.mark.slow
def test_pretrain_speed_reference_loop(tmp_path):
    pytest.importorskip("lightly")  # the benchmark-only extra
    figs = {f["loop"]: f for f in _speed(tmp_path)["figures"]}
    assert figs["reference"]["median"] > 0 and figs["sslbench"]["median"] > 0
