"""STL-10 (Coates et al. 2011) in torchvision's binary format (``stl10_binary/``), the classic
self-supervised benchmark: ``train`` (5,000 labelled), ``test`` (8,000 labelled) and
``unlabeled`` (100,000 images, label -1) at 96 px, resized to ``data.image_size`` like every
source. Downloaded with torchvision's own code (:mod:`.download`) when asked.

``train`` and ``test`` are read into memory; ``unlabeled`` (2.7 GB at 96 px) is memory-mapped and
decoded batch by batch. It carries no labels, so it is *pretraining only*
(``pretrain_only = True``): pretrain on it with ``data.pretrain_split=unlabeled`` while the
probes train on ``train``; evaluation refuses it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .base import ImageDataset, TensorImageDataset, resize_uint8

STL10_KINDS = ("stl10",)
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
                 "truck"]
SIDE = 96  # native resolution
_IMAGE_BYTES = 3 * SIDE * SIDE
SPLIT_FILES: dict[str, tuple[str, Optional[str]]] = {
    "train": ("train_X.bin", "train_y.bin"), "test": ("test_X.bin", "test_y.bin"),
    "unlabeled": ("unlabeled_X.bin", None)}
UNLABELED = "unlabeled"


def decode_stl10(raw: np.ndarray, image_size: int) -> Tensor:
    """uint8 [N, 3, S, S] from STL-10's on-disk layout (N x 3 x 96 x 96, each channel stored
    column-major, as torchvision's reader transposes too)."""
    chw = np.ascontiguousarray(raw.reshape(-1, 3, SIDE, SIDE).transpose(0, 1, 3, 2))
    return resize_uint8(torch.from_numpy(chw), image_size).contiguous()


def stl10_folder(root: str | Path) -> Path:
    """The folder holding the ``*.bin`` files: ``root/stl10_binary`` or ``root`` itself."""
    root_p = Path(os.path.expanduser(str(root))).absolute()
    return root_p / "stl10_binary" if (root_p / "stl10_binary").is_dir() else root_p


def read_stl10_split(folder: Path, split: str, image_size: int) -> tuple[Tensor, np.ndarray]:
    """Images (uint8 [N, 3, S, S]) and 0-based labels of a labelled split (``train``/``test``).

    Raises:
        UserError: Missing files, a partial image file or a label count that does not match.
    """
    xname, yname = SPLIT_FILES[split]
    xf, yf = folder / xname, folder / str(yname)
    if not (xf.is_file() and yf.is_file()):
        raise UserError(f"STL-10 {split} data not found under {folder}: expected stl10_binary/"
                        f"{xname} and {yname} (torchvision format)")
    raw = np.fromfile(xf, dtype=np.uint8)
    if raw.size % _IMAGE_BYTES:
        raise UserError(f"{xf} is not a whole number of 3x96x96 images; re-extract STL-10")
    y = np.fromfile(yf, dtype=np.uint8).astype(np.int64) - 1  # labels 1..10 on disk
    if len(y) != raw.size // _IMAGE_BYTES:
        raise UserError(f"STL-10: {raw.size // _IMAGE_BYTES} images but {len(y)} labels in "
                        f"{folder}; re-extract STL-10")
    if len(y) and not (0 <= y.min() and y.max() < len(STL10_CLASSES)):
        raise UserError(f"{yf} holds labels outside 1..10; re-extract STL-10")
    return decode_stl10(raw, image_size), y


class STL10Unlabeled(ImageDataset):
    """The 100k ``unlabeled`` split, memory-mapped and decoded per batch; every label is -1.

    Pretraining only (``pretrain_only``): it has no labels for a probe or a test."""

    pretrain_only = True

    def __init__(self, path: Path, image_size: int, classes: list[str]) -> None:
        size = path.stat().st_size
        if size % _IMAGE_BYTES:
            raise UserError(f"{path} is not a whole number of 3x96x96 images; re-extract STL-10")
        self.path, self.image_size, self.classes = str(path), int(image_size), list(classes)
        self.labels = torch.full((size // _IMAGE_BYTES,), -1, dtype=torch.long)
        self.name = f"stl10:{UNLABELED}"
        self._mm: Optional[np.memmap] = None

    def _images(self) -> np.memmap:
        if self._mm is None:  # opened lazily: also once per DataLoader worker
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r").reshape(-1, _IMAGE_BYTES)
        return self._mm

    def get_batch(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        raw = self._images()[idx.numpy()]
        return decode_stl10(raw, self.image_size), self.labels[idx]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mm": None}  # workers map the file themselves

    def fingerprint(self) -> str:
        """Image count, size and 512 evenly spaced images (hashing all 2.7 GB would take
        seconds on every run)."""
        h = hashlib.sha256(f"{self.name}|{len(self)}|{self.image_size}".encode())
        rows = np.unique(np.linspace(0, len(self) - 1, min(len(self), 512)).astype(np.int64))
        h.update(np.ascontiguousarray(self._images()[rows]).tobytes())
        return h.hexdigest()[:16]


def _classes(folder: Path) -> list[str]:
    names = folder / "class_names.txt"
    if names.is_file():
        found = [c.strip() for c in names.read_text().splitlines() if c.strip()]
        if len(found) == len(STL10_CLASSES):
            return found
    return list(STL10_CLASSES)


def _ensure(root: str, download: bool) -> Path:
    """The ``stl10_binary`` folder under ``root``, downloaded first when asked and absent."""
    from torchvision.datasets import STL10

    from .download import ensure_torchvision_data

    folder = stl10_folder(root)
    if download and not (folder / "test_X.bin").exists():
        root_p = Path(os.path.expanduser(str(root))).absolute()
        ensure_torchvision_data(STL10, root_p, "STL-10")
        folder = stl10_folder(root)
    missing = [f for s in ("train", "test") for f in SPLIT_FILES[s] if not (folder / f).is_file()]
    if missing:
        fix = (f"delete {folder} and run again to download a fresh copy" if download else
               "set data.download=true to download it there, or point data.path at an existing "
               "copy")
        raise UserError(f"STL-10 data not found under {root}: expected stl10_binary/ "
                        f"(torchvision format, missing {', '.join(missing)}); {fix}")
    return folder


def load_stl10_splits(root: str, image_size: int, download: bool = False
                      ) -> dict[str, ImageDataset]:
    """STL-10's splits: ``train`` and ``test`` in memory, ``unlabeled`` memory-mapped (when its
    file is there; pretraining only).

    Args:
        root: Directory holding ``stl10_binary/`` (or that folder itself).
        image_size: Output side length (96 keeps the native pixels).
        download: Fetch the data into ``root`` (torchvision's download and MD5 checks) when
            ``root`` does not hold it yet.

    Raises:
        UserError: Missing or malformed files, or a failed download.
    """
    folder = _ensure(root, download)
    classes = _classes(folder)
    out: dict[str, ImageDataset] = {}
    for split in ("train", "test"):
        images, labels = read_stl10_split(folder, split, image_size)
        out[split] = TensorImageDataset(images, torch.from_numpy(labels), classes,
                                        name=f"stl10:{split}")
    unlabeled = folder / SPLIT_FILES[UNLABELED][0]
    if unlabeled.is_file():
        out[UNLABELED] = STL10Unlabeled(unlabeled, image_size, classes)
    return out
