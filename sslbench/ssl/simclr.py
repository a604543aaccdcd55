"""SimCLR v1 (docs/methods.md#simclr).

[0] Chen, Kornblith, Norouzi, Hinton. A Simple Framework for Contrastive Learning of Visual
    Representations. ICML 2020. https://arxiv.org/abs/2002.05709
    Official code: https://github.com/google-research/simclr

Loss convention: the *mean* over the 2N anchors (solo-learn), i.e. half of the official TF code's
``loss_a + loss_b``; learning rates from the TF code must account for that factor of 2.
Projection head: the official code's (BN after every layer, the last BN without centre), with
``head_batch_norm: false`` giving the paper's plain ``W2·ReLU(W1·h)``. BatchNorm statistics are
per view by default (``bn_per_view``; solo-learn and lightly forward each view separately). Augmentation at 32 px:
no blur and colour strength 0.5 (official README for CIFAR-10).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import CROP_SCALE, NONNEG, POS_INT, POSITIVE, PROB, checked
from ..distributed import gather_with_grad, rank
from ..views import simclr_view, to_float
from .base import SSLMethod, StepInfo, register_method
from .heads import mlp_head


def nt_xent_loss(z1: Tensor, z2: Tensor, temperature: float, gather: bool = True) -> Tensor:
    """NT-Xent over the 2N views, self-similarity masked, mean over the local anchors.

    Negatives are gathered from every process *with* gradient; the positive of local anchor ``i``
    sits at global index ``rank * n + i`` in the other view's block. Computed in fp32.

    Args:
        z1, z2: (n, D) projections of the two views of the same n images (un-normalised).
    """
    assert z1.shape == z2.shape and z1.ndim == 2, f"bad shapes {z1.shape} {z2.shape}"
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    if gather:
        z1_all, z2_all = gather_with_grad(z1), gather_with_grad(z2)
        offset = rank() * n if z1_all.shape[0] != n else 0
    else:
        z1_all, z2_all, offset = z1, z2, 0
    big_n = z1_all.shape[0]
    anchors = torch.cat([z1, z2])  # (2n, D)
    candidates = torch.cat([z1_all, z2_all])  # (2N, D)
    logits = anchors @ candidates.T / temperature  # (2n, 2N)
    idx = torch.arange(n, device=z1.device) + offset
    self_idx = torch.cat([idx, idx + big_n])
    pos_idx = torch.cat([idx + big_n, idx])
    rows = torch.arange(2 * n, device=z1.device)
    logits[rows, self_idx] = -1e9  # finite: safe even if someone runs it in reduced precision
    return F.cross_entropy(logits, pos_idx)


# -- the pieces SimCLR is made of (greedy local learning reuses them per stage) -----------------

@dataclass
class ProjectionConfig:
    """The NT-Xent temperature and the projection head."""

    temperature: float = checked(POSITIVE, 0.5)  # official CIFAR-10 recipe; ImageNet: 0.1
    # None: the head's input width (paper v1: the backbone's feature dim)
    proj_hidden_dim: Optional[int] = checked(POS_INT.or_null("for the feature dim"), None)
    proj_dim: int = checked(POS_INT, 128)
    head_batch_norm: bool = True


@dataclass
class TwoViewConfig:
    """The augmentation both views are drawn with."""

    crop_scale: list[float] = checked(CROP_SCALE, factory=lambda: [0.08, 1.0])
    color_strength: float = checked(NONNEG, 0.5)  # 0.5 at 32 px, 1.0 at 224 px
    blur_p: float = checked(PROB, 0.0)  # off at 32 px (hurts); 0.5 at 224 px
    flip_p: float = checked(PROB, 0.5)


def projection_head(in_dim: int, cfg: ProjectionConfig) -> nn.Sequential:
    """SimCLR's 2-layer projection head on ``in_dim`` features."""
    head = mlp_head(in_dim, cfg.proj_hidden_dim or in_dim, cfg.proj_dim, num_layers=2,
                    batch_norm=cfg.head_batch_norm, last_bn=cfg.head_batch_norm)
    if cfg.head_batch_norm:  # official code: last BN has scale but no centre
        head[-1].bias.requires_grad_(False)
    return head


def two_view_augment(image_size: int, cfg: TwoViewConfig) -> nn.Sequential:
    """The one pipeline both views go through (on [0, 1] floats)."""
    return simclr_view(image_size, cfg.crop_scale, cfg.color_strength, blur_p=cfg.blur_p,
                       flip_p=cfg.flip_p)


@torch.no_grad()
def two_views(images: Tensor, augment: nn.Module, normalize: nn.Module) -> list[Tensor]:
    """Two normalised views of a uint8 batch, each (n, 3, H, W)."""
    x = to_float(images)
    # one call on both copies: parameters are drawn per sample anyway, and one batched
    # call is about twice as fast as two on CPU
    views = normalize(augment(torch.cat([x, x])))
    return list(views.chunk(2))


@register_method("simclr")
class SimCLR(SSLMethod):
    """SimCLR: two augmented views, projection head, NT-Xent with in-batch negatives."""

    families = ("resnet", "vit", "convnet")
    paper = "Chen et al., ICML 2020"

    @dataclass
    class Config(TwoViewConfig, ProjectionConfig):
        """The head and loss settings, then the view settings (flat under ``method:``)."""

        # one backbone + head pass per view, so BatchNorm normalises each view by its own
        # batch statistics (solo-learn, lightly); false: one pass over both views (BN over the
        # 2n images, as the official code's global BN). Per view measured better on the
        # embedded benchmark, paired over 8 seeds (docs/findings.md#simclr-pipeline-ablation)
        bn_per_view: bool = True

    def __init__(self, backbone, cfg, data) -> None:
        super().__init__(backbone, cfg, data)
        self.projector = projection_head(backbone.num_features, cfg)
        self.augment = two_view_augment(data.image_size, cfg)

    def make_views(self, images: Tensor) -> list[Tensor]:
        return two_views(images, self.augment, self.normalize)

    def forward(self, views: list[Tensor], step: StepInfo) -> dict[str, Tensor]:
        if self.cfg.bn_per_view:
            z1, z2 = (self.projector(self.backbone(v)) for v in views)  # (n, proj_dim) each
        else:
            n = views[0].shape[0]
            z = self.projector(self.backbone(torch.cat(views)))  # (2n, proj_dim)
            z1, z2 = z[:n], z[n:]
        return {"loss": nt_xent_loss(z1, z2, self.cfg.temperature)}
