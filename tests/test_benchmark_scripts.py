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


@pytest.mark.slow
def test_pretrain_speed_dino_reference_loop(tmp_path):
    """lightly's DINO loop (multi-crop transform, head, loss, EMA teacher) on a tiny ViT."""
    pytest.importorskip("lightly")
    out = tmp_path / "dino.json"
    r = subprocess.run([sys.executable, "benchmarks/pretrain_speed.py", "--cells",
                        "dino_vits16_224", "--steps", "2", "--warmup", "1", "--rounds", "1",
                        "--workers", "0", "--out", str(out), "backbone.name=test_vit",
                        "data.image_size=32", "train.batch_size=8", "method.out_dim=256",
                        "method.local_crop_size=16", "method.head_hidden_dim=64",
                        "method.head_bottleneck_dim=32", "train.precision=fp32"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    figs = {f["loop"]: f for f in json.loads(out.read_text())["figures"]}
    assert figs["reference"]["median"] > 0 and figs["sslbench"]["median"] > 0
    assert "| dino_vits16_224 | sslbench |" in r.stdout and "x |" in r.stdout  # the ratio
