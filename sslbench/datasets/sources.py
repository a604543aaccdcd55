"""Data sources: CIFAR (torchvision format), ImageFolder trees and HuggingFace datasets.

Every loader returns ``{split_name: ImageDataset}`` following the contract in
:mod:`sslbench.datasets.base`: RGB uint8 images squared by a center crop of the short side and
resized to ``image_size``, int64 labels, ``classes`` and a descriptive ``name``. Nothing here
downloads anything; all data must already be on disk (or in the HF cache).
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from sslbench.datasets.base import ImageDataset, TensorImageDataset, resize_uint8
from sslbench.errors import UserError

CIFAR_KINDS = ("cifar10", "cifar100")
HF_KINDS = ("hf", "parquet", "hf_imagefolder")
VALID_KINDS = (*CIFAR_KINDS, "imagefolder", *HF_KINDS)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                    ".pgm", ".pbm")
_IMAGE_KEYS = ("img", "image", "images", "pixel_values", "picture", "jpg", "png")
_LABEL_KEYS = ("label", "labels", "fine_label", "fine_labels", "target", "targets", "class",
               "category", "coarse_label")


# --------------------------------------------------------------------------- image helpers
def to_rgb_square(img: Image.Image, image_size: int) -> np.ndarray:
    """Convert a PIL image to RGB, center-crop it square and resize it.

    Args:
        img: Any-mode PIL image (L, LA, P, RGBA, CMYK, I;16, ...).
        image_size: Output side length.

    Returns:
        uint8 array [image_size, image_size, 3].
    """
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):  # high bit depth greyscale
        arr = np.asarray(img, dtype=np.float64)
        if arr.max() > 255:
            arr = arr * (255.0 / (65535.0 if arr.max() <= 65535 else arr.max()))
        img = Image.fromarray(arr.clip(0, 255).round().astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    w, h = img.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _as_pil(value: Any) -> Image.Image:
    """Turn an HF image cell (PIL image, ``{"bytes", "path"}`` dict or array) into PIL."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        return Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    arr = np.asarray(value)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # CHW -> HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.dtype != np.uint8:
        arr = (arr * 255 if arr.dtype.kind == "f" and arr.max() <= 1.0 else arr)
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _stack(arrays: list[np.ndarray], image_size: int) -> Tensor:
    if not arrays:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _index_list(indices: Sequence[int] | Tensor) -> list[int]:
    if isinstance(indices, Tensor):
        return [int(i) for i in indices.reshape(-1).tolist()]
    return [int(i) for i in indices]


# --------------------------------------------------------------------------- CIFAR
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


# --------------------------------------------------------------------------- ImageFolder
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
        idx = _index_list(indices)
        arrays = []
        for i in idx:
            path = self.paths[i]
            try:
                with Image.open(path) as img:
                    arrays.append(to_rgb_square(img, self.image_size))
            except (OSError, ValueError) as e:
                raise UserError(f"cannot decode image {path}: {e}; fix or remove the file") from e
        return _stack(arrays, self.image_size), self.labels[torch.as_tensor(idx, dtype=torch.long)]

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


# --------------------------------------------------------------------------- HuggingFace
class HFImageDataset(ImageDataset):
    """Lazily decoded split of a HuggingFace ``datasets.Dataset``.

    Labels are read once from the label column (no image decoding); :meth:`get_batch` uses batch
    access ``hf_split[list_of_indices]`` on the image column only.
    """

    def __init__(self, hf_split: Any, image_key: str, labels: Tensor, classes: list[str],
                 image_size: int, name: str = "hf") -> None:
        self.hf = hf_split.select_columns([image_key]).with_format(None)
        self.image_key = image_key
        self.labels = labels.long()
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.name = name
        self._hf_fingerprint = getattr(hf_split, "_fingerprint", "") or ""

    def get_batch(self, indices):
        idx = _index_list(indices)
        cells = self.hf[idx][self.image_key] if idx else []
        arrays = [to_rgb_square(_as_pil(c), self.image_size) for c in cells]
        return _stack(arrays, self.image_size), self.labels[torch.as_tensor(idx, dtype=torch.long)]

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.name}|{self.image_key}|{self.image_size}|"
                           f"{self._hf_fingerprint}".encode())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _looks_local(path: str) -> bool:
    return (os.path.exists(os.path.expanduser(path)) or os.path.isabs(path)
            or path.startswith((".", "~")) or path.count("/") > 1)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Cheap connectivity probe, so offline machines skip the hub's slow retry loop."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or ""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _parquet_splits(root: Path) -> dict[str, list[str]]:
    """Group parquet files into splits: ``<split>/...parquet`` or ``<split>[-*].parquet``."""
    if root.is_file():
        return {"train": [str(root)]}
    splits: dict[str, list[str]] = {}
    for f in sorted(root.rglob("*.parquet")):
        rel = f.relative_to(root).parts
        if any(p.startswith(".") for p in rel):
            continue
        split = rel[0] if len(rel) > 1 and rel[0] != "data" else f.stem.split("-")[0]
        splits.setdefault(split, []).append(str(f))
    known = {"train", "test", "val", "valid", "validation", "dev", "ood", "eval", "unlabeled"}
    if len(splits) == 1 and next(iter(splits)) not in known:
        splits = {"train": next(iter(splits.values()))}
    return splits


def _open_hf(path: str, kind: str) -> dict[str, Any]:
    """Open ``path`` as a ``{split: datasets.Dataset}`` dict for the given HF ``kind``."""
    import datasets

    local = Path(os.path.expanduser(path))
    reachable = False
    try:
        if kind == "parquet":
            files = _parquet_splits(local)
            if not files:
                raise UserError(f"no .parquet files found in {path}; expected a .parquet file, "
                                f"<split>/*.parquet or <split>-*.parquet")
            # one split at a time: HF would otherwise force the first file's features
            # (e.g. ClassLabel names) onto every split
            ds = {s: datasets.load_dataset("parquet", data_files={s: f}, split=s)
                  for s, f in files.items()}
        elif kind == "hf_imagefolder":
            ds = datasets.load_dataset("imagefolder", data_dir=str(local))
        elif local.is_dir() and any((local / f).is_file() for f in
                                    ("dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(str(local))
        elif local.exists():
            ds = datasets.load_dataset(str(local))
        else:  # hub name: use the local HF cache only when the hub cannot be reached
            offline = datasets.config.HF_HUB_OFFLINE
            reachable = not offline and _hub_reachable()
            datasets.config.HF_HUB_OFFLINE = not reachable
            try:
                ds = datasets.load_dataset(path)
            finally:
                datasets.config.HF_HUB_OFFLINE = offline
    except UserError:
        raise
    except Exception as e:
        if kind == "hf" and not local.exists():
            fix = ("check the dataset name" if reachable else
                   "there is no network here — point data.path at a local copy")
            raise UserError(f"could not load HF dataset '{path}': {_first_line(e)}; {fix}") from e
        raise UserError(f"could not load {kind} data from {path}: {_first_line(e)}; check the "
                        f"path and its layout") from e
    if isinstance(ds, datasets.Dataset):
        return {"train": ds}
    return dict(ds)


def _find_key(features: dict, given: Optional[str], feature_type: type, names: Sequence[str],
              what: str, source: str) -> str:
    cols = list(features)
    if given is not None:
        if given not in features:
            raise UserError(f"{what} column '{given}' not in {source} (columns: "
                            f"{', '.join(cols)}); set data.{what}_key to one of them")
        return given
    for k, f in features.items():
        if isinstance(f, feature_type):
            return k
    for k in names:
        if k in features:
            return k
    raise UserError(f"no {what} column found in {source} (columns: {', '.join(cols)}); set "
                    f"data.{what}_key")


def _read_column(hf_split: Any, key: str) -> np.ndarray:
    return np.asarray(hf_split.select_columns([key]).with_format("numpy")[key])


def load_hf(name_or_path: str, image_size: int, image_key: Optional[str] = None,
            label_key: Optional[str] = None, kind: str = "hf") -> dict[str, ImageDataset]:
    """Load a HuggingFace dataset (hub/cache, ``save_to_disk`` dir, parquet or imagefolder).

    Args:
        name_or_path: Hub name or local path.
        image_size: Output side length.
        image_key: Image column; auto-detected (first ``Image`` feature, else common names).
        label_key: Label column; auto-detected (first ``ClassLabel`` feature, else common names).
        kind: ``"hf"``, ``"parquet"`` or ``"hf_imagefolder"``.

    Returns:
        ``{split: HFImageDataset}``.

    Raises:
        UserError: Unknown kind, unloadable data or missing image/label columns.
    """
    import datasets

    if kind not in HF_KINDS:
        raise UserError(f"unknown HF source kind '{kind}'; use one of {', '.join(HF_KINDS)}")
    splits = _open_hf(name_or_path, kind)
    if not splits:
        raise UserError(f"HF dataset '{name_or_path}' has no splits; check data.path")
    first = next(iter(splits.values()))
    source = f"HF dataset '{name_or_path}'"
    image_key = _find_key(first.features, image_key, datasets.Image, _IMAGE_KEYS, "image", source)
    label_key = _find_key(first.features, label_key, datasets.ClassLabel, _LABEL_KEYS, "label",
                          source)
    for split, ds in splits.items():
        missing = [k for k in (image_key, label_key) if k not in ds.features]
        if missing:
            raise UserError(f"split '{split}' of {source} lacks column '{missing[0]}' (columns: "
                            f"{', '.join(ds.features)}); make all splits share the same columns")
        feat = ds.features[image_key]
        if not isinstance(feat, datasets.Image) and isinstance(feat, dict) and "bytes" in feat:
            splits[split] = ds.cast_column(image_key, datasets.Image())  # raw {bytes, path}
    raw = {s: _read_column(ds, label_key) for s, ds in splits.items()}
    feature = first.features[label_key]
    if isinstance(feature, datasets.ClassLabel):
        names = {s: [str(n) for n in getattr(ds.features[label_key], "names", feature.names)]
                 for s, ds in splits.items()}
        classes = names[next(iter(splits))]
        if any(n != classes for n in names.values()):  # splits disagree: remap by class name
            classes = sorted({c for n in names.values() for c in n})
        index = {c: i for i, c in enumerate(classes)}
        # lookup table per split; the trailing -1 keeps "no label" (-1) entries at -1
        luts = {s: np.array([index[c] for c in n] + [-1], dtype=np.int64) for s, n in names.items()}
        labels = {s: torch.as_tensor(luts[s][v.astype(np.int64)]) for s, v in raw.items()}
    else:
        values = np.concatenate(list(raw.values()))
        if values.dtype.kind not in "iubUSO":
            raise UserError(f"label column '{label_key}' of {source} has dtype {values.dtype}; "
                            f"expected integer or string class labels (set data.label_key)")
        uniq = np.unique(values.astype(str) if values.dtype.kind in "USO" else values)
        classes = [str(u) for u in uniq]
        labels = {s: torch.as_tensor(np.searchsorted(
            uniq, v.astype(str) if uniq.dtype.kind in "USO" else v).astype(np.int64))
            for s, v in raw.items()}
    base = Path(name_or_path).name if _looks_local(name_or_path) else name_or_path
    return {s: HFImageDataset(ds, image_key, labels[s], classes, image_size,
                              name=f"{kind}:{base}:{s}") for s, ds in splits.items()}


# --------------------------------------------------------------------------- dispatch
def load_source(kind: str, path: Optional[str], image_size: int, image_key: Optional[str] = None,
                label_key: Optional[str] = None) -> dict[str, ImageDataset]:
    """Load any supported source by kind.

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
    if kind not in VALID_KINDS:
        raise UserError(f"unknown data kind '{kind}'; valid kinds: {', '.join(VALID_KINDS)}")
    if path is None or str(path).strip() == "":
        raise UserError(f"data.path is not set for kind '{kind}'; set data.path to the dataset "
                        f"location")
    path = str(path)
    if not (kind == "hf" and not _looks_local(path)):
        if not os.path.exists(os.path.expanduser(path)):
            raise UserError(f"data.path for kind '{kind}' not found: {path}; point data.path at "
                            f"an existing local copy (nothing is downloaded)")
    if kind in CIFAR_KINDS:
        return load_cifar(path, kind, image_size)
    if kind == "imagefolder":
        return load_imagefolder(path, image_size)
    return load_hf(path, image_size, image_key, label_key, kind)
