"""uint8 images -> normalised float views, on the training device: shared by pretraining
(every method's ``make_views``) and evaluation (fine-tuning, feature extraction).

The data loaders deliver uint8 tensors; :func:`to_float` maps them to [0, 1], the augmentation
pipelines (kornia, docs/methods.md#augmentation) work on [0, 1] floats, and :class:`Normalize`
applies the dataset's mean / std last. Every kornia op draws its random parameters independently
per sample (``same_on_batch=False``); torchvision v2 transforms applied to a batch tensor draw ONE
set of parameters for the whole batch (a silent SSL bug), which is why views are made here, on the
batch, rather than in the data loaders.
"""
from __future__ import annotations

import math
from typing import Sequence

import kornia.augmentation as K
import kornia.enhance as E
import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """uint8 or [0, 1] float images -> (x - mean) / std, float32."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = to_float(x)
        return (x - self.mean) / self.std


def to_float(x: Tensor) -> Tensor:
    """uint8 images -> [0, 1] float32 (a new tensor); float images -> float32."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


class ColorJitterPerImage(nn.Module):
    """Colour jitter with torchvision's semantics drawn per image: with probability ``p`` an
    image gets brightness, contrast, saturation and hue factors (uniform in ``[max(0, 1 - s),
    1 + s]``, hue in ``[-h, h]`` turns) applied in its own random order, clamping to [0, 1] after
    each step. kornia's ``ColorJitter`` draws one order per call, shared by every image of the
    batch (and by both views when they are augmented in one call)."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float,
                 p: float = 1.0) -> None:
        super().__init__()
        self.strengths, self.p = (brightness, contrast, saturation, hue), p

    def forward(self, x: Tensor) -> Tensor:
        n, dev = x.shape[0], x.device
        apply = torch.rand(n, device=dev) < self.p
        factors = [torch.empty(n, device=dev).uniform_(max(0.0, 1 - s), 1 + s)
                   for s in self.strengths[:3]]
        factors.append(torch.empty(n, device=dev).uniform_(-self.strengths[3],
                                                            self.strengths[3]) * 2 * math.pi)
        order = torch.argsort(torch.rand(n, 4, device=dev), dim=1)  # a permutation per image
        ops = (E.adjust_brightness_accumulative, E.adjust_contrast_with_mean_subtraction,
               E.adjust_saturation_with_gray_subtraction, E.adjust_hue)
        out = x.clone()
        for position in range(4):
            for j, op in enumerate(ops):
                m = apply & (order[:, position] == j)
                if self.strengths[j] > 0 and bool(m.any()):
                    out[m] = op(out[m], factors[j][m]).clamp_(0.0, 1.0)
        return out


def simclr_view(size: int, crop_scale: Sequence[float] = (0.08, 1.0), color_strength: float = 0.5,
                color_p: float = 0.8, gray_p: float = 0.2, blur_p: float = 0.0,
                solarize_p: float = 0.0, flip_p: float = 0.5,
                jitter: Sequence[float] | None = None, invert_p: float = 0.0) -> nn.Sequential:
    """One view pipeline on [0, 1] floats: RRC -> flip -> colour jitter -> grayscale [-> blur
    -> solarize -> invert]. ``jitter`` overrides the SimCLR (0.8s, 0.8s, 0.8s, 0.2s) strengths,
    e.g. the MoCo/BYOL (0.4, 0.4, 0.2, 0.1).

    ``invert_p`` (in no paper; default off) inverts colours per sample. On the embedded benchmark
    polarity, grey level and tint are per-image nuisances that both views of an image share, and
    non-contrastive / teacher methods satisfy their objective by encoding them unless each view
    draws its own polarity (README "Method recipes on the embedded benchmark")."""
    s = color_strength
    b, c, sat, h = jitter if jitter is not None else (0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    ops: list[nn.Module] = [
        K.RandomResizedCrop((size, size), scale=tuple(crop_scale)),
        K.RandomHorizontalFlip(p=flip_p),
        K.ColorJitter(b, c, sat, h, p=color_p),
        K.RandomGrayscale(p=gray_p),
    ]
    if blur_p > 0:
        k = max(3, int(0.1 * size) // 2 * 2 + 1)  # 10% of the side, odd (SimCLR)
        ops.append(K.RandomGaussianBlur((k, k), sigma=(0.1, 2.0), p=blur_p))
    if solarize_p > 0:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
    if invert_p > 0:
        ops.append(K.RandomInvert(p=invert_p))
    return nn.Sequential(*ops)
