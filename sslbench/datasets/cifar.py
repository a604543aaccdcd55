"""CIFAR-10 / CIFAR-100 in the torchvision pickle format, read into memory; downloaded with
torchvision's own code (:mod:`.download`) when asked (``data.download``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import UserError
from .base import ImageDataset, TensorImageDataset, resize_uint8

CIFAR_KINDS = ("cifar10", "cifar100")
PRETTY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def torchvision_class(variant: str) -> type:
    """torchvision's dataset class for ``variant`` (its url, MD5s and download code)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    return CIFAR10 if variant == "cifar10" else CIFAR100


def _lenient_cifar(variant: str, folder: Optional[str] = None) -> type:
    """torchvision CIFAR class that only checks files exist (no md5 of the 170 MB files), with
    an optional custom folder name."""
    base = torchvision_class(variant)
    return type(f"_Local{base.__name__}", (base,), {
        "base_folder": folder or base.base_folder,
        "train_list": [[f, None] for f, _ in base.train_list],
        "test_list": [[f, None] for f, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })


def _missing(cls: type, root: Path) -> list[str]:
    """The files of ``cls`` (train, test, meta) absent under ``root/<base_folder>``."""
    folder = root / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [f for f in files if not (folder / f).is_file()]


def _locate(root: str, variant: str, download: bool) -> tuple[type, Path]:
    """The lenient class and the folder holding its ``base_folder``; downloads into ``root``
    first when ``download`` and the data is absent. Raises UserError when it stays missing."""
    from .download import ensure_torchvision_data

    cls = _lenient_cifar(variant)
    root_p = Path(os.path.expanduser(str(root))).absolute()
    if (root_p / cls.test_list[0][0]).is_file():  # root is the batches folder itself
        return _lenient_cifar(variant, root_p.name), root_p.parent
    if download and not (root_p / cls.base_folder).exists():
        ensure_torchvision_data(torchvision_class(variant), root_p, PRETTY[variant])
    missing = _missing(cls, root_p)
    if missing:
        hint = ""
        if (root_p / cls.filename).is_file() and not download:
            hint = (f" ({cls.filename} is there: extract it with `tar xzf`, or set "
                    f"data.download=true)")
        fix = (f"delete {root_p / cls.base_folder} and run again to download a fresh copy"
               if download else "set data.download=true to download it there, or point "
               "data.path at an existing copy")
        raise UserError(f"{PRETTY[variant]} data not found under {root}: expected "
                        f"{cls.base_folder}/ (torchvision format, missing {', '.join(missing)})"
                        f"{hint}; {fix}")
    return cls, root_p


def load_cifar(root: str, variant: str, image_size: int,
               download: bool = False) -> dict[str, ImageDataset]:
    """Load CIFAR-10/100 from the torchvision pickle format into memory.

    Args:
        root: Directory containing ``cifar-10-batches-py/`` (or ``cifar-100-python/``), or
            that directory itself.
        variant: ``"cifar10"`` or ``"cifar100"``.
        image_size: Output side length (32 keeps the original pixels).
        download: Fetch the data into ``root`` (torchvision's download and MD5 checks) when
            ``root`` does not hold it yet.

    Returns:
        ``{"train": TensorImageDataset, "test": TensorImageDataset}``.

    Raises:
        UserError: Unknown variant, the data is missing or unreadable, or the download failed.
    """
    if variant not in CIFAR_KINDS:
        raise UserError(f"unknown CIFAR variant '{variant}'; use cifar10 or cifar100")
    cls, root_p = _locate(root, variant, download)
    pretty, folder = PRETTY[variant], root_p / cls.base_folder
    out: dict[str, ImageDataset] = {}
    for split in ("train", "test"):
        try:
            tv = cls(str(root_p), train=split == "train", download=False)
        except Exception as e:  # corrupt pickle, wrong shapes, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"cannot read {pretty} {split} data in {folder}: {first}; "
                            f"re-extract the torchvision archive") from e
        images = torch.from_numpy(np.ascontiguousarray(tv.data)).permute(0, 3, 1, 2)
        images = resize_uint8(images, image_size)
        labels = torch.as_tensor(np.asarray(tv.targets), dtype=torch.long)
        out[split] = TensorImageDataset(images.contiguous(), labels, [str(c) for c in tv.classes],
                                        name=f"{variant}:{split}")
    return out
