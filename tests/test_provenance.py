"""Provenance names the code a process imported: the git state is read once per process."""
from __future__ import annotations

import subprocess
import sys

from sslbench.utils import git_commit


def _git(repo, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                   check=True, capture_output=True)


def test_git_state_is_frozen_at_first_read(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "code.py").write_text("x = 1\n")
    _git(repo, "add", "code.py")
    _git(repo, "commit", "-qm", "first")
    first = git_commit(repo)
    assert first["commit"] and first["dirty"] is False
    # the checkout moves on while a long suite is running: its records keep the start state
    (repo / "code.py").write_text("x = 2\n")
    _git(repo, "commit", "-qam", "second")
    (repo / "code.py").write_text("x = 3\n")
    assert git_commit(repo) == first
    # a fresh process sees the new state
    out = subprocess.run([sys.executable, "-c", f"from sslbench.utils import git_commit; "
                          f"print(git_commit({str(repo)!r}))"], capture_output=True, text=True,
                         check=True).stdout
    assert first["commit"] not in out and "'dirty': True" in out


def test_provenance_names_the_library_versions_that_shape_a_cpu_run():
    import kornia
    import numpy
    import timm
    import torch

    from sslbench.utils import provenance

    p = provenance(torch.device("cpu"))
    assert (p["torch"], p["timm"], p["kornia"], p["numpy"]) == (
        torch.__version__, timm.__version__, kornia.__version__, numpy.__version__)
    assert p["device"].startswith("cpu")
