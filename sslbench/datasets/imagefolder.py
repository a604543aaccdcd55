"""ImageFolder trees ``<root>/<split>/<class>/<image>``, decoded lazily batch by batch."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ..errors import UserError
from .base import ImageDataset
from .decode import index_list, stack_images, to_rgb_square

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm")


class FileImageDataset(ImageDataset):
    """Lazily decoded image files: stores paths and labels, decodes in :meth:`get_batch`."""

    def __init__(self, paths: list[str], labels: Tensor, classes: list[str], image_size: int,
                 name: str = "files") -> None:
        assert len(paths) == len(labels), f"{len(paths)} paths but {len(labels)} labels"
        self.paths = list(paths)
        self.labels = labels.long()
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.name = name

    def get_batch(self, indices):
        idx = index_list(indices)
        arrays = []
        for i in idx:
            path = self.paths[i]
            try:
                with Image.open(path) as img:
                    arrays.append(to_rgb_square(img, self.image_size))
            except (OSError, ValueError) as e:
                raise UserError(f"cannot decode image {path}: {e}; fix or remove the file") from e
        labels = self.labels[torch.as_tensor(idx, dtype=torch.long)]
        return stack_images(arrays, self.image_size), labels

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.name}|{self.image_size}".encode())
        h.update("\n".join(self.paths).encode())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _images_under(d: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(d, followlinks=True):
        dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return found


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_imagefolder(root: str, image_size: int) -> dict[str, ImageDataset]:
    """Load ``root/<split>/<class>/<image files>`` as lazily decoded splits.

    Every subdirectory of ``root`` that contains class subdirectories is a split. Classes are
    the sorted union of class directories (holding at least one image) over all splits, with
    one shared index mapping.

    Args:
        root: Dataset root directory.
        image_size: Output side length.

    Returns:
        ``{split: FileImageDataset}``.

    Raises:
        UserError: Root missing, no split directories, or no images.
    """
    root_p = Path(os.path.expanduser(str(root)))
    if not root_p.is_dir():
        raise UserError(f"imagefolder root not found: {root}; set data.path to a directory laid "
                        f"out as <root>/<split>/<class>/<image>")
    layout = (f"expected {root}/<split>/<class>/<image> (e.g. {root}/train/cat/001.png); if the "
              f"class folders sit directly in {root}, move them into {root}/train/")
    per_split: dict[str, dict[str, list[str]]] = {}
    for split_dir in _subdirs(root_p):
        class_dirs = _subdirs(split_dir)
        if not class_dirs:
            continue
        found = {c.name: _images_under(c) for c in class_dirs}
        per_split[split_dir.name] = {c: f for c, f in found.items() if f}
    if not per_split:
        raise UserError(f"no split directories with class subfolders in {root}: {layout}")
    classes = sorted({c for split in per_split.values() for c in split})
    if not classes:
        raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {root}: {layout}")
    empty = [s for s, by_class in per_split.items() if not by_class]
    if empty:
        raise UserError(f"split '{empty[0]}' in {root} has class folders but no image files; "
                        f"add images or remove {root_p / empty[0]}")
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, ImageDataset] = {}
    for split, by_class in per_split.items():
        paths = [p for c in sorted(by_class) for p in by_class[c]]
        labels = torch.tensor([index[c] for c in sorted(by_class) for _ in by_class[c]],
                              dtype=torch.long)
        out[split] = FileImageDataset(paths, labels, classes, image_size,
                                      name=f"imagefolder:{root_p.resolve().name}:{split}")
    return out
