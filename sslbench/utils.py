"""Small shared helpers: atomic writes, provenance, seeding."""
from __future__ import annotations

import functools
import json
import os
import platform
import random
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


def _read_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), else by the
    set-and-restore idiom (once, at import)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
# the names atomic_write gives its temp files: "." + target name + "." + 8 random chars + ".tmp"
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write through ``write(tmp_path)`` into a temp file in the same directory, then rename.

    A killed process leaves either the old file or the new one, never half of one (plus, at
    worst, a temp file that :func:`remove_stale_temp_files` removes). The file gets the mode
    ``0o666 & ~umask``, like any file the process creates with ``open``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_stale_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temp files :func:`atomic_write` left in ``directory`` when a process was
    killed mid-write (``.<name>.<8 random chars>.tmp``; nothing else, not recursive). Call it
    only where no other process is writing into ``directory``. Returns the removed paths."""
    d = Path(directory)
    if not d.is_dir():
        return []
    removed = []
    for p in sorted(d.iterdir()):
        if _TEMP_NAME.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def git_commit(cwd: str | Path | None = None) -> dict[str, Any]:
    """The commit of the sslbench source tree (and whether it had uncommitted changes), read
    once per process and directory: a record names the code this process imported, not the
    tree as it is when the record is written (the checkout may move during a long suite)."""
    here = Path(cwd) if cwd else Path(__file__).resolve().parent
    return dict(_git_state(str(here)))  # a copy: callers may edit theirs


@functools.lru_cache(maxsize=None)
def _git_state(here: str) -> dict[str, Any]:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        # results and runs are outputs, not code: writing records must not mark the tree dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":/", ":(exclude,top)leaderboard", ":(exclude,top)runs"],
                               cwd=here, capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": sha or None, "dirty": bool(dirty) if sha else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(device: torch.device) -> dict[str, Any]:
    import kornia
    import numpy
    import timm

    from . import __version__

    g = git_commit()
    return {
        "sslbench_version": __version__,
        "git_commit": g["commit"],
        "git_dirty": g["dirty"],
        "torch": torch.__version__,
        "timm": timm.__version__,
        # augmentation and array kernels change CPU trajectories between installs too
        "kornia": kornia.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
    }
