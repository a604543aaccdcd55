"""uint8 images -> normalised float views, on the training device: shared by pretraining
(every method's ``make_views``) and evaluation (fine-tuning, feature extraction).

The data loaders deliver uint8 tensors; :func:`to_float` maps them to [0, 1], the augmentation
pipelines (docs/methods.md#augmentation) work on [0, 1] floats, and :class:`Normalize` applies
the dataset's mean / std last. Every op draws its random parameters per image, with
torchvision's distributions and semantics: torchvision v2 transforms applied to a batch tensor
draw ONE set of parameters for the whole batch (a silent SSL bug), and per-image PIL transforms
in data-loader workers are slow, which is why views are made here, on the batch. The hot path is
batched tensor maths without a host sync: crop + resize + flip as one ``grid_sample``
(:class:`RandomResizedCropFlip`), colour jitter in a random order per image
(:class:`ColorJitterPerImage`), grey-scale; blur, solarize and invert come from kornia, which
also draws per sample.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import kornia.augmentation as K
import torch
import torch.nn.functional as F
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


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision, PIL and kornia


def grayscale(x: Tensor) -> Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)


def shift_hue(x: Tensor, turns: Tensor) -> Tensor:
    """Rotate each image's hue by ``turns[i]`` (fractions of the colour wheel) in HSV, keeping
    saturation and value, as torchvision's ``adjust_hue`` does for one image. The output is read
    off value, chroma and the shifted hue (the closed-form HSV -> RGB), without building an HSV
    tensor: about 4x faster than ``kornia.enhance.adjust_hue`` on CPU."""
    r, g, b = x.unbind(1)
    v = torch.maximum(torch.maximum(r, g), b)
    chroma = v - torch.minimum(torch.minimum(r, g), b)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h = torch.where(v == r, (g - b) / safe,  # hue in sixths of the wheel
                    torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = h + 6 * turns.view(-1, 1, 1)
    out = []
    for n in (5, 3, 1):  # R, G, B
        k = torch.remainder(n + h, 6)
        out.append(v - chroma * torch.minimum(k, 4 - k).clamp_(0, 1))
    return torch.stack(out, 1)


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return x * f.view(-1, 1, 1, 1)


def _contrast(x: Tensor, f: Tensor) -> Tensor:  # blend with the mean grey level
    f = f.view(-1, 1, 1, 1)
    return f * x + (1 - f) * grayscale(x).mean((2, 3), keepdim=True)


def _saturation(x: Tensor, f: Tensor) -> Tensor:  # blend with the grey image
    f = f.view(-1, 1, 1, 1)
    return f * x + (1 - f) * grayscale(x)


class ColorJitterPerImage(nn.Module):
    """Colour jitter with torchvision's semantics drawn per image: with probability ``p`` an
    image gets brightness, contrast, saturation and hue factors (uniform in ``[max(0, 1 - s),
    1 + s]``, hue in ``[-h, h]`` turns) applied in its own random order, clamping to [0, 1] after
    each step. kornia's ``ColorJitter`` draws one order per call, shared by every image of the
    batch (and by both views when they are augmented in one call).

    Batched without a host sync: at each of the four positions every op runs on the whole batch,
    with the neutral factor (an exact identity) for the images that do not take it there; hue,
    which has no exact neutral factor, is selected per image."""

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
                                                            self.strengths[3]))
        order = torch.argsort(torch.rand(n, 4, device=dev), dim=1)  # a permutation per image
        out = x
        for position in range(4):
            for j, op in enumerate((_brightness, _contrast, _saturation)):
                if self.strengths[j] > 0:
                    take = apply & (order[:, position] == j)
                    out = op(out, torch.where(take, factors[j], 1.0)).clamp_(0.0, 1.0)
            if self.strengths[3] > 0:
                out = _hue_where(out, apply & (order[:, position] == 3), factors[3])
        return out if out is not x else x.clone()


def _hue_where(x: Tensor, take: Tensor, turns: Tensor, sync_free: Optional[bool] = None
               ) -> Tensor:
    """``shift_hue`` (then clamp) on the images where ``take``; the others unchanged. On a GPU
    (``sync_free``) the whole batch is shifted and selected without a host sync; on the CPU
    only the chosen rows are."""
    if sync_free if sync_free is not None else x.device.type != "cpu":
        return torch.where(take.view(-1, 1, 1, 1), shift_hue(x, turns).clamp_(0.0, 1.0), x)
    idx = take.nonzero().squeeze(1)
    out = x.clone()
    out[idx] = shift_hue(x[idx], turns[idx]).clamp_(0.0, 1.0)
    return out


class RandomGrayscale(nn.Module):
    """Each image becomes grey (luma on all three channels) with probability ``p``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        take = (torch.rand(x.shape[0], device=x.device) < self.p).view(-1, 1, 1, 1)
        return torch.where(take, grayscale(x).expand_as(x), x)


def crop_boxes(n: int, height: int, width: int, scale: Sequence[float],
               ratio: Sequence[float] = (3 / 4, 4 / 3), device: torch.device | str = "cpu",
               attempts: int = 10) -> Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for ``n`` images at once: (n, 4) integer
    boxes (top, left, height, width). Area fraction uniform in ``scale``, aspect ratio
    log-uniform in ``ratio``, the first of ``attempts`` draws that fits; else the centre crop of
    the ratio clamped to ``ratio``."""
    area = height * width
    s = torch.empty(n, attempts, device=device).uniform_(*scale) * area
    log_r = torch.empty(n, attempts, device=device).uniform_(math.log(ratio[0]),
                                                             math.log(ratio[1]))
    r = torch.exp(log_r)
    w = torch.sqrt(s * r).round()
    h = torch.sqrt(s / r).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(1, keepdim=True)  # index of the first fitting draw
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    in_ratio = width / height  # the fallback, as torchvision
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    found = fits.any(1)
    w = torch.where(found, w, float(fw))
    h = torch.where(found, h, float(fh))
    top = torch.where(found, (torch.rand(n, device=device) * (height - h + 1)).floor(),
                      float((height - fh) // 2))
    left = torch.where(found, (torch.rand(n, device=device) * (width - w + 1)).floor(),
                       float((width - fw) // 2))
    return torch.stack([top, left, h, w], 1)


class RandomResizedCropFlip(nn.Module):
    """Random resized crop (torchvision's box distribution, :func:`crop_boxes`) and horizontal
    flip with probability ``flip_p``, as ONE batched bilinear resampling of the whole batch
    (``affine_grid`` + ``grid_sample``), equal to cropping then ``F.interpolate(bilinear,
    align_corners=False)`` image by image as kornia does (no antialiasing when a crop is larger
    than the output). ``mode="bicubic"`` reads its outer neighbours beyond the box, where
    resizing a cropped image would repeat the box's edge."""

    def __init__(self, size: int, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), flip_p: float = 0.5,
                 mode: str = "bilinear") -> None:
        super().__init__()
        self.size, self.scale, self.ratio, self.flip_p = size, tuple(scale), tuple(ratio), flip_p
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        top, left, h, w = crop_boxes(n, height, width, self.scale, self.ratio, x.device).unbind(1)
        flip = torch.rand(n, device=x.device) < self.flip_p
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = torch.where(flip, -w, w) / width  # output x -> input x (normalised)
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        grid = F.affine_grid(theta, [n, c, self.size, self.size], align_corners=False)
        # sample inside the box's outermost pixel centres, as resizing the cropped image does
        lo = torch.stack([(2 * left + 1) / width, (2 * top + 1) / height], 1) - 1
        hi = torch.stack([(2 * (left + w) - 1) / width, (2 * (top + h) - 1) / height], 1) - 1
        grid = torch.maximum(torch.minimum(grid, hi.view(n, 1, 1, 2)), lo.view(n, 1, 1, 2))
        return F.grid_sample(x, grid, mode=self.mode, padding_mode="border", align_corners=False)


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
        RandomResizedCropFlip(size, crop_scale, flip_p=flip_p),
        ColorJitterPerImage(b, c, sat, h, p=color_p),
        RandomGrayscale(p=gray_p),
    ]
    if blur_p > 0:
        k = max(3, int(0.1 * size) // 2 * 2 + 1)  # 10% of the side, odd (SimCLR)
        ops.append(K.RandomGaussianBlur((k, k), sigma=(0.1, 2.0), p=blur_p))
    if solarize_p > 0:
        ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
    if invert_p > 0:
        ops.append(K.RandomInvert(p=invert_p))
    return nn.Sequential(*ops)
