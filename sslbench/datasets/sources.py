"""Which ``data.name`` values exist, and :func:`load_source` for those read from ``data.path``.

One module per source: :mod:`.cifar` (torchvision CIFAR format), :mod:`.stl10` (torchvision
STL-10 binary format), :mod:`.imagefolder` (``<root>/<split>/<class>/<image>``), :mod:`.hf`
(HuggingFace hub/cache, ``save_to_disk``, parquet, HF imagefolder); :mod:`.embedded` is built in
memory and takes no path. Every loader returns ``{split_name: ImageDataset}`` following the
contract in :mod:`sslbench.datasets.base`.

Downloads: the named datasets (:data:`DOWNLOADABLE`: CIFAR-10, CIFAR-100, STL-10) are fetched
with torchvision's own download and MD5 checks (:mod:`.download`) when ``data.download`` is on
(the default) and ``data.path`` (default ``<DATA_CACHE_DIR>/<name>``) does not hold them yet. A
hub name (``data.name=hf data.path=owner/name``) is fetched by HuggingFace ``datasets`` into its
cache when the hub is reachable, else read from that cache. Other sources are read from disk.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from ..errors import UserError
from ..registry import publish
from .base import ImageDataset
from .cifar import CIFAR_KINDS, load_cifar
from .download import default_data_dir
from .hf import HF_KINDS, load_hf, looks_local
from .imagefolder import load_imagefolder
from .stl10 import STL10_KINDS, load_stl10_splits

SOURCES = ("embedded", *CIFAR_KINDS, *STL10_KINDS, "imagefolder", *HF_KINDS)
"""Every ``data.name``; all but ``embedded`` are read from ``data.path``."""

DOWNLOADABLE = (*CIFAR_KINDS, *STL10_KINDS)
"""The sources ``data.download`` fetches (torchvision's download code)."""


def path_sources() -> tuple[str, ...]:
    """The sources read from a path by :func:`load_source` (usable as OOD sets too)."""
    return tuple(k for k in SOURCES if k != "embedded")


publish("source", lambda: SOURCES)  # config checks data.name against these


def _check_path(kind: str, path: str, download: bool) -> None:
    """Refuse a missing local ``path`` unless it is a hub name or will be downloaded into."""
    if kind == "hf" and not looks_local(path):
        return
    if download and kind in DOWNLOADABLE:
        return
    if not os.path.exists(os.path.expanduser(path)):
        if kind in DOWNLOADABLE:
            raise UserError(f"data.path for kind '{kind}' not found: {path}; set "
                            f"data.download=true to download it there, or point data.path at an "
                            f"existing local copy")
        raise UserError(f"data.path for kind '{kind}' not found: {path}; point data.path at "
                        f"an existing local copy")


def load_source(kind: str, path: Optional[str], image_size: int, image_key: Optional[str] = None,
                label_key: Optional[str] = None, download: bool = False
                ) -> dict[str, ImageDataset]:
    """Load any source of :func:`path_sources` by kind.

    Args:
        kind: One of ``cifar10``, ``cifar100``, ``stl10``, ``imagefolder``, ``hf``,
            ``parquet``, ``hf_imagefolder``.
        path: ``data.path`` (a local path, or a hub name / cached dataset for ``hf``).
        image_size: Output side length.
        image_key: HF image column (auto-detected when None).
        label_key: HF label column (auto-detected when None).
        download: For :data:`DOWNLOADABLE` kinds, fetch the data into ``path`` when it is not
            there yet (off here: OOD sets and direct callers read what is on disk).

    Returns:
        ``{split: ImageDataset}``.

    Raises:
        UserError: Unknown kind, path unset or missing, a failed download, or any loader error.
    """
    kinds = path_sources()
    if kind not in kinds:
        raise UserError(f"unknown data kind '{kind}'; valid kinds: {', '.join(kinds)}")
    if path is None or str(path).strip() == "":
        raise UserError(f"data.path is not set for kind '{kind}'; set data.path to the dataset "
                        f"location")
    path = str(path)
    _check_path(kind, path, download)
    if kind in CIFAR_KINDS:
        return load_cifar(path, kind, image_size, download=download)
    if kind in STL10_KINDS:
        return load_stl10_splits(path, image_size, download=download)
    if kind == "imagefolder":
        return load_imagefolder(path, image_size)
    return load_hf(path, image_size, image_key, label_key, kind)


def configured_path(cfg: Any) -> str:
    """``data.path``, or for a :data:`DOWNLOADABLE` source without one its default folder
    ``<DATA_CACHE_DIR>/<name>`` (where an earlier download landed).

    Raises:
        UserError: ``data.path`` is unset for a source that needs it (or for a named dataset
            with ``data.download=false`` whose default folder does not exist).
    """
    if cfg.path:
        return str(cfg.path)
    if cfg.name not in DOWNLOADABLE:
        raise UserError(f"data.path is required for data.name='{cfg.name}' "
                        f"(a local directory/file or HF hub name)")
    default = default_data_dir(cfg.name)
    if not cfg.download and not os.path.exists(default):
        raise UserError(f"data.path is required for data.name='{cfg.name}' with "
                        f"data.download=false (nothing in {default}); set data.path=DIR holding "
                        f"the extracted data, or data.download=true to download it into {default}")
    return default


def load_configured(cfg: Any) -> dict[str, ImageDataset]:
    """The splits of a ``DataConfig`` naming a path source (every ``data.name`` but
    ``embedded``): downloads a named dataset when ``data.download`` is on and it is absent."""
    download = bool(getattr(cfg, "download", False)) and cfg.name in DOWNLOADABLE
    return load_source(cfg.name, configured_path(cfg), cfg.image_size, cfg.image_key,
                       cfg.label_key, download=download)
