"""Masked Autoencoders, MAE (docs/methods.md#mae).

[0] He, Chen, Xie, Li, Dollár, Girshick. Masked Autoencoders Are Scalable Vision Learners.
    CVPR 2022. https://arxiv.org/abs/2111.06377
    Official code: https://github.com/facebookresearch/mae (``models_mae.py``)

The encoder is the backbone's own timm ``VisionTransformer`` (its ``patch_embed``, ``cls_token``,
``blocks`` and ``norm``) run on the visible 25 % of the patches only; a lightweight Transformer
decoder reconstructs the normalised pixels of the masked patches, and the loss is the mean squared
error over masked patches only, with per-patch normalised targets (``norm_pix_loss``).

The backbone's learned position embedding is replaced at construction by the fixed 2-D sin-cos
embedding (cls slot zero, ``requires_grad=False``, pitfall 6). It stays a ``pos_embed``
parameter of the timm model, so the saved backbone evaluates later with exactly these embeddings
and loads into a stock ``timm.create_model`` (other resolutions go through timm's usual
``dynamic_img_size`` resampling).

Deviations from the paper / official code (and why):

- Decoder size is configurable (``decoder_dim``/``decoder_depth``/``decoder_heads``); the default
  is the paper's 512 × 8 × 16, but CPU recipes at 32 px use much lighter decoders (e.g.
  128 × 2 × 4, ``recipes/embedded/mae_vit.yaml``). A lighter decoder is a
  reasonable ablation for ViT-Ti/S at 32 px; linear-probe accuracy is the number it affects most.
- Augmentation: RandomResizedCrop with the paper's scale (0.2, 1) (solo-learn's 32 px config uses
  (0.08, 1); set ``crop_scale``), bicubic as in the paper, clamped to [0, 1] because bicubic
  overshoots where PIL would clip, plus a horizontal flip. Views are made in one batched
  resampling on the training device, crop parameters drawn per sample.
- ``reinit_encoder`` (default true) re-initialises the encoder the official way (xavier_uniform
  Linear layers with the patch-embed conv treated as a Linear, LayerNorm (1, 0), cls token
  N(0, 0.02)). Set it false to keep the backbone's weights, e.g. when continuing from
  ``backbone.checkpoint`` — the method cannot tell whether weights were loaded.
- The encoder also applies timm's ``pos_drop`` and ``norm_pre`` (identities for standard ViTs) so
  it computes the same function as the backbone's own forward on the visible tokens.
- The loss is computed in fp32 even under autocast.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, Sequence

import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from ..backbones import Backbone
from ..config import CROP_SCALE, OPEN_UNIT, POS_INT, POSITIVE, PROB, checked
from ..errors import UserError
from ..views import RandomResizedCropFlip, to_float
from .base import DataSpec, SSLMethod, StepInfo, register_method

_LN = partial(nn.LayerNorm, eps=1e-6)  # official code: LayerNorm eps 1e-6 everywhere


# ---------------------------------------------------------------------------------------------
# Pure functions (unit-tested directly)
# ---------------------------------------------------------------------------------------------
def sincos_pos_embed_2d(dim: int, grid: Sequence[int], cls_token: bool = False) -> Tensor:
    """Fixed 2-D sin-cos position embedding in raster order.

    The first half of the channels encodes the column (w) coordinate, the second half the row (h)
    coordinate, each as ``[sin(pos·ω_k), cos(pos·ω_k)]`` with ``ω_k = 10000^(-k/(dim/4))``, the
    same layout as the official helper, so weights stay interchangeable. Computed in float64
    (the reference helper's ``np.float`` breaks on NumPy >= 1.24, pitfall 7).

    Args:
        dim: embedding width, divisible by 4.
        grid: (h, w) patch grid.
        cls_token: prepend an all-zero row for the cls slot.

    Returns:
        float32 tensor [(1 +) h·w, dim].
    """
    if dim % 4:
        raise UserError(f"the 2-D sin-cos position embedding needs a width divisible by 4, "
                        f"got {dim}")
    h, w = int(grid[0]), int(grid[1])
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))  # [D/4]
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                torch.arange(w, dtype=torch.float64), indexing="ij")  # [h, w]

    def one_axis(pos: Tensor) -> Tensor:
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)  # [h·w, D/4]
        return torch.cat([out.sin(), out.cos()], dim=1)  # [h·w, D/2]

    emb = torch.cat([one_axis(cols), one_axis(rows)], dim=1)  # [h·w, D]
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], dim=0)
    return emb.float()


def patchify(imgs: Tensor, patch_size: int) -> Tensor:
    """Images [N, C, H, W] -> patches [N, L, p·p·C].

    Patches in raster order of the (h, w) grid; each patch flattened as (p, q, c).
    """
    n, c, h_px, w_px = imgs.shape
    p = patch_size
    assert h_px % p == 0 and w_px % p == 0, f"image {h_px}x{w_px} not divisible by patch {p}"
    h, w = h_px // p, w_px // p
    x = imgs.reshape(n, c, h, p, w, p)  # [N, C, h, p, w, q]
    x = x.permute(0, 2, 4, 3, 5, 1)  # [N, h, w, p, q, C]
    return x.reshape(n, h * w, p * p * c)


def unpatchify(patches: Tensor, patch_size: int, grid: Optional[Sequence[int]] = None,
               channels: int = 3) -> Tensor:
    """Inverse of :func:`patchify`: [N, L, p·p·C] -> [N, C, h·p, w·p].

    ``grid`` is the (h, w) patch grid; None means square.
    """
    n, length, _ = patches.shape
    p = patch_size
    if grid is None:
        side = math.isqrt(length)
        assert side * side == length, f"{length} patches are not a square grid; pass grid=(h, w)"
        grid = (side, side)
    h, w = int(grid[0]), int(grid[1])
    x = patches.reshape(n, h, w, p, p, channels)  # [N, h, w, p, q, C]
    x = x.permute(0, 5, 1, 3, 2, 4)  # [N, C, h, p, w, q]
    return x.reshape(n, channels, h * p, w * p)


def random_masking(x: Tensor, mask_ratio: float, generator: Optional[torch.Generator] = None
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample random masking by argsort of uniform noise.

    The noise comes from ``generator`` or, by default, the global torch RNG, so a seeded step
    is reproducible (and resumes exactly).

    Args:
        x: tokens [N, L, D] (position embedding already added, pitfall 4).
        mask_ratio: fraction r of tokens removed; ``int(L·(1 − r))`` are kept.

    Returns:
        ``(x_visible [N, len_keep, D], mask [N, L] with 1 = removed, in the original order,
        ids_restore [N, L])``; ``ids_restore`` un-shuffles a [kept, removed] sequence.
    """
    n, length, d = x.shape
    len_keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, device=x.device, generator=generator)  # [N, L]
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # [N, L]
    ids_keep = ids_shuffle[:, :len_keep]  # [N, len_keep]
    x_visible = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, d))
    mask = torch.ones(n, length, device=x.device, dtype=x.dtype)
    mask[:, :len_keep] = 0  # in shuffled order: kept first ...
    mask = torch.gather(mask, 1, ids_restore)  # ... then back to the patch order
    return x_visible, mask, ids_restore


def mae_target(imgs: Tensor, patch_size: int, norm_pix: bool, eps: float = 1e-6) -> Tensor:
    """Regression target [N, L, p·p·C] from the normalised input images [N, C, H, W].

    With ``norm_pix`` every patch is standardised over its own p·p·C values with the unbiased
    variance (torch's default, as in the official code) — per patch, not per image (pitfall 5).
    """
    target = patchify(imgs.float(), patch_size)
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)  # unbiased
        target = (target - mean) / (var + eps).sqrt()
    return target


def mae_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error per patch, averaged over the masked patches only (pitfall 1).

    Args:
        pred, target: [N, L, p·p·C].
        mask: [N, L], 1 = removed (the only patches that count).
    """
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # [N, L]
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum()


def _mae_init_(module: nn.Module) -> None:
    """Official MAE init: xavier_uniform Linear (bias 0), LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _pos_for_grid(pos: Tensor, stored_grid: Sequence[int], grid: Sequence[int],
                  num_prefix: int) -> Tensor:
    """``pos`` [1, prefix + L, D] for the stored grid, resampled to ``grid`` when it differs (the
    same bicubic resampling timm applies in the backbone's own forward with dynamic_img_size)."""
    if tuple(grid) == tuple(stored_grid):
        return pos
    return resample_abs_pos_embed(pos, new_size=list(grid), old_size=list(stored_grid),
                                  num_prefix_tokens=num_prefix)


# ---------------------------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------------------------
class MAEDecoder(nn.Module):
    """Linear(enc → dec), shared mask token, unshuffle, + fixed sin-cos, blocks, LN, Linear."""

    def __init__(self, enc_dim: int, dim: int, depth: int, num_heads: int, mlp_ratio: float,
                 grid: Sequence[int], patch_size: int, channels: int = 3) -> None:
        super().__init__()
        if dim % num_heads:
            raise UserError(f"method.decoder_dim ({dim}) must be divisible by "
                            f"method.decoder_heads ({num_heads})")
        self.grid = (int(grid[0]), int(grid[1]))
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        # fixed, not learned (a Parameter without grad, as the encoder's, so it is checkpointed)
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(dim, self.grid, cls_token=True)[None],
                                      requires_grad=False)  # [1, 1 + L, dim]
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=_LN)
                                     for _ in range(depth)])
        self.norm = _LN(dim)
        self.pred = nn.Linear(dim, patch_size * patch_size * channels)
        _mae_init_(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: Tensor, ids_restore: Tensor, grid: Sequence[int]) -> Tensor:
        """Encoder output [N, 1 + len_keep, D_enc] -> pixel predictions [N, L, p·p·C]."""
        x = self.embed(latent)  # [N, 1 + K, d]
        n, k1, d = x.shape
        length = ids_restore.shape[1]
        masks = self.mask_token.to(x.dtype).expand(n, length + 1 - k1, d)  # [N, L − K, d]
        patches = torch.cat([x[:, 1:], masks], dim=1)  # [N, L, d] in shuffled order
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, d))
        x = torch.cat([x[:, :1], patches], dim=1)  # [N, 1 + L, d], cls kept in front
        # after the unshuffle (pitfall 4): each token gets its own patch position
        x = x + _pos_for_grid(self.pos_embed, self.grid, grid, num_prefix=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.pred(self.norm(x))  # [N, 1 + L, p·p·C]
        return x[:, 1:]  # drop the cls prediction


# ---------------------------------------------------------------------------------------------
# Method
# ---------------------------------------------------------------------------------------------
@register_method("mae")
class MAE(SSLMethod):
    """MAE: encode the visible 25 % of the patches, reconstruct the masked ones' pixels."""

    families = ("vit",)
    paper = "He et al., CVPR 2022"

    @dataclass
    class Config:
        # the loss averages over the masked patches: some must be masked, some kept
        mask_ratio: float = checked(OPEN_UNIT, 0.75)
        norm_pix_loss: bool = True
        # paper / solo-learn CIFAR: 512 x 8 blocks x 16 heads
        decoder_dim: int = checked(POS_INT, 512)
        decoder_depth: int = checked(POS_INT, 8)
        decoder_heads: int = checked(POS_INT, 16)
        decoder_mlp_ratio: float = checked(POSITIVE, 4.0)
        # paper (0.2, 1); solo-learn's 32 px config uses (0.08, 1)
        crop_scale: list[float] = checked(CROP_SCALE, factory=lambda: [0.2, 1.0])
        flip_p: float = checked(PROB, 0.5)
        reinit_encoder: bool = True  # official init; false keeps loaded backbone weights

    test_overrides = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}

    @classmethod
    def check_backbone(cls, backbone: Backbone) -> None:
        super().check_backbone(backbone)
        model = backbone.model
        if (getattr(model, "cls_token", None) is None
                or getattr(model, "reg_token", None) is not None):
            raise UserError(f"method 'mae' needs a ViT with a class token and no register tokens; "
                            f"'{backbone.name}' has another layout "
                            f"(e.g. use vit_small_patch16_224)")
        if getattr(model, "pos_embed", None) is None:
            raise UserError(f"method 'mae' needs a ViT with an absolute position embedding; "
                            f"'{backbone.name}' has none")
        if backbone.num_features % 4:
            raise UserError(f"method 'mae' needs a ViT width divisible by 4 (2-D sin-cos "
                            f"position embedding); '{backbone.name}' has {backbone.num_features}")

    def __init__(self, backbone: Backbone, cfg: Any, data: DataSpec) -> None:
        super().__init__(backbone, cfg, data)
        self.check_backbone(backbone)
        if not 0.0 < cfg.mask_ratio < 1.0:  # the loss averages over masked patches: need some
            raise UserError(f"method.mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        model = backbone.model
        self.patch_size = int(backbone.patch_size)
        gh, gw = model.patch_embed.grid_size
        self.grid: tuple[int, int] = (int(gh), int(gw))  # patch grid at data.image_size
        # pos_embed has a cls row unless the model adds position after concatenating (deit-3)
        self._pos_prefix = 0 if model.no_embed_class else 1
        d = backbone.num_features

        if cfg.reinit_encoder:
            _mae_init_(model)
            w = model.patch_embed.proj.weight  # conv treated as a Linear [D, C·p·p]
            nn.init.xavier_uniform_(w.data.view(w.shape[0], -1))
            nn.init.normal_(model.cls_token, std=0.02)
        # fixed 2-D sin-cos, cls position 0 (pitfall 6); stays timm's pos_embed for evaluation
        pos = sincos_pos_embed_2d(d, self.grid, cls_token=self._pos_prefix == 1)[None]
        model.pos_embed = nn.Parameter(pos.to(model.pos_embed.device), requires_grad=False)

        self.decoder = MAEDecoder(d, cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads,
                                  cfg.decoder_mlp_ratio, self.grid, self.patch_size)
        self.augment = RandomResizedCropFlip(data.image_size, cfg.crop_scale, flip_p=cfg.flip_p,
                                             mode="bicubic")

    @torch.no_grad()
    def make_views(self, images: Tensor) -> Tensor:
        """One view per image: RRC + flip only (heavier augmentation hurts MAE, pitfall 8)."""
        x = to_float(images)
        return self.normalize(self.augment(x).clamp_(0.0, 1.0))  # [N, 3, H, W]

    # -- encoder / decoder / loss -----------------------------------------------------------------
    def forward_encoder(self, imgs: Tensor, mask_ratio: float
                        ) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        """Embed, add position, mask, prepend cls, run the blocks on visible tokens only.

        Returns:
            ``(latent [N, 1 + len_keep, D], mask [N, L], ids_restore [N, L], grid (h, w))``.
        """
        model = self.backbone.model
        x = model.patch_embed(imgs)  # [N, h, w, D] with dynamic_img_size, else [N, L, D]
        if x.ndim == 4:
            grid = (x.shape[1], x.shape[2])
            x = x.flatten(1, 2)  # [N, L, D], raster order like patchify
        else:
            grid = self.grid
        pos = _pos_for_grid(model.pos_embed, self.grid, grid, self._pos_prefix)
        x = x + pos[:, self._pos_prefix:]  # before masking (pitfall 4)
        x, mask, ids_restore = random_masking(x, mask_ratio)  # [N, K, D]
        cls = model.cls_token + (pos[:, :1] if self._pos_prefix else 0)  # [1, 1, D]
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)  # [N, 1 + K, D]
        x = model.norm_pre(model.pos_drop(x))
        x = model.blocks(x)
        return model.norm(x), mask, ids_restore, grid

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        target = mae_target(imgs, self.patch_size, self.cfg.norm_pix_loss)
        return mae_loss(pred, target, mask)

    def forward(self, views: Tensor, step: StepInfo) -> dict[str, Tensor]:  # type: ignore[override]
        latent, mask, ids_restore, grid = self.forward_encoder(views, self.cfg.mask_ratio)
        pred = self.decoder(latent, ids_restore, grid)  # [N, L, p·p·3]
        return {"loss": self.forward_loss(views, pred, mask)}
