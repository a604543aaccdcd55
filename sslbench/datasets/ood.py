"""Extra out-of-distribution evaluation sets (``data.ood_sets``), e.g. for CIFAR-10:

- ``stl10``: STL-10 test split (torchvision binary format, ``stl10_binary/test_X.bin`` +
  ``test_y.bin``), 96 px resized to ``image_size``. Its 10 classes map onto CIFAR-10's by name
  with ``car -> automobile``; ``monkey`` has no CIFAR-10 class and is dropped, so 9 classes
  (8,000 images) remain — the usual CIFAR-10 -> STL-10 shift (the head keeps its 10 outputs).
- ``cifar10_1``: CIFAR-10.1 (Recht et al. 2018), ``cifar10.1_v6_data.npy`` /
  ``cifar10.1_v6_labels.npy`` (any ``*_data.npy`` + ``*_labels.npy`` pair), CIFAR-10 classes.
- ``cifar10_c``: CIFAR-10-C (Hendrycks & Dietterich 2019), ``<corruption>.npy`` (5 severities
  x 10,000 images, severity 1 first) + ``labels.npy``; ``corruptions`` (default: every file)
  at one ``severity``, concatenated into one set.
- any other source kind (``cifar10``, ``imagefolder``, ``hf``, ``parquet``, ...) through
  :func:`sslbench.datasets.sources.load_source`, split ``split`` (default ``test``).

Every set is relabelled into the *training* classes by class name (``class_map`` adds or
overrides name pairs); images whose class has no training counterpart are dropped. A set whose
path does not exist is skipped with a one-line note (``required: true`` makes it an error), so
recipes can name the standard OOD sets and run wherever they are present. The set's ``name``
becomes the metric ``<name>_acc`` of every frozen-feature and fine-tuning protocol.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..registry import publish
from .base import ImageDataset, TensorImageDataset, resize_uint8
from .sources import load_source, path_sources
from .stl10 import STL10_CLASSES, read_stl10_split, stl10_folder

OOD_KINDS = ("stl10", "cifar10_1", "cifar10_c")
# config checks eval.ood_sets[].kind against these (stl10 is also a source: named once)
publish("ood_kind", lambda: tuple(dict.fromkeys((*OOD_KINDS, *path_sources()))))
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
DEFAULT_ALIASES = {"car": "automobile"}  # STL-10 -> CIFAR-10
RESERVED = ("train", "val", "test", "ood")


def _images(nhwc: np.ndarray, image_size: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(nhwc, dtype=np.uint8)).permute(0, 3, 1, 2)
    return resize_uint8(x, image_size).contiguous()


def load_stl10(path: str, image_size: int) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """STL-10's test split (``stl10_binary/test_X.bin`` + ``test_y.bin``, read by
    :mod:`.stl10`), its labels and class names."""
    images, labels = read_stl10_split(stl10_folder(path), "test", image_size)
    return images, labels, list(STL10_CLASSES)


def load_cifar10_1(path: str, image_size: int) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    root = Path(path)
    data = sorted(root.glob("*_data.npy"))
    if not data:
        raise UserError(f"CIFAR-10.1 not found under {path}: expected cifar10.1_v6_data.npy and "
                        f"cifar10.1_v6_labels.npy")
    labels = data[-1].with_name(data[-1].name.replace("_data.npy", "_labels.npy"))
    if not labels.is_file():
        raise UserError(f"CIFAR-10.1: {data[-1].name} has no matching {labels.name}")
    x, y = np.load(data[-1]), np.load(labels).astype(np.int64)
    return _images(x, image_size), y, list(CIFAR10_CLASSES)


def load_cifar10_c(path: str, image_size: int, corruptions: list[str], severity: int
                   ) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    root = Path(path)
    if not (root / "labels.npy").is_file():
        raise UserError(f"CIFAR-10-C not found under {path}: expected labels.npy and "
                        f"<corruption>.npy files")
    if not 1 <= int(severity) <= 5:
        raise UserError(f"CIFAR-10-C severity must be 1..5, got {severity}")
    available = sorted(p.stem for p in root.glob("*.npy") if p.stem != "labels")
    names = list(corruptions) or available
    for c in names:
        if c not in available:
            from ..errors import did_you_mean

            raise UserError(f"CIFAR-10-C has no corruption '{c}' under {path}"
                            f"{did_you_mean(c, available)}")
    labels = np.load(root / "labels.npy").astype(np.int64)
    n = len(labels) // 5
    sl = slice((int(severity) - 1) * n, int(severity) * n)
    xs = [np.load(root / f"{c}.npy", mmap_mode="r")[sl] for c in names]
    x = np.concatenate(xs)
    y = np.concatenate([labels[sl]] * len(names))
    return _images(x, image_size), y, list(CIFAR10_CLASSES)


def relabel(images: torch.Tensor, labels: np.ndarray, classes: list[str],
            train_classes: list[str], class_map: dict[str, str]
            ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Map each OOD class name to the training class of the same name (after ``class_map``);
    drop images of unmatched classes. Returns images, training-class labels, kept class names."""
    aliases = {**DEFAULT_ALIASES, **{str(k): str(v) for k, v in class_map.items()}}
    index = {c: i for i, c in enumerate(train_classes)}
    lut = np.full(len(classes), -1, dtype=np.int64)
    kept = []
    for i, c in enumerate(classes):
        target = aliases.get(c, c)
        if target in index:
            lut[i] = index[target]
            kept.append(c)
    if not kept:
        raise UserError(f"no OOD class matches a training class (OOD: {classes[:5]}..., train: "
                        f"{train_classes[:5]}...); add name pairs to the set's class_map")
    new = lut[labels]
    keep = torch.from_numpy(new >= 0)
    return images[keep].contiguous(), torch.from_numpy(new[new >= 0]), kept


def load_ood_sets(data_cfg: Any, train_classes: list[str], quiet: bool = False
                  ) -> dict[str, ImageDataset]:
    """``{name: dataset}`` for every entry of ``data_cfg.ood_sets`` whose data is present."""
    out: dict[str, ImageDataset] = {}
    for entry in data_cfg.ood_sets or []:
        name = str(entry.name)
        if name in RESERVED or name in out:
            raise UserError(f"data.ood_sets: name '{name}' is taken (reserved: "
                            f"{', '.join(RESERVED)}, the ood split and earlier sets); rename it")
        path = os.path.expanduser(str(entry.path or ""))
        if not path or not os.path.exists(path):
            if entry.required:
                raise UserError(f"OOD set '{name}': {entry.path} not found; fix its path or set "
                                f"required: false to skip it when absent")
            if not quiet:
                print(f"note: OOD set '{name}' skipped ({entry.path or 'no path'} not found)",
                      file=sys.stderr)
            continue
        kind = str(entry.kind)
        if kind == "stl10":
            x, y, classes = load_stl10(path, data_cfg.image_size)
        elif kind == "cifar10_1":
            x, y, classes = load_cifar10_1(path, data_cfg.image_size)
        elif kind == "cifar10_c":
            x, y, classes = load_cifar10_c(path, data_cfg.image_size, list(entry.corruptions),
                                           entry.severity)
        else:

            if kind not in path_sources():
                from ..errors import did_you_mean

                raise UserError(f"OOD set '{name}': unknown kind '{kind}'"
                                f"{did_you_mean(kind, (*OOD_KINDS, *path_sources()))}")
            splits = load_source(kind, path, data_cfg.image_size)
            split = entry.split or "test"
            if split not in splits:
                raise UserError(f"OOD set '{name}' has no split '{split}' (has: "
                                f"{', '.join(splits)}); set its split")
            ds = splits[split]
            if getattr(ds, "pretrain_only", False):
                raise UserError(f"OOD set '{name}': split '{split}' has no labels (pretraining "
                                f"only); set its split to a labelled one such as test")
            x, labels = ds.get_batch(range(len(ds)))
            y, classes = labels.numpy(), list(ds.classes)
        images, labels, kept = relabel(x, y, classes, train_classes, dict(entry.class_map or {}))
        out[name] = TensorImageDataset(images, labels, train_classes, name=f"ood:{name}:{kind}")
        if not quiet:
            print(f"OOD set '{name}': {len(labels)} images, {len(kept)} of {len(classes)} "
                  f"classes mapped onto the training classes", file=sys.stderr)
    return out
