"""Frozen-feature extraction, once per (backbone weights, dataset split), cached on disk.

The backbone runs in ``eval()`` mode under ``no_grad`` (BN running statistics and dropout /
drop-path frozen); its training flag is restored afterwards, and its parameters and buffers are
never written. Features are kept in fp32.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..datasets import ImageDataset
from ..utils import atomic_write

FeatureFn = Callable[[Tensor], Tensor]


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@torch.no_grad()
def extract(fn: FeatureFn, dataset: ImageDataset, device: torch.device, batch_size: int,
            module: Optional[nn.Module] = None) -> tuple[Tensor, Tensor]:
    """Apply ``fn`` (uint8 batch on ``device`` -> (B, D) features) to every image, in order."""
    was_training = module.training if module is not None else False
    if module is not None:
        module.eval()
    feats, labels = [], []
    try:
        for start in range(0, len(dataset), batch_size):
            x, y = dataset.get_batch(range(start, min(start + batch_size, len(dataset))))
            feats.append(fn(x.to(device)).float().cpu())
            labels.append(y)
    finally:
        if module is not None:
            module.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def _read_cache(path: Path, n: int) -> tuple[Tensor, Tensor]:
    """The (features, labels) of a cache file for ``n`` images; ValueError when it is not one."""
    from ..checkpoint import load_reason, torch_load

    try:
        d = torch_load(path)
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - zip, pickle and tensor errors
        raise ValueError(load_reason(e)) from None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), Tensor)
                                          for k in ("features", "labels")):
        raise ValueError("not a dict of features and labels")
    feats, labels = d["features"], d["labels"]
    if feats.ndim != 2 or labels.ndim != 1 or len(feats) != n or len(labels) != n:
        raise ValueError(f"shapes {tuple(feats.shape)} / {tuple(labels.shape)} for {n} images")
    return feats, labels


def cached_extract(fn: FeatureFn, dataset: ImageDataset, device: torch.device, batch_size: int,
                   cache_dir: Optional[Path], key: str,
                   module: Optional[nn.Module] = None,
                   quiet: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`extract` with an on-disk cache at ``cache_dir/<key>-<dataset fingerprint>.pt``.
    A cache file that cannot be read is a miss: it is deleted and recomputed (with a one-line
    note on stderr unless ``quiet``)."""
    if cache_dir is None:
        return extract(fn, dataset, device, batch_size, module)
    path = Path(cache_dir) / f"{key}-{dataset.fingerprint()}.pt"
    if path.is_file():
        try:
            return _read_cache(path, len(dataset))
        except ValueError as e:
            if not quiet:
                print(f"note: feature cache {path} is corrupt ({e}); recomputing it",
                      file=sys.stderr)
            path.unlink(missing_ok=True)
    feats, labels = extract(fn, dataset, device, batch_size, module)
    atomic_write(path, lambda p: torch.save({"features": feats, "labels": labels}, p))
    return feats, labels
