"""docs/python_api.md runs as written: every python block, in order, in a scratch directory."""
from __future__ import annotations

import os
import re
import shutil

import pytest

from conftest import REPO


@pytest.mark.slow
def test_python_api_page_runs(tmp_path, monkeypatch, capsys):
    page = (REPO / "docs" / "python_api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) == 2
    shutil.copytree(REPO / "recipes", tmp_path / "recipes")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    for block in blocks:
        exec(compile(block, "docs/python_api.md", "exec"), {"__name__": "docs"})
    out = capsys.readouterr().out
    assert re.search(r"^20 steps at \d+ img/s$", out, re.M)
    assert re.search(r"^knn 0\.\d+$", out, re.M)
    assert re.search(r"^linear 0\.\d+ C = ", out, re.M) and re.search(r"^k-NN 0\.\d+", out, re.M)
    assert (tmp_path / "runs" / "api-demo" / "board" / "results").is_dir()
