"""The embedded default benchmark: real handwritten digits rendered with nuisance factors.

Built deterministically from scikit-learn's bundled digits (1,797 real 8×8 glyphs, no download).
Plain 8×8 digits cannot rank SSL methods (raw-pixel logistic regression ~96%), so every glyph is
rendered into a 32×32 RGB image with nuisances that defeat raw pixels but that SSL augmentations
(crops, colour jitter, grayscale) teach invariance to:

- position anywhere on the canvas that keeps the glyph inside, glyph size 20–26 px, rotation ±10°;
- polarity: dark-on-light or light-on-dark at random, random grey levels, mild colour tint;
- Gaussian pixel noise σ = 0.05.

Splits are by glyph (stratified, ``data.test_glyph_fraction`` held out, seed 0), so no test
glyph is ever seen in training; the number of renders per glyph is ``data.renders_per_*_glyph``:
``train`` (898 glyphs x 6 renders by default), ``test`` (899 glyphs x 12) and ``ood`` (the test
glyphs x 12 with shifted nuisances: rotation ±20° instead of ±10°, a strong colour tint
(±50% per channel instead of ±15%) and noise σ = 0.08 instead of 0.05), sized for LP-FT-style
experiments (docs/methods.md#ood-evaluation). ``groups`` holds the glyph id of every render so
validation splits can be carved by glyph too.

The nuisances are calibrated against *linear* models on pixels; raw-pixel *k-NN* stays strong
(cosine similarity ignores opposite-polarity neighbours, and 20–26 px glyphs move only a few
pixels). The calibration measurements are in docs/findings.md.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import TensorImageDataset

CLASSES = [str(i) for i in range(10)]


@dataclass(frozen=True)
class Nuisance:
    size: tuple[float, float]  # glyph side in px
    rotation: float  # max |angle| in degrees
    tint: float  # max relative change of each colour channel
    noise: float


IN_DIST = Nuisance(size=(20, 26), rotation=10, tint=0.15, noise=0.05)
SHIFTED = Nuisance(size=(20, 26), rotation=20, tint=0.5, noise=0.08)


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def render(glyphs: Tensor, nuisance: Nuisance, g: torch.Generator, size: int = 32) -> Tensor:
    """Render (n, 8, 8) glyph intensities in [0, 1] into uint8 (n, 3, size, size) images."""
    n = glyphs.shape[0]
    # smooth the 8x8 glyph before placing it (avoids blocky strokes)
    src = F.interpolate(glyphs[:, None].float(), size=(32, 32), mode="bicubic",
                        align_corners=False).clamp(0, 1)
    side = _u(g, n, *nuisance.size)
    angle = _u(g, n, -nuisance.rotation, nuisance.rotation) * math.pi / 180
    half = side / size  # glyph half-extent in normalised canvas units ([-1, 1] = full canvas)
    reach = (1 - half * 1.1).clamp(min=0)  # keep the glyph (roughly) inside the canvas
    cx, cy = _u(g, n, -1, 1) * reach, _u(g, n, -1, 1) * reach
    k = size / side  # canvas-normalised -> glyph-normalised scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    # q = k * R(-angle) (p - c)
    a11, a12, a21, a22 = k * cos, k * sin, -k * sin, k * cos
    theta = torch.stack([
        torch.stack([a11, a12, -(a11 * cx + a12 * cy)], 1),
        torch.stack([a21, a22, -(a21 * cx + a22 * cy)], 1),
    ], 1)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    mask = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # polarity, grey levels, then a per-channel tint
    dark_on_light = torch.rand(n, generator=g) < 0.5
    light, dark = _u(g, n, 0.6, 0.95), _u(g, n, 0.05, 0.4)
    fg = torch.where(dark_on_light, dark, light)[:, None].expand(n, 3)
    bg = torch.where(dark_on_light, light, dark)[:, None].expand(n, 3)
    tint = 1 + nuisance.tint * (2 * torch.rand(n, 3, generator=g) - 1)
    fg, bg = (fg * tint).clamp(0, 1), (bg * tint).clamp(0, 1)
    img = bg[:, :, None, None] * (1 - mask) + fg[:, :, None, None] * mask
    img = img + nuisance.noise * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def build_embedded(cfg: Any, seed: int = 0) -> dict[str, TensorImageDataset]:
    """The benchmark's splits for a ``DataConfig`` (its ``image_size``,
    ``renders_per_train_glyph``, ``renders_per_test_glyph``, ``test_glyph_fraction``), deterministic
    for a given seed; cached."""
    return _build(int(cfg.image_size), int(cfg.renders_per_train_glyph),
                  int(cfg.renders_per_test_glyph), float(cfg.test_glyph_fraction), seed)


@functools.lru_cache(maxsize=4)
def _build(image_size: int, renders_per_train_glyph: int, renders_per_test_glyph: int,
           test_fraction: float, seed: int) -> dict[str, TensorImageDataset]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    glyphs = torch.from_numpy(digits.images).float() / 16.0  # (1797, 8, 8)
    labels = torch.from_numpy(digits.target).long()
    ids = torch.arange(len(labels))
    train_ids, test_ids = train_test_split(ids.numpy(), test_size=test_fraction, random_state=seed,
                                           stratify=labels.numpy())
    train_ids, test_ids = torch.from_numpy(train_ids), torch.from_numpy(test_ids)
    g = torch.Generator().manual_seed(seed)

    def make(split_ids: Tensor, reps: int, nuisance: Nuisance, name: str) -> TensorImageDataset:
        gid = split_ids.repeat_interleave(reps)
        imgs = render(glyphs[gid], nuisance, g, image_size)
        return TensorImageDataset(imgs, labels[gid], CLASSES, groups=gid, name=f"embedded:{name}")

    return {
        "train": make(train_ids, renders_per_train_glyph, IN_DIST, "train"),
        "test": make(test_ids, renders_per_test_glyph, IN_DIST, "test"),
        "ood": make(test_ids, renders_per_test_glyph, SHIFTED, "ood"),
    }
