"""Context prediction / relative patch location (docs/methods.md#context-prediction).

[0] Doersch, Gupta, Efros. Unsupervised Visual Representation Learning by Context Prediction.
    ICCV 2015. https://arxiv.org/abs/1505.05192
    Official (refactored) code: https://github.com/cdoersch/deepcontext

Each image gives a 3×3 grid of patches separated by a gap, every patch jittered independently.
One shared backbone embeds all nine patches; the pooled features of a pair (first, second) are
concatenated and an MLP predicts where the *second* patch lies relative to the first
(docs/methods.md#context-prediction, the official ``pos2lbl``)::

    0 1 2        (dx, dy) = (-1,-1) -> 0, (0,-1) -> 1, (1,-1) -> 2, (-1,0) -> 3,
    3 · 4                   (1, 0) -> 4, (-1,1) -> 5, (0, 1) -> 6, (1, 1) -> 7
    5 6 7

so ``label(-d) = 7 - label(d)`` and swapping a pair maps ``l`` to ``7 - l``. Shortcut guards as
in the official code: gap + jitter (no boundary continuity), colour dropping (keep one random
channel, mean-subtracted; the other two become uniform noise of ±half a grey level), random
pixelation (p = 1/3, down to ~100 pixels) and per-patch RMS normalisation.

Deviations from the paper / official code (all [ours] in docs/methods.md#context-prediction):

- Geometry is chosen from the image size S (:func:`default_geometry`): jitter
  ``j = max(1, round(S/56))``, gap ``g = 2j + max(1, round(S/28))``, patch
  ``p = (S - 2g - 2j) // 3``. 32 px -> patch 8, gap 3, jitter ±1 (9 px patches with gap 2 and
  ±1 jitter would have gap − 2·jitter = 0, i.e. touching patches); 224 px -> patch 61, gap 16, jitter ±4;
  64 px -> 18 / 4 / ±1. The grid always fits *without clamping* (the official code clamps,
  which can shrink a gap); the grid origin is random in whatever slack is left. The paper uses
  96 px patches, gap 48, jitter ±7 on 150k–450k-pixel images.
- Patches are resized to ``patch_input_size`` before the backbone; by default the native size,
  rounded up to a multiple of the ViT patch size (8 px at 32 px with ViT patch 4; 61 -> 64 px
  with patch 16). Recipes for the stock-stem ``test_resnet`` upsample to 16 px.
- Pixelation only acts on patches larger than 10 px (so never at 32 px).
- Per-patch normalisation targets an RMS of 1 on dataset-normalised pixels (the code's 50 on
  the 0-255 AlexNet scale); the noise of dropped channels is ±0.5/255 in [0, 1] units.
- Pairs: by default the centre patch with each of its 8 neighbours, in both orders (16 pairs
  per image; the code adds both orders), so labels are exactly uniform; ``pairs: all`` uses
  every ordered adjacent pair of the grid (40, diagonals rarer), as the refactored code does.
- Backbone: timm ResNet / ViT instead of AlexNet (fc6 4096); head ``MLP(2d -> 1024 -> 8)``
  (BN after the hidden layer) instead of fc7 -> fc8 -> fc9 (4096, 4096, 8). Loss: the *mean*
  cross-entropy over pairs (Caffe summed; pitfall 5).
- Evaluation runs the backbone on full images, whereas it was trained on small patches: a
  resolution mismatch (e.g. 8 px patches vs 32 px images; for ViTs the position embedding is
  interpolated from the patch grid during pretraining). Expect probes to lag methods trained on
  full images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import NONNEG_INT, POS_INT, POSITIVE, PROB, OneOf, checked
from ..errors import UserError
from .base import SSLMethod, StepInfo, register_method
from .heads import mlp_head

GRID = 3
CENTER = 4  # raster index of the centre patch in the 3x3 grid
NUM_CLASSES = 8
PAIRINGS = ("center", "center_both", "all")
MIN_PIXELATE_SIDE = 10  # official code: down to ~100 total pixels


# -- labels ------------------------------------------------------------------------------------

def offset_label(dx: int, dy: int) -> int:
    """Label of the second patch at grid offset (dx, dy) from the first (x right, y down)."""
    if max(abs(dx), abs(dy)) != 1:
        raise ValueError(f"({dx}, {dy}) is not a neighbour offset")
    idx = (dy + 1) * GRID + (dx + 1)  # raster index in the 3x3 neighbourhood
    return idx if idx < CENTER else idx - 1


def label_offset(label: int) -> tuple[int, int]:
    """Inverse of :func:`offset_label`: (dx, dy) of label 0..7."""
    idx = label if label < CENTER else label + 1
    return idx % GRID - 1, idx // GRID - 1


def grid_position(k: int) -> tuple[int, int]:
    """(gx, gy) of raster index ``k`` in the 3x3 grid."""
    return k % GRID, k // GRID


def pair_table(pairs: str = "center_both") -> tuple[Tensor, Tensor, Tensor]:
    """Which grid patches are paired and with what label.

    Args:
        pairs: ``center`` (centre first, each of its 8 neighbours second), ``center_both`` (also
            the swapped pairs) or ``all`` (every ordered pair of adjacent grid cells).

    Returns:
        first (P,), second (P,) raster indices into the grid and labels (P,) = label of
        ``second`` relative to ``first``.
    """
    if pairs not in PAIRINGS:
        raise UserError(f"method.pairs must be one of {', '.join(PAIRINGS)}, got '{pairs}'")
    rows: list[tuple[int, int, int]] = []
    for i in range(GRID * GRID):
        for j in range(GRID * GRID):
            (xi, yi), (xj, yj) = grid_position(i), grid_position(j)
            dx, dy = xj - xi, yj - yi
            if max(abs(dx), abs(dy)) != 1:
                continue
            if pairs == "all" or i == CENTER or (pairs == "center_both" and j == CENTER):
                rows.append((i, j, offset_label(dx, dy)))
    first, second, labels = (torch.tensor(c) for c in zip(*rows))
    return first, second, labels


# -- geometry ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridGeometry:
    """A 3x3 patch grid on an ``image_size`` square image (all in pixels)."""

    image_size: int
    patch: int
    gap: int
    jitter: int

    @property
    def slack(self) -> int:
        """Room left for the random grid origin once patches, gaps and jitter fit."""
        return self.image_size - GRID * self.patch - (GRID - 1) * self.gap - 2 * self.jitter

    @property
    def min_separation(self) -> int:
        """Smallest distance between neighbouring patches (gap minus both jitters)."""
        return self.gap - 2 * self.jitter

    def check(self) -> None:
        if self.patch < 1 or self.jitter < 0:
            raise UserError(f"context grid: bad patch {self.patch} / jitter {self.jitter}")
        if self.min_separation <= 0:
            raise UserError(f"context grid: gap {self.gap} must exceed 2 x jitter "
                            f"({2 * self.jitter}) or neighbouring patches can touch")
        if self.slack < 0:
            raise UserError(f"context grid: 3 x patch {self.patch} + 2 x gap {self.gap} + "
                            f"2 x jitter {self.jitter} exceeds the image size {self.image_size}")


def default_geometry(image_size: int, patch: Optional[int] = None, gap: Optional[int] = None,
                     jitter: Optional[int] = None) -> GridGeometry:
    """Grid for ``image_size``; any of patch / gap / jitter given explicitly overrides the rule
    (see the module docstring): 32 -> (8, 3, ±1), 64 -> (18, 4, ±1), 224 -> (61, 16, ±4)."""
    s = image_size
    j = jitter if jitter is not None else max(1, round(s / 56))
    g = gap if gap is not None else 2 * j + max(1, round(s / 28))
    p = patch if patch is not None else (s - (GRID - 1) * g - 2 * j) // GRID
    geo = GridGeometry(s, p, g, j)
    geo.check()
    return geo


def sample_grid(batch: int, geo: GridGeometry, device: torch.device | None = None) -> Tensor:
    """Top-left corners of the 9 patches of each image, (B, 9, 2) as (y, x), raster order.

    Per image a random grid origin in ``[jitter, jitter + slack]``; per patch and axis an
    independent integer jitter in ``[-jitter, jitter]``. Everything stays in bounds by
    construction: corners lie in ``[0, image_size - patch]``.
    """
    origin = geo.jitter + torch.randint(0, geo.slack + 1, (batch, 1, 2), device=device)
    k = torch.arange(GRID * GRID, device=device)
    cell = torch.stack([k // GRID, k % GRID], dim=-1)  # (9, 2): (gy, gx)
    jit = torch.randint(-geo.jitter, geo.jitter + 1, (batch, GRID * GRID, 2), device=device)
    return origin + cell * (geo.patch + geo.gap) + jit  # (B, 9, 2)


def extract_patches(x: Tensor, corners: Tensor, patch: int) -> Tensor:
    """Crop square patches by index: x (B, C, H, W), corners (B, K, 2) (y, x) -> (B, K, C, p, p)."""
    b = x.shape[0]
    ar = torch.arange(patch, device=x.device)
    rows = corners[..., 0, None] + ar  # (B, K, p)
    cols = corners[..., 1, None] + ar  # (B, K, p)
    bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
    # advanced indices split by the channel slice -> the channel dim goes last: (B, K, p, p, C)
    out = x[bi, :, rows[:, :, :, None], cols[:, :, None, :]]
    return out.permute(0, 1, 4, 2, 3)


# -- patch preprocessing (shortcut guards) -----------------------------------------------------

def pixelate(x: Tensor, p: float) -> Tensor:
    """With probability ``p`` per patch, down-sample to a random side in [10, side) and back.

    The side is drawn so the *pixel count* is uniform in [10², side²] (official code).
    """
    n, _, side, _ = x.shape
    if p <= 0 or side <= MIN_PIXELATE_SIDE:
        return x
    chosen = torch.rand(n, device=x.device) < p
    sides = (torch.rand(n, device=x.device) * (side ** 2 - MIN_PIXELATE_SIDE ** 2)
             + MIN_PIXELATE_SIDE ** 2).sqrt().long().clamp(MIN_PIXELATE_SIDE, side - 1)
    out = x.clone()
    for r in sides[chosen].unique().tolist():  # batched per distinct size
        idx = (chosen & (sides == r)).nonzero().squeeze(1)
        small = F.interpolate(x[idx], size=(r, r), mode="bilinear", antialias=True,
                              align_corners=False)
        out[idx] = F.interpolate(small, size=(side, side), mode="bilinear", align_corners=False)
    return out


def drop_colour(x: Tensor, noise_scale: Tensor) -> Tensor:
    """Keep one random channel per patch (mean-subtracted); the others become uniform noise.

    Args:
        x: (N, C, h, w) patches.
        noise_scale: broadcastable to x; the noise is U(-0.5, 0.5) * noise_scale.
    """
    n, c = x.shape[:2]
    keep = F.one_hot(torch.randint(0, c, (n,), device=x.device), c).bool()[:, :, None, None]
    kept = x - x.mean(dim=(2, 3), keepdim=True)
    noise = (torch.rand_like(x) - 0.5) * noise_scale
    return torch.where(keep, kept, noise)


def normalise_patches(x: Tensor, rms: float) -> Tensor:
    """Per patch: remove each channel's mean, then scale so the RMS over (C, h, w) is ``rms``."""
    x = x - x.mean(dim=(2, 3), keepdim=True)
    norm = x.square().mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)
    return x / norm * rms


# -- the method --------------------------------------------------------------------------------

@register_method("context")
class ContextPrediction(SSLMethod):
    """Relative patch location: predict which of the 8 neighbours a patch is."""

    families = ("resnet", "vit")
    paper = "Doersch, Gupta, Efros, ICCV 2015"

    @dataclass
    class Config:
        # None: from the image size (32 px -> 8)
        patch: Optional[int] = checked(POS_INT.or_null("for the image size's default"), None)
        # None: from the image size (32 px -> 3)
        gap: Optional[int] = checked(POS_INT.or_null("for the image size's default"), None)
        # None: from the image size (32 px -> ±1)
        jitter: Optional[int] = checked(NONNEG_INT.or_null("for the image size's default"), None)
        # None: native, rounded up to the ViT patch
        patch_input_size: Optional[int] = checked(POS_INT.or_null("for the patch size"), None)
        pairs: str = checked(OneOf(PAIRINGS), "center_both")  # center | center_both | all
        color_drop: bool = True  # official code's colour dropping
        pixelate_p: float = checked(PROB, 1 / 3)  # official code; no-op on patches <= 10 px
        patch_norm: bool = True  # per-patch mean removal + RMS normalisation
        patch_rms: float = checked(POSITIVE, 1.0)
        head_hidden_dim: int = checked(POS_INT, 1024)
        head_batch_norm: bool = True

    def __init__(self, backbone, cfg, data) -> None:
        super().__init__(backbone, cfg, data)
        self.geometry = default_geometry(data.image_size, cfg.patch, cfg.gap, cfg.jitter)
        self.input_size = self._input_size(cfg.patch_input_size)
        first, second, labels = pair_table(cfg.pairs)
        # non-persistent: derived from the config, so checkpoints do not depend on them
        self.register_buffer("first", first, persistent=False)
        self.register_buffer("second", second, persistent=False)
        self.register_buffer("labels", labels, persistent=False)
        d = backbone.num_features
        self.head = mlp_head(2 * d, cfg.head_hidden_dim, NUM_CLASSES, num_layers=2,
                             batch_norm=cfg.head_batch_norm)

    def _input_size(self, requested: Optional[int]) -> int:
        multiple = self.backbone.patch_size or 1
        size = requested or math.ceil(self.geometry.patch / multiple) * multiple
        if size % multiple:
            raise UserError(f"method.patch_input_size {size} is not a multiple of the ViT patch "
                            f"size {multiple}; use e.g. {math.ceil(size / multiple) * multiple}")
        return size

    @torch.no_grad()
    def make_views(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) uint8 -> (B, 9, 3, s, s) preprocessed grid patches (raster order)."""
        b = images.shape[0]
        geo = self.geometry
        if images.shape[-1] != geo.image_size or images.shape[-2] != geo.image_size:
            raise ValueError(f"context expects {geo.image_size} px images, got "
                             f"{tuple(images.shape[-2:])}")
        x = self.normalize(images)  # (B, 3, S, S)
        corners = sample_grid(b, geo, images.device)  # (B, 9, 2)
        p = extract_patches(x, corners, geo.patch).flatten(0, 1)  # (9B, 3, patch, patch)
        p = pixelate(p, self.cfg.pixelate_p)
        if self.input_size != geo.patch:
            p = F.interpolate(p, size=(self.input_size,) * 2, mode="bilinear",
                              align_corners=False, antialias=self.input_size < geo.patch)
        if self.cfg.color_drop:
            # ±half a grey level of a [0, 1] image, expressed in dataset-normalised units
            p = drop_colour(p, 1.0 / (255.0 * self.normalize.std))
        if self.cfg.patch_norm:
            p = normalise_patches(p, self.cfg.patch_rms)
        return p.view(b, GRID * GRID, *p.shape[1:])

    def pair_logits(self, h: Tensor) -> Tensor:
        """Pooled patch features (B, 9, D) -> logits (B, P, 8) for every pair of the table."""
        pair = torch.cat([h[:, self.first], h[:, self.second]], dim=-1)  # (B, P, 2D)
        return self.head(pair.flatten(0, 1)).view(h.shape[0], -1, NUM_CLASSES)

    def forward(self, views: Tensor, step: StepInfo) -> dict[str, Tensor]:
        b = views.shape[0]
        h = self.backbone(views.flatten(0, 1)).view(b, GRID * GRID, -1)  # (B, 9, D)
        logits = self.pair_logits(h).float().flatten(0, 1)  # (B·P, 8)
        labels = self.labels.repeat(b)  # (B·P,): the table repeats per image
        loss = F.cross_entropy(logits, labels)
        acc = (logits.detach().argmax(1) == labels).float().mean()
        return {"loss": loss, "acc": acc}
