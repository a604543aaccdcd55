"""The one data contract: every source becomes named splits of (uint8 image, label).

A split is an :class:`ImageDataset`: ``len(ds)``, ``ds.labels`` (int64, all labels),
``ds.classes`` (names), optional ``ds.groups`` (ids that must stay on one side of any
train/validation split, e.g. the source glyph of an embedded-benchmark render), and
``ds.get_batch(indices) -> (uint8 [B, 3, S, S], int64 [B])``. Images are always RGB, square, of
the configured ``image_size``; loaders never normalise or augment (that happens batched on the
training device).
"""
from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch
from torch import Tensor


class ImageDataset(torch.utils.data.Dataset):
    """Base class. ``ds[list_of_indices]`` returns a batch, so a ``DataLoader`` with a batch
    sampler and ``batch_size=None`` decodes whole batches (in workers, for lazy sources)."""

    classes: list[str]
    labels: Tensor
    groups: Optional[Tensor] = None
    name: str = "dataset"

    def __len__(self) -> int:
        return int(self.labels.numel())

    def get_batch(self, indices: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, (list, tuple, Tensor)):
            return self.get_batch(index)
        x, y = self.get_batch([int(index)])
        return x[0], y[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """A content hash used as a feature-cache key."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]

    def subset(self, indices: Tensor) -> "ImageDataset":
        return SubsetImageDataset(self, indices)

    def in_memory(self) -> Optional[Tensor]:
        """The split's uint8 images [N, 3, S, S] when it is held in memory (row i is
        ``self[i]``'s image), else None (lazy sources decode per batch)."""
        return None


class TensorImageDataset(ImageDataset):
    """In-memory split: ``images`` uint8 [N, 3, S, S], ``labels`` int64 [N]."""

    def __init__(self, images: Tensor, labels: Tensor, classes: list[str],
                 groups: Optional[Tensor] = None, name: str = "tensor") -> None:
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3, \
            f"images must be uint8 [N, 3, S, S], got {images.dtype} {tuple(images.shape)}"
        assert len(images) == len(labels), f"{len(images)} images but {len(labels)} labels"
        self.images = images.contiguous()
        self.labels = labels.long()
        self.classes = list(classes)
        self.groups = groups
        self.name = name

    def get_batch(self, indices):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx]

    def in_memory(self) -> Optional[Tensor]:
        return self.images

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(self.images.numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        return h.hexdigest()[:16]


class SubsetImageDataset(ImageDataset):
    def __init__(self, parent: ImageDataset, indices: Tensor) -> None:
        self.parent = parent
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.labels = parent.labels[self.indices]
        self.groups = None if parent.groups is None else parent.groups[self.indices]
        self.classes = parent.classes
        self.name = f"{parent.name}[subset]"

    def get_batch(self, indices):
        idx = self.indices[torch.as_tensor(indices, dtype=torch.long)]
        return self.parent.get_batch(idx)

    def in_memory(self) -> Optional[Tensor]:
        held = self.parent.in_memory()
        return None if held is None else held[self.indices]

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.parent.fingerprint().encode())
        h.update(self.indices.numpy().tobytes())
        return h.hexdigest()[:16]


def resize_uint8(images: Tensor, size: int, chunk: int = 512) -> Tensor:
    """Resize a uint8 [N, 3, H, W] batch to [N, 3, size, size] (antialiased bilinear), ``chunk``
    images at a time so that whole datasets fit in memory as float."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = []
    for i in range(0, len(images), chunk):
        x = torch.nn.functional.interpolate(images[i:i + chunk].float(), size=(size, size),
                                            mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)
