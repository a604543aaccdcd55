"""HuggingFace datasets: hub name or cache, ``save_to_disk`` directory, parquet files, or an
HF ``imagefolder``; labels read once, images decoded lazily batch by batch."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from .base import ImageDataset
from .decode import as_pil, index_list, stack_images, to_rgb_square

HF_KINDS = ("hf", "parquet", "hf_imagefolder")
_IMAGE_KEYS = ("img", "image", "images", "pixel_values", "picture", "jpg", "png")
_LABEL_KEYS = ("label", "labels", "fine_label", "fine_labels", "target", "targets", "class",
               "category", "coarse_label")


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
        idx = index_list(indices)
        cells = self.hf[idx][self.image_key] if idx else []
        arrays = [to_rgb_square(as_pil(c), self.image_size) for c in cells]
        labels = self.labels[torch.as_tensor(idx, dtype=torch.long)]
        return stack_images(arrays, self.image_size), labels

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.name}|{self.image_key}|{self.image_size}|"
                           f"{self._hf_fingerprint}".encode())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def looks_local(path: str) -> bool:
    """Whether ``path`` names a local file or folder rather than a hub dataset."""
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
    base = Path(name_or_path).name if looks_local(name_or_path) else name_or_path
    return {s: HFImageDataset(ds, image_key, labels[s], classes, image_size,
                              name=f"{kind}:{base}:{s}") for s, ds in splits.items()}
