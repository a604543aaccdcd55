"""CIFAR-10 / CIFAR-100 in the torchvision pickle format, read into memory (nothing downloaded)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import UserError
from .base import ImageDataset, TensorImageDataset, resize_uint8

CIFAR_KINDS = ("cifar10", "cifar100")


def _lenient_cifar(variant: str, folder: Optional[str] = None) -> type:
    """torchvision CIFAR class that only checks files exist (no md5 of the 170 MB files), with
    an optional custom folder name."""
    from torchvision.datasets import CIFAR10, CIFAR100
    base = CIFAR10 if variant == "cifar10" else CIFAR100
    return type(f"_Local{base.__name__}", (base,), {
        "base_folder": folder or base.base_folder,
        "train_list": [[f, None] for f, _ in base.train_list],
        "test_list": [[f, None] for f, _ in base.test_list],
        "meta": {**base.meta, "md5": None},
    })


def load_cifar(root: str, variant: str, image_size: int) -> dict[str, ImageDataset]:
    """Load CIFAR-10/100 from the torchvision pickle format into memory.

    Args:
        root: Directory containing ``cifar-10-batches-py/`` (or ``cifar-100-python/``), or
            that directory itself.
        variant: ``"cifar10"`` or ``"cifar100"``.
        image_size: Output side length (32 keeps the original pixels).

    Returns:
        ``{"train": TensorImageDataset, "test": TensorImageDataset}``.

    Raises:
        UserError: Unknown variant, or the data is missing or unreadable.
    """
    if variant not in CIFAR_KINDS:
        raise UserError(f"unknown CIFAR variant '{variant}'; use cifar10 or cifar100")
    cls = _lenient_cifar(variant)
    pretty = "CIFAR-10" if variant == "cifar10" else "CIFAR-100"
    root_p = Path(os.path.expanduser(str(root))).absolute()
    if (root_p / cls.test_list[0][0]).is_file():  # root is the batches folder itself
        cls = _lenient_cifar(variant, root_p.name)
        root_p = root_p.parent
    folder = root_p / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        hint = ""
        if (root_p / cls.filename).is_file():
            hint = f" ({cls.filename} is there: extract it with `tar xzf`)"
        raise UserError(f"{pretty} data not found under {root}: expected {cls.base_folder}/ "
                        f"(torchvision format, missing {', '.join(missing)}){hint}; download it "
                        f"elsewhere and set data.path")
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
