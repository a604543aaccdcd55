"""Which ``data.name`` values exist, and :func:`load_source` for those read from ``data.path``.

One module per source: :mod:`.cifar` (torchvision CIFAR format), :mod:`.imagefolder`
(``<root>/<split>/<class>/<image>``), :mod:`.hf` (HuggingFace hub/cache, ``save_to_disk``,
parquet, HF imagefolder); :mod:`.embedded` is built in memory and takes no path. Every loader
returns ``{split_name: ImageDataset}`` following the contract in :mod:`sslbench.datasets.base`.
Nothing here downloads anything; all data must already be on disk (or in the HF cache).
"""
from __future__ import annotations

import os
from typing import Optional

from ..errors import UserError
from .base import ImageDataset
from .cifar import CIFAR_KINDS, load_cifar
from .hf import HF_KINDS, load_hf, looks_local
from .imagefolder import load_imagefolder

SOURCES = ("embedded", *CIFAR_KINDS, "imagefolder", *HF_KINDS)
"""Every ``data.name``; all but ``embedded`` are read from ``data.path``."""


def path_sources() -> tuple[str, ...]:
    """The sources read from a path by :func:`load_source` (usable as OOD sets too)."""
    return tuple(k for k in SOURCES if k != "embedded")


def load_source(kind: str, path: Optional[str], image_size: int, image_key: Optional[str] = None,
                label_key: Optional[str] = None) -> dict[str, ImageDataset]:
    """Load any source of :func:`path_sources` by kind.

    Args:
        kind: One of ``cifar10``, ``cifar100``, ``imagefolder``, ``hf``, ``parquet``,
            ``hf_imagefolder``.
        path: ``data.path`` (a local path, or a hub name / cached dataset for ``hf``).
        image_size: Output side length.
        image_key: HF image column (auto-detected when None).
        label_key: HF label column (auto-detected when None).

    Returns:
        ``{split: ImageDataset}``.

    Raises:
        UserError: Unknown kind, path unset or missing, or any loader error.
    """
    kinds = path_sources()
    if kind not in kinds:
        raise UserError(f"unknown data kind '{kind}'; valid kinds: {', '.join(kinds)}")
    if path is None or str(path).strip() == "":
        raise UserError(f"data.path is not set for kind '{kind}'; set data.path to the dataset "
                        f"location")
    path = str(path)
    if not (kind == "hf" and not looks_local(path)):
        if not os.path.exists(os.path.expanduser(path)):
            raise UserError(f"data.path for kind '{kind}' not found: {path}; point data.path at "
                            f"an existing local copy (nothing is downloaded)")
    if kind in CIFAR_KINDS:
        return load_cifar(path, kind, image_size)
    if kind == "imagefolder":
        return load_imagefolder(path, image_size)
    return load_hf(path, image_size, image_key, label_key, kind)
