"""Rotation prediction, RotNet (docs/methods.md#rotation-prediction).

[0] Gidaris, Singh, Komodakis. Unsupervised Representation Learning by Predicting Image
    Rotations. ICLR 2018. https://arxiv.org/abs/1803.07728
    Official code: https://github.com/gidariss/FeatureLearningRotNet

Every image of the batch appears four times, rotated by 0°, 90°, 180° and 270° counter-clockwise
(``torch.rot90(x, k, dims=(-2, -1))`` = ``np.rot90``), *interleaved per image* as in the official
collate: sample ``j`` of the 4B batch is image ``j // 4`` rotated by ``k = j mod 4``, and ``k`` is
its label. The augmentation (random crop + flip) runs *before* the rotation, so zero-padded
borders are placed at random and cannot correlate with the label
(docs/methods.md#rotation-prediction, pitfall 2).

Deviations from the paper / official code:

- Backbone: timm ResNet / ViT instead of Network-in-Network (CIFAR) or AlexNet (ImageNet); the
  4-way head is ``Linear(d, 4)`` on the pooled features ([ours] in
  docs/methods.md#rotation-prediction); evaluation uses the same pooled features, not the
  paper's best intermediate block.
- Augmentation is batched on the device with kornia (per-sample parameters): at <= 64 px
  ``RandomCrop(size, padding=4)`` + flip (official CIFAR), above ``RandomResizedCrop`` + flip
  (official ImageNet ``RandomSizedCrop``). Normalisation uses the dataset's mean/std
  (``data.mean/std``) rather than RotNet's hard-coded CIFAR values.
- Optimiser / step schedule come from the recipe (the engine's cosine schedule), not the
  official LUT (0.1 / 0.02 / 0.004 / 0.0008 at epochs 60 / 120 / 160 / 200).
"""
from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CROP_SCALE, NONNEG_INT, PROB, OneOf, checked
from ..errors import UserError
from ..views import to_float
from .base import SSLMethod, StepInfo, register_method

NUM_ROTATIONS = 4
CROPS = ("auto", "pad", "rrc")


def rotate(x: Tensor, k: int) -> Tensor:
    """Rotate a batch (..., H, W) by ``k`` × 90° counter-clockwise (``np.rot90`` convention)."""
    return torch.rot90(x, k, dims=(-2, -1))


def all_rotations(x: Tensor) -> tuple[Tensor, Tensor]:
    """The four rotations of every image, interleaved per image (official collate order).

    Args:
        x: (B, C, H, W) square images.

    Returns:
        views (4B, C, H, W) where row ``j`` is image ``j // 4`` rotated by ``j % 4`` × 90°, and
        labels (4B,) = ``j % 4``.
    """
    if x.shape[-1] != x.shape[-2]:
        # a 90° rotation of a non-square image changes its shape
        # (docs/methods.md#rotation-prediction, pitfall 1)
        raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
    views = torch.stack([rotate(x, k) for k in range(NUM_ROTATIONS)], dim=1)  # (B, 4, C, H, W)
    labels = torch.arange(NUM_ROTATIONS, device=x.device).repeat(x.shape[0])  # (4B,)
    return views.flatten(0, 1), labels


def rotation_labels(n: int, device: torch.device | None = None) -> Tensor:
    """Labels of an interleaved batch of ``n`` (a multiple of 4) rotated samples: ``j mod 4``."""
    if n % NUM_ROTATIONS:
        raise ValueError(f"a rotation batch holds whole groups of 4, got {n} samples")
    return torch.arange(n, device=device) % NUM_ROTATIONS


def base_augment(size: int, crop: str, padding: int, crop_scale: list[float],
                 flip_p: float) -> nn.Sequential:
    """Crop + flip applied before rotating (kornia, per-sample parameters, [0, 1] floats)."""
    if crop == "auto":
        crop = "pad" if size <= 64 else "rrc"
    ops: list[nn.Module] = []
    if crop == "pad":
        # zero padding on [0, 1] images = black borders, like torchvision on a PIL image
        ops.append(K.RandomCrop((size, size), padding=padding))
    else:
        ops.append(K.RandomResizedCrop((size, size), scale=tuple(crop_scale)))
    if flip_p > 0:
        ops.append(K.RandomHorizontalFlip(p=flip_p))
    return nn.Sequential(*ops)


@register_method("rotation")
class RotNet(SSLMethod):
    """RotNet: 4-way classification of the rotation applied to each image."""

    families = ("resnet", "vit", "convnet")
    paper = "Gidaris, Singh, Komodakis, ICLR 2018"

    @dataclass
    class Config:
        crop: str = checked(OneOf(CROPS), "auto")  # auto (pad at <= 64 px, rrc above) | pad | rrc
        # RandomCrop(32, padding=4) of the official CIFAR loader
        crop_padding: int = checked(NONNEG_INT, 4)
        crop_scale: list[float] = checked(CROP_SCALE, factory=lambda: [0.08, 1.0])  # rrc only
        flip_p: float = checked(PROB, 0.5)

    def __init__(self, backbone, cfg, data) -> None:
        super().__init__(backbone, cfg, data)
        if cfg.crop not in CROPS:
            raise UserError(f"method.crop must be one of {', '.join(CROPS)}, got '{cfg.crop}'")
        self.head = nn.Linear(backbone.num_features, NUM_ROTATIONS)
        self.augment = base_augment(data.image_size, cfg.crop, cfg.crop_padding,
                                    list(cfg.crop_scale), cfg.flip_p)

    @torch.no_grad()
    def make_views(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 -> (4B, 3, S, S) normalised, interleaved rotations."""
        x = self.augment(to_float(images))  # augment first, then rotate
        views, _ = all_rotations(x)
        return self.normalize(views)

    def forward(self, views: Tensor, step: StepInfo) -> dict[str, Tensor]:
        labels = rotation_labels(views.shape[0], views.device)  # (4B,)
        logits = self.head(self.backbone(views)).float()  # (4B, 4)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": loss, "acc": acc}
