"""MoCo v3: symmetric contrastive loss with a predictor and a momentum encoder, no queue.

docs/methods.md#moco-v3.

[0] Chen, Xie, He. An Empirical Study of Training Self-Supervised Vision Transformers.
    ICCV 2021. https://arxiv.org/abs/2104.02057
    Official code: https://github.com/facebookresearch/moco-v3

Per step: ``q_i = pred(proj(f(x_i)))``; under no_grad the momentum encoder (backbone + projector,
never the predictor) is EMA-updated with the cosine momentum m(k) set in ``before_step``, then
``k_i = proj_m(f_m(x_i))``. Loss ``ctr(q1, k2) + ctr(q2, k1)`` with
``ctr(q, k) = CE(q̂ k̂ᵀ / τ, arange(n) + n·rank) · 2τ`` and k all-gathered without gradient
(the 2τ factor is part of the official loss).

Heads (official): Linear(no bias) → BN → ReLU hidden blocks; the projector's last block is
Linear → BN(affine=False) (ResNet 2 layers, ViT 3 layers); the predictor is 256 → hidden → 256,
ending in BN(affine=False) for ViTs and in a plain Linear for ResNets.

Defaults and deviations:
- τ = 0.2 (ViT and solo-learn CIFAR ResNet-18; the repo default for R50 is 1.0), m 0.99 → 1
  cosine, hidden 4096, out 256. ``hidden_dim`` may be lowered for CPU recipes.
- Augmentation is BYOL-style asymmetric, jitter (0.4, 0.4, 0.2, 0.1) p = 0.8, grayscale 0.2,
  flip, crop scale (0.08, 1); view 2 solarizes with p = 0.2. Blur (view 1 p = 1.0, view 2
  p = 0.1 at 224 px) is off by default at 32 px (blur hurts at CIFAR size:
  docs/methods.md#augmentation); set ``blur_p1`` / ``blur_p2`` for 224 px.
- ``stop_grad_conv1`` (default True, ViTs only; ignored for ResNets) freezes the random patch
  projection (the paper's stability trick) by ``requires_grad=False`` on timm's
  ``patch_embed.proj``.
- The ViT is timm's (learned position embedding, timm init) rather than the official
  ``vits.py`` (fixed 2-D sin-cos position embedding, Xavier init with Q/K/V split, cls token
  N(0, 1e-6)); the backbone is shared with the other methods.
- SyncBN across GPUs is applied by the engine (``train.sync_bn``); on CPU/gloo BN is per process.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CROP_SCALE, EMA, JITTER, POS_INT, POSITIVE, PROB, checked
from ..distributed import gather_no_grad, rank
from ..schedules import cosine_momentum
from ..views import simclr_view, to_float
from .base import SSLMethod, StepInfo, register_method
from .ema import ema_update, frozen_copy
from .heads import mlp_head


def moco_v3_ctr_loss(q: Tensor, k: Tensor, temperature: float, gather: bool = True) -> Tensor:
    """One direction of the MoCo v3 loss: ``CE(q̂ k̂ᵀ/τ, arange(n) + n·rank) · 2τ`` in fp32.

    Keys are detached and all-gathered (no gradient), so the logits are (n_local, N_global) and
    the positive of local query ``i`` is global key ``rank·n + i``.

    Args:
        q: (n, D) queries (predictor outputs), normalised here.
        k: (n, D) keys (momentum projector outputs), normalised here.
        temperature: τ.
        gather: all-gather the keys across processes (no-op in one process).
    """
    assert q.shape == k.shape and q.ndim == 2, f"bad shapes {q.shape} {k.shape}"
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    n = q.shape[0]
    k_all = gather_no_grad(k) if gather else k  # (N, D)
    offset = rank() * n if k_all.shape[0] != n else 0
    logits = q @ k_all.T / temperature  # (n, N)
    labels = torch.arange(n, device=q.device) + offset
    return F.cross_entropy(logits, labels) * (2.0 * temperature)


def moco_v3_loss(q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, temperature: float,
                 gather: bool = True) -> Tensor:
    """Symmetric total ``ctr(q1, k2) + ctr(q2, k1)``."""
    return (moco_v3_ctr_loss(q1, k2, temperature, gather)
            + moco_v3_ctr_loss(q2, k1, temperature, gather))


@register_method("moco_v3")
class MoCoV3(SSLMethod):
    """MoCo v3: online backbone + projector + predictor, momentum backbone + projector."""

    families = ("resnet", "vit", "convnet")
    paper = "Chen, Xie, He, ICCV 2021"
    test_overrides = {"hidden_dim": 64}  # conformance tests on tiny backbones only

    @dataclass
    class Config:
        temperature: float = checked(POSITIVE, 0.2)
        hidden_dim: int = checked(POS_INT, 4096)  # projector and predictor hidden width
        proj_dim: int = checked(POS_INT, 256)
        momentum: float = checked(EMA, 0.99)  # m0 of the cosine schedule
        momentum_end: float = checked(EMA, 1.0)
        stop_grad_conv1: bool = True  # ViTs: frozen random patch embedding
        crop_scale: list[float] = checked(CROP_SCALE, factory=lambda: [0.08, 1.0])
        jitter: list[float] = checked(JITTER, factory=lambda: [0.4, 0.4, 0.2, 0.1])
        blur_p1: float = checked(PROB, 0.0)  # paper (224 px): 1.0; off at 32 px
        blur_p2: float = checked(PROB, 0.0)  # paper (224 px): 0.1; off at 32 px
        solarize_p1: float = checked(PROB, 0.0)
        solarize_p2: float = checked(PROB, 0.2)
        flip_p: float = checked(PROB, 0.5)
        gray_p: float = checked(PROB, 0.2)
        # not in the paper: per-view colour inversion (augment.simclr_view)
        invert_p: float = checked(PROB, 0.0)

    def __init__(self, backbone, cfg, data) -> None:
        super().__init__(backbone, cfg, data)
        vit = backbone.family == "vit"
        d, h, p = backbone.num_features, cfg.hidden_dim, cfg.proj_dim
        self.projector = mlp_head(d, h, p, num_layers=3 if vit else 2, batch_norm=True,
                                  last_bn=True, last_bn_affine=False)
        self.predictor = mlp_head(p, h, p, num_layers=2, batch_norm=True, last_bn=vit,
                                  last_bn_affine=False)
        if not vit:
            # mlp_head gives BN-free last layers a bias; the official heads have none
            self.predictor[-1] = nn.Linear(h, p, bias=False)
        if vit and cfg.stop_grad_conv1:
            for param in backbone.model.patch_embed.proj.parameters():
                param.requires_grad_(False)
        # momentum encoder = backbone + projector; the predictor exists only online
        self.momentum_backbone = frozen_copy(backbone)
        self.momentum_projector = frozen_copy(self.projector)
        self.momentum = cfg.momentum  # set per step in before_step
        common = dict(crop_scale=cfg.crop_scale, jitter=cfg.jitter, flip_p=cfg.flip_p,
                      gray_p=cfg.gray_p, invert_p=cfg.invert_p)
        self.augment1 = simclr_view(data.image_size, blur_p=cfg.blur_p1,
                                    solarize_p=cfg.solarize_p1, **common)
        self.augment2 = simclr_view(data.image_size, blur_p=cfg.blur_p2,
                                    solarize_p=cfg.solarize_p2, **common)

    def before_step(self, step: StepInfo) -> None:
        self.momentum = cosine_momentum(step.step, step.total_steps, self.cfg.momentum,
                                        self.cfg.momentum_end)

    @torch.no_grad()
    def make_views(self, images: Tensor) -> list[Tensor]:
        x = to_float(images)
        return [self.normalize(self.augment1(x)), self.normalize(self.augment2(x))]

    def query(self, x: Tensor) -> Tensor:
        """(n, proj_dim) predictor outputs, with gradient."""
        return self.predictor(self.projector(self.backbone(x)))

    @torch.no_grad()
    def key(self, x: Tensor) -> Tensor:
        """(n, proj_dim) momentum-encoder outputs, no gradient."""
        return self.momentum_projector(self.momentum_backbone(x))

    def forward(self, views: list[Tensor], step: StepInfo) -> dict[str, Tensor]:
        x1, x2 = views
        # separate passes per view (official): each BN batch holds one view
        q1, q2 = self.query(x1), self.query(x2)
        with torch.no_grad():
            ema_update(self.momentum_backbone, self.backbone, self.momentum)
            ema_update(self.momentum_projector, self.projector, self.momentum)
            k1, k2 = self.key(x1), self.key(x2)
        loss = moco_v3_loss(q1, q2, k1, k2, self.cfg.temperature)
        return {"loss": loss, "momentum": torch.tensor(self.momentum)}
