"""Frozen-feature extraction, once per (backbone weights, dataset split), cached on disk.

The backbone runs in ``eval()`` mode under ``no_grad`` (BN running statistics and dropout /
drop-path frozen); its training flag is restored afterwards, and its parameters and buffers are
never written. Features are kept in fp32.
"""
from __future__ import annotations

import hashlib
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


def cached_extract(fn: FeatureFn, dataset: ImageDataset, device: torch.device, batch_size: int,
                   cache_dir: Optional[Path], key: str,
                   module: Optional[nn.Module] = None) -> tuple[Tensor, Tensor]:
    """:func:`extract` with an on-disk cache at ``cache_dir/<key>-<dataset fingerprint>.pt``."""
    if cache_dir is None:
        return extract(fn, dataset, device, batch_size, module)
    path = Path(cache_dir) / f"{key}-{dataset.fingerprint()}.pt"
    if path.is_file():
        d = torch.load(path, map_location="cpu", weights_only=True)
        return d["features"], d["labels"]
    feats, labels = extract(fn, dataset, device, batch_size, module)
    atomic_write(path, lambda p: torch.save({"features": feats, "labels": labels}, p))
    return feats, labels
