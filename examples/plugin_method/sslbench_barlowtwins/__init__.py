"""Barlow Twins for sslbench — the worked example of a method shipped as an external plugin.

[0] Zbontar, Jing, Misra, LeCun, Deny. Barlow Twins: Self-Supervised Learning via Redundancy
    Reduction. ICML 2021. https://arxiv.org/abs/2103.03230
    Official code: https://github.com/facebookresearch/barlowtwins
[1] solo-learn (da Costa et al., JMLR 2022), ``solo/methods/barlow_twins.py`` and
    ``scripts/pretrain/cifar/barlow.yaml``: the CIFAR-sized settings used as defaults here.

The method is registered only through this package's entry point
(``[project.entry-points."sslbench.methods"] barlow_twins = "sslbench_barlowtwins:BarlowTwins"``);
sslbench itself does not ship it.

Per step: two views ``y1, y2`` of the batch, ``z_k = projector(backbone(y_k))`` (one pass per
view, as in the official code, so every BN batch holds one view). Each embedding dimension is
standardised over the batch (mean 0, biased variance 1, eps 1e-5: the official
``BatchNorm1d(affine=False)`` in training mode), the cross-correlation matrix is
``C = ẑ1ᵀ ẑ2 / N`` and the loss is::

    L = scale_loss · [ Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij² ]

Distributed training uses the *global* batch: the standardisation statistics and ``C`` are
all-reduced (sum) over processes and divided by the global batch size N, as the official code
does with SyncBN and ``torch.distributed.all_reduce(c)``, so the loss equals the single-process
loss on the same global batch. Unlike the official code the all-reduces here are differentiable
(the gradient is all-reduced too): with DDP's gradient averaging, the parameter
gradients then also equal the single-process ones (the official in-place all-reduce drops the
other ranks' contributions, i.e. its gradients are 1/world_size of these; its lr absorbs it).

Defaults and deviations from the paper (ImageNet, 224 px, ResNet-50):

- Projector: the paper's 3 layers, ``Linear(no bias) → BN → ReLU`` twice then ``Linear(no
  bias)``, but 2048 wide (solo-learn CIFAR) instead of 8192; ``proj_hidden_dim`` /
  ``proj_dim`` may be lowered further for CPU recipes.
- λ = 0.0051 (official code and solo-learn; the paper quotes 5e-3 ≈ 1/d for d = 8192) and
  ``scale_loss`` = 0.1 (solo-learn CIFAR; 1.0 is the paper's loss). ``scale_loss`` only
  rescales the loss, i.e. the gradients seen by the optimiser.
- Augmentation: BYOL-style asymmetric views as in the paper — crop, flip, colour jitter
  (0.4, 0.4, 0.2, 0.1) p 0.8, grayscale 0.2; view 2 solarizes with p 0.2 — but Gaussian blur
  (paper: view 1 p 1.0, view 2 p 0.1) is off by default at 32 px, as solo-learn does for CIFAR
  and as sslbench does for every 32 px method; set ``blur_p1`` / ``blur_p2`` for 224 px.
- ``gray_p`` (paper 0.2) and ``invert_p`` (not in the paper, default 0) exist for the embedded
  benchmark, whose images carry per-image nuisances shared by both views: random polarity
  (dark-on-light or light-on-dark), random grey levels and a colour tint. With the paper's
  colour augmentation Barlow Twins latches onto them: its invariant, decorrelated features
  encode them (a linear fit predicts the image's mean brightness with R² 0.99) but not the
  digit, and its linear probe stayed at or below the random-init backbone's for every lr, λ,
  optimiser and projector width tried. The embedded recipe therefore inverts colours with
  p 0.5 per view and uses strong jitter (0.8, 0.8, 0.8, 0.2) with grayscale p 0.8
  (examples/plugin_method/README.md has the numbers).
- Optimiser: the paper uses LARS (lr 0.2 weights / 0.0048 biases, batch 2048, 1000 epochs);
  that is a recipe choice in sslbench (``optim.name=lars``). The embedded recipe uses AdamW,
  like the quickstart (LARS with solo-learn's lr 0.3, η 0.02 did no better in a short test).
- ViT backbones are supported (the loss only needs pooled features); the paper only has
  ResNets.
"""
from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
import torch.distributed as dist
from torch import Tensor

from sslbench.config import CROP_SCALE, JITTER, NONNEG, POS_INT, POSITIVE, PROB, checked
from sslbench.distributed import is_dist, world_size
from sslbench.ssl import SSLMethod, StepInfo
from sslbench.ssl.heads import mlp_head
from sslbench.views import simclr_view, to_float

__all__ = ["BarlowTwins", "barlow_twins_loss", "cross_correlation"]
__version__ = "0.1.0"


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of every copy is the sum of the copies' gradients
    (each process's loss uses the summed tensor), as ``torch.distributed.nn``'s all_reduce."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def _global_sum(x: Tensor) -> Tensor:
    """Sum over processes, differentiable (identity in a single process)."""
    if not is_dist() or world_size() == 1:
        return x
    return _AllReduceSum.apply(x)


def cross_correlation(z1: Tensor, z2: Tensor, eps: float = 1e-5) -> Tensor:
    """(D, D) cross-correlation of the batch-standardised embeddings over the global batch.

    Each dimension of ``z1`` and ``z2`` is standardised with the mean and biased variance over
    the global batch (every process's rows), then ``C = ẑ1ᵀ ẑ2 / N``, summed over processes.
    Computed in fp32.

    Args:
        z1, z2: (n, D) local projector outputs of the two views of the same n images.
        eps: added to the variance (BatchNorm1d's default).
    """
    assert z1.shape == z2.shape and z1.ndim == 2, f"bad shapes {z1.shape} {z2.shape}"
    z1, z2 = z1.float(), z2.float()
    n = torch.tensor(float(z1.shape[0]), device=z1.device)
    if is_dist() and world_size() > 1:
        n = n.clone()
        dist.all_reduce(n)  # global batch size (no gradient needed)

    def standardise(z: Tensor) -> Tensor:
        mean = _global_sum(z.sum(0)) / n
        zc = z - mean
        var = _global_sum(zc.pow(2).sum(0)) / n
        return zc / torch.sqrt(var + eps)

    return _global_sum(standardise(z1).T @ standardise(z2)) / n


def barlow_twins_loss(z1: Tensor, z2: Tensor, lambd: float = 0.0051, scale_loss: float = 1.0,
                      eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """``scale_loss · [Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij²]`` and its two unscaled parts.

    Returns:
        (loss, on_diag, off_diag) with ``on_diag = Σ_i (1 − C_ii)²`` and
        ``off_diag = Σ_{i≠j} C_ij²``; the same value on every process.
    """
    c = cross_correlation(z1, z2, eps)
    diag = torch.diagonal(c)
    on_diag = (1.0 - diag).pow(2).sum()
    off_diag = c.pow(2).sum() - diag.pow(2).sum()
    return scale_loss * (on_diag + lambd * off_diag), on_diag, off_diag


class BarlowTwins(SSLMethod):
    """Barlow Twins: drive the views' cross-correlation matrix towards the identity."""

    families = ("resnet", "vit")
    paper = "Zbontar et al., ICML 2021"
    test_overrides = {"proj_hidden_dim": 64, "proj_dim": 64}  # conformance tests only

    @dataclass
    class Config:
        # ``checked`` declares each value's domain; ``sslbench`` checks it when the recipe loads
        proj_hidden_dim: int = checked(POS_INT, 2048)  # paper: 8192
        proj_dim: int = checked(POS_INT, 2048)  # paper: 8192
        # weight of the redundancy-reduction (off-diagonal) term
        lambd: float = checked(NONNEG, 0.0051)
        scale_loss: float = checked(POSITIVE, 0.1)  # solo-learn CIFAR; the paper's loss is 1.0
        crop_scale: list[float] = checked(CROP_SCALE, factory=lambda: [0.08, 1.0])
        jitter: list[float] = checked(JITTER, factory=lambda: [0.4, 0.4, 0.2, 0.1])
        gray_p: float = checked(PROB, 0.2)
        # not in the paper: random colour inversion per view (see above)
        invert_p: float = checked(PROB, 0.0)
        blur_p1: float = checked(PROB, 0.0)  # paper (224 px): 1.0; off at 32 px
        blur_p2: float = checked(PROB, 0.0)  # paper (224 px): 0.1; off at 32 px
        solarize_p1: float = checked(PROB, 0.0)
        solarize_p2: float = checked(PROB, 0.2)
        flip_p: float = checked(PROB, 0.5)

    def __init__(self, backbone, cfg, data) -> None:
        super().__init__(backbone, cfg, data)
        self.projector = mlp_head(backbone.num_features, cfg.proj_hidden_dim, cfg.proj_dim,
                                  num_layers=3, batch_norm=True, last_bn=False, bias=False)
        common = dict(crop_scale=cfg.crop_scale, jitter=cfg.jitter, gray_p=cfg.gray_p,
                      flip_p=cfg.flip_p)
        self.augment1 = simclr_view(data.image_size, blur_p=cfg.blur_p1,
                                    solarize_p=cfg.solarize_p1, **common)
        self.augment2 = simclr_view(data.image_size, blur_p=cfg.blur_p2,
                                    solarize_p=cfg.solarize_p2, **common)
        if cfg.invert_p > 0:  # per sample, independently in each view
            self.augment1.append(K.RandomInvert(p=cfg.invert_p))
            self.augment2.append(K.RandomInvert(p=cfg.invert_p))

    @torch.no_grad()
    def make_views(self, images: Tensor) -> list[Tensor]:
        x = to_float(images)
        return [self.normalize(self.augment1(x)), self.normalize(self.augment2(x))]

    def forward(self, views: list[Tensor], step: StepInfo) -> dict[str, Tensor]:
        x1, x2 = views
        z1 = self.projector(self.backbone(x1))  # separate passes (official)
        z2 = self.projector(self.backbone(x2))
        loss, on_diag, off_diag = barlow_twins_loss(z1, z2, self.cfg.lambd, self.cfg.scale_loss)
        return {"loss": loss, "on_diag": on_diag.detach(), "off_diag": off_diag.detach()}
