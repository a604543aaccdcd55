"""Fetching the named datasets (``data.download``) with torchvision's own download code.

:func:`ensure_torchvision_data` makes ``<root>/<base_folder>`` (``cifar-10-batches-py``,
``cifar-100-python``, ``stl10_binary``) appear complete or not at all: torchvision's
``download()`` (download, MD5 of the archive, extraction) runs in a private staging folder under
``root``, every extracted file is checked against torchvision's per-file MD5 list, and only then is
the folder renamed into place. A failed or interrupted attempt leaves nothing that a later load
could mistake for data; a file lock serialises concurrent attempts (e.g. the ranks of a
``torchrun`` job). Every failure is a one-line :class:`~sslbench.errors.UserError` naming the
problem and the fix.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .. import config as _config_module
from ..errors import UserError

SOCKET_TIMEOUT_S = 60.0
"""Seconds a download may wait on one socket operation before it counts as failed."""


def default_data_dir(name: str) -> str:
    """Where ``data.name=<name>`` is kept when ``data.path`` is unset: ``<DATA_CACHE_DIR>/<name>``
    (``DATA_CACHE_DIR`` in :mod:`sslbench.config`)."""
    return os.path.join(os.path.expanduser(_config_module.DATA_CACHE_DIR), name)


def _first_line(e: BaseException) -> str:
    """The first line of an error: ``HTTP Error 404: Not Found``, a URLError's reason
    (``[Errno 111] Connection refused``) or the message."""
    import urllib.error

    plain = isinstance(e, urllib.error.HTTPError) or not getattr(e, "reason", None)
    text = str(e if plain else e.reason).strip()  # type: ignore[attr-defined]
    return text.splitlines()[0] if text else type(e).__name__


def _manual_fix(tv_cls: type, root: Path) -> str:
    return (f"download {tv_cls.url} yourself, extract it into {root} (giving "
            f"{tv_cls.base_folder}/) and pass data.path={root} data.download=false")


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """A default socket timeout while downloading (torchvision's ``urlopen`` sets none, so a
    silent network would otherwise hang forever)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _bare(tv_cls: type, root: Path) -> Any:
    """An instance of the torchvision dataset class for ``root`` that has loaded nothing (its
    ``download()`` and integrity check only need ``root``)."""
    from torchvision.datasets.vision import VisionDataset

    inst = tv_cls.__new__(tv_cls)
    VisionDataset.__init__(inst, str(root))
    return inst


def _explain(e: BaseException, tv_cls: type, staging: Path, pretty: str, root: Path) -> UserError:
    """The one-line UserError for an exception raised by torchvision's ``download()``."""
    from torchvision.datasets.utils import check_integrity

    archive = staging / tv_cls.filename
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return UserError(f"no space left on device while downloading {pretty} into {root}; free "
                         f"space or set data.path to a folder on another disk")
    if archive.is_file() and check_integrity(str(archive), tv_cls.tgz_md5):
        return UserError(f"could not extract the {pretty} archive {tv_cls.filename} downloaded "
                         f"from {tv_cls.url}: {_first_line(e)}; run again to retry, or "
                         f"{_manual_fix(tv_cls, root)}")
    if isinstance(e, RuntimeError) and archive.is_file():  # torchvision: "... corrupted."
        return UserError(f"the {pretty} archive downloaded from {tv_cls.url} failed its MD5 check "
                         f"(expected {tv_cls.tgz_md5}): the download is corrupt or incomplete "
                         f"and was discarded; run again to retry, or {_manual_fix(tv_cls, root)}")
    return UserError(f"could not download {pretty} from {tv_cls.url}: {_first_line(e)}; check "
                     f"the network, or {_manual_fix(tv_cls, root)}")


def _fetch(tv_cls: type, staging: Path, pretty: str, root: Path) -> None:
    """torchvision's own download + archive MD5 + extraction into ``staging``, then its per-file
    MD5 check of the extracted files."""
    existing = root / tv_cls.filename  # an archive the user put there: reused when it verifies
    if existing.is_file():
        with contextlib.suppress(OSError):
            os.link(existing, staging / tv_cls.filename)
    inst = _bare(tv_cls, staging)
    try:
        with _socket_timeout(SOCKET_TIMEOUT_S):
            inst.download()
    except Exception as e:  # network, HTTP, MD5, tar: all become one line
        raise _explain(e, tv_cls, staging, pretty, root) from e
    if not inst._check_integrity():
        raise UserError(f"the files extracted from the {pretty} archive ({tv_cls.url}) failed "
                        f"their MD5 check and were discarded; run again to retry, or "
                        f"{_manual_fix(tv_cls, root)}")


def _clear_stale(root: Path, prefix: str) -> None:
    """Remove staging folders left by killed attempts (called with the lock held)."""
    for p in root.glob(f"{prefix}*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def ensure_torchvision_data(tv_cls: type, root: Path, pretty: str) -> None:
    """Download ``tv_cls`` (a torchvision dataset class with ``url``, ``filename``,
    ``tgz_md5``, ``base_folder``, ``download()``) into ``root`` unless ``root/<base_folder>``
    exists (checked under the lock, so a concurrent process's download is reused).

    Args:
        tv_cls: e.g. ``torchvision.datasets.CIFAR10``.
        root: The folder that receives ``<base_folder>/`` (created when missing).
        pretty: Human name for messages (``CIFAR-10``).

    Raises:
        UserError: One line naming the failure (network, MD5, extraction, disk) and the fix.
    """
    created = [p for p in (root, *root.parents) if not p.exists()]  # root first
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {root} to download {pretty} into: {_first_line(e)}; set "
                        f"data.path to a writable folder") from e
    lock = root / f".{tv_cls.base_folder}.lock"
    try:
        _download_locked(tv_cls, root, pretty, lock)
    except UserError:
        if created:  # a failed first attempt leaves none of the folders it made behind
            with contextlib.suppress(OSError):
                lock.unlink()
                for folder in created:
                    folder.rmdir()
        raise


def _download_locked(tv_cls: type, root: Path, pretty: str, lock: Path) -> None:
    """Under ``lock``: clear stale staging folders, fetch into a fresh one, rename it into
    place."""
    from filelock import FileLock

    target, prefix = root / tv_cls.base_folder, f".{tv_cls.base_folder}.partial-"
    with FileLock(str(lock)):
        if target.is_dir():  # another process finished it while we waited
            return
        _clear_stale(root, prefix)
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
        try:
            _fetch(tv_cls, staging, pretty, root)
            os.replace(staging / tv_cls.base_folder, target)  # atomic: complete or absent
        finally:
            shutil.rmtree(staging, ignore_errors=True)
