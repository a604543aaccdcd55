"""MoCo v2: momentum contrast with a queue of negatives (docs/methods.md#moco-v2).

[0] Chen, Fan, Girshick, He. Improved Baselines with Momentum Contrastive Learning.
    arXiv 2020. https://arxiv.org/abs/2003.04297
[1] He, Fan, Wu, Xie, Girshick. Momentum Contrast for Unsupervised Visual Representation
    Learning. CVPR 2020. https://arxiv.org/abs/1911.05722
    Official code: https://github.com/facebookresearch/moco (CIFAR demo: branch colab-notebook)

Per step (official order): q = f_q(x_q); under no_grad: EMA-update f_k with the *pre-step* θ_q,
shuffle the key batch (across processes when distributed), k = f_k(x_k), unshuffle; logits
``[q·k⁺ | q·Q] / τ`` against a detached clone of the queue, cross-entropy with label 0; then the
gathered keys are enqueued (after the logits, so a positive never shows up among its own
negatives) and ``ptr ← (ptr + B_global) mod K``.

Defaults and deviations:
- Defaults follow the MoCo CIFAR demo: K = 4096, m = 0.99 (constant), τ = 0.1, RRC(32) scale
  (0.08, 1), flip, jitter (0.4, 0.4, 0.4, 0.1) p = 0.8, grayscale 0.2, no blur, SplitBN with 8
  splits. ``momentum_end`` switches to the cosine schedule (solo-learn MoCo v2+: 0.99 → 0.999).
- Head: the MoCo v2 ``--mlp`` head Linear(d, d) → ReLU → Linear(d, 128), no BN (the demo used a
  linear fc on ResNet-18; the v2 paper's MLP head is what distinguishes v2 from v1).
- Shuffle-BN: every BatchNorm2d of the backbone (query *and* key encoder, as in the demo) becomes
  a :class:`SplitBatchNorm` (per-chunk statistics in training, plain BN in eval); the key batch
  is additionally permuted before the key encoder and un-permuted after (the demo's single-GPU
  shuffle; across processes it is the official gather / broadcast-permutation / scatter).
  SplitBatchNorm deliberately is not a ``_BatchNorm`` subclass, so the engine's SyncBN
  conversion leaves it alone: MoCo v1/v2 answer the BN leak with Shuffle-BN, not SyncBN.
  Its state_dict keys equal BatchNorm2d's, so the exported backbone loads into a stock timm model.
- ``symmetric: true`` is solo-learn's MoCo v2+: ``½[L(q1, k2, Q2) + L(q2, k1, Q1)]`` with one
  queue per view (``queue`` holds view-2 keys, ``queue_v1`` view-1 keys), one shared pointer.
- ResNets only (the published recipes are ResNet ones; ViTs have no BN for Shuffle-BN to act
  on).

Note: on a *fixed* batch of views the loss cannot decrease: every step enqueues near-copies of
the next step's positive keys, so after s steps each query has ~s duplicates of its positive
among the negatives and L ≳ log(1 + s). The generic fixed-batch test in
``tests/test_ssl/test_methods.py`` therefore fails its "loss decreased" assertion for this
method by design (its resume check holds; see ``tests/test_ssl/test_moco_v2.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from ..config import CROP_SCALE, EMA, JITTER, POS_INT, POSITIVE, PROB, checked
from ..distributed import gather_no_grad, is_dist, rank, world_size
from ..errors import UserError
from ..schedules import cosine_momentum
from ..views import simclr_view, to_float
from .base import SSLMethod, StepInfo, register_method
from .ema import ema_update, frozen_copy
from .heads import mlp_head


# -- loss ---------------------------------------------------------------------------------------

def moco_logits(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """``[q·k⁺ | q·Q] / τ`` in fp32, shape (N, 1 + K); the positive is column 0.

    Args:
        q: (N, D) queries (normalised here).
        k: (N, D) positive keys (normalised here; no gradient flows into them).
        queue: (D, K) unit-norm negatives.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
    l_neg = q @ queue.detach().float()  # (N, K)
    return torch.cat([l_pos, l_neg], dim=1) / temperature  # (N, 1 + K)


def moco_infonce_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """InfoNCE of MoCo: cross-entropy of :func:`moco_logits` with label 0, mean over N."""
    logits = moco_logits(q, k, queue, temperature)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


# -- Shuffle-BN on one device -------------------------------------------------------------------

class SplitBatchNorm(_NormBase):
    """BatchNorm2d whose training statistics are computed on ``num_splits`` contiguous chunks of
    the batch separately (Shuffle-BN emulated on one device); the running statistics are the
    average over chunks. In eval mode it is exactly BatchNorm2d."""

    def __init__(self, num_features: int, num_splits: int, eps: float = 1e-5,
                 momentum: Optional[float] = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.num_splits = num_splits

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")

    def extra_repr(self) -> str:
        return super().extra_repr() + f", num_splits={self.num_splits}"

    def _factor(self) -> float:
        """The running-average factor of BatchNorm (cumulative when momentum is None)."""
        if self.momentum is not None:
            return self.momentum
        return 1.0 / float(self.num_batches_tracked)

    def forward(self, x: Tensor) -> Tensor:  # (n, C, H, W)
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.running_mean is None, 0.0, self.eps)
        n, c, h, w = x.shape
        s = self.num_splits
        if n % s:
            raise UserError(f"MoCo SplitBatchNorm: the per-process batch {n} is not divisible by "
                            f"method.num_splits={s}; change train.batch_size or method.num_splits")
        track = self.track_running_stats and self.running_mean is not None
        if track:
            self.num_batches_tracked.add_(1)
        # chunk j (samples j·n/s ... (j+1)·n/s − 1) becomes channel block j of one wide batch
        xs = x.view(s, n // s, c, h, w).transpose(0, 1).reshape(n // s, s * c, h, w)
        rm = self.running_mean.repeat(s) if track else None  # (s·C,)
        rv = self.running_var.repeat(s) if track else None
        weight = self.weight.repeat(s) if self.weight is not None else None
        bias = self.bias.repeat(s) if self.bias is not None else None
        out = F.batch_norm(xs, rm, rv, weight, bias, True, self._factor() if track else 0.0,
                           self.eps)
        if track:
            with torch.no_grad():
                self.running_mean.copy_(rm.view(s, c).mean(0))
                self.running_var.copy_(rv.view(s, c).mean(0))
        return out.view(n // s, s, c, h, w).transpose(0, 1).reshape(n, c, h, w)


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every BatchNorm2d under ``module`` by a :class:`SplitBatchNorm` with the same
    parameters and buffers, in place (returns ``module``, or the replacement of a bare BN)."""
    if isinstance(module, nn.BatchNorm2d):
        new = SplitBatchNorm(module.num_features, num_splits, module.eps, module.momentum,
                             module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        tensors = [*module.parameters(), *module.buffers()]
        return new.to(tensors[0].device) if tensors else new
    for name, child in module.named_children():
        setattr(module, name, convert_split_bn(child, num_splits))
    return module


# -- method -------------------------------------------------------------------------------------

@register_method("moco_v2")
class MoCoV2(SSLMethod):
    """MoCo v2: query encoder + EMA key encoder, queue of negatives, Shuffle-BN via SplitBN."""

    families = ("resnet",)
    paper = "Chen, Fan, Girshick, He, arXiv 2020 (MoCo v2); He et al., CVPR 2020 (MoCo)"
    test_overrides = {"proj_hidden_dim": 64}  # conformance tests on tiny backbones only
    memory_bank_loss = True  # the queue holds keys of earlier steps (see SSLMethod)

    @dataclass
    class Config:
        temperature: float = checked(POSITIVE, 0.1)  # CIFAR demo; 0.2 on ImageNet (v2)
        queue_size: int = checked(POS_INT, 4096)  # K (CIFAR demo); 65536 on ImageNet
        momentum: float = checked(EMA, 0.99)  # m (CIFAR demo); 0.999 on ImageNet
        # None: constant m; else cosine m → momentum_end
        momentum_end: Optional[float] = checked(EMA.or_null("for a constant momentum"), None)
        # None: the backbone's feature dim (v2 --mlp)
        proj_hidden_dim: Optional[int] = checked(POS_INT.or_null("for the feature dim"), None)
        proj_dim: int = checked(POS_INT, 128)
        # SplitBatchNorm chunks (Shuffle-BN on one device); 1 = plain BN
        num_splits: int = checked(POS_INT, 8)
        symmetric: bool = False  # solo-learn MoCo v2+ symmetric loss with one queue per view
        crop_scale: list[float] = checked(CROP_SCALE, factory=lambda: [0.08, 1.0])
        jitter: list[float] = checked(JITTER, factory=lambda: [0.4, 0.4, 0.4, 0.1])
        blur_p: float = checked(PROB, 0.0)  # off at 32 px; 0.5 at 224 px ("aug+")
        flip_p: float = checked(PROB, 0.5)
        gray_p: float = checked(PROB, 0.2)
        # not in the paper: per-view colour inversion (augment.simclr_view)
        invert_p: float = checked(PROB, 0.0)

    def __init__(self, backbone, cfg, data) -> None:
        super().__init__(backbone, cfg, data)
        if cfg.num_splits > 1:
            convert_split_bn(backbone, cfg.num_splits)
        d = backbone.num_features
        self.projector = mlp_head(d, cfg.proj_hidden_dim or d, cfg.proj_dim, num_layers=2,
                                  batch_norm=False)
        # key encoder: copied after the SplitBN conversion so both paths use it
        self.key_backbone = frozen_copy(backbone)
        self.key_projector = frozen_copy(self.projector)
        queue = F.normalize(torch.randn(cfg.proj_dim, cfg.queue_size), dim=0)  # (D, K)
        self.register_buffer("queue", queue)  # keys of view 2 (the only queue if asymmetric)
        if cfg.symmetric:
            self.register_buffer("queue_v1", F.normalize(torch.randn_like(queue), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.momentum = cfg.momentum  # set per step in before_step
        self.augment = simclr_view(data.image_size, cfg.crop_scale, jitter=cfg.jitter,
                                   blur_p=cfg.blur_p, flip_p=cfg.flip_p, gray_p=cfg.gray_p,
                                   invert_p=cfg.invert_p)

    # -- hooks ----------------------------------------------------------------------------------
    def before_step(self, step: StepInfo) -> None:
        c = self.cfg
        self.momentum = (c.momentum if c.momentum_end is None else
                         cosine_momentum(step.step, step.total_steps, c.momentum, c.momentum_end))

    @torch.no_grad()
    def make_views(self, images: Tensor) -> list[Tensor]:
        x = to_float(images)
        # same pipeline for both views; parameters are drawn per sample
        views = self.normalize(self.augment(torch.cat([x, x])))
        return list(views.chunk(2))

    # -- encoders -------------------------------------------------------------------------------
    def query(self, x: Tensor) -> Tensor:
        """(n, D) unit-norm queries, with gradient."""
        return F.normalize(self.projector(self.backbone(x)).float(), dim=1)

    @torch.no_grad()
    def keys(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys of the local batch through the shuffled key encoder.

        Returns:
            (n, D) local unit-norm keys and (N, D) the keys of the global batch in rank order
            (what the queue receives).
        """
        n = x.shape[0]
        x_all = gather_no_grad(x)  # (N, C, H, W)
        perm = torch.randperm(x_all.shape[0], device=x.device)
        if is_dist() and world_size() > 1:
            dist.broadcast(perm, src=0)  # one permutation for every process
        mine = perm[rank() * n:(rank() + 1) * n]
        k_mine = self.key_projector(self.key_backbone(x_all[mine]))  # (n, D) shuffled
        k_mine = F.normalize(k_mine.float(), dim=1)
        k_shuffled = gather_no_grad(k_mine)  # (N, D): row j is the key of x_all[perm[j]]
        k_all = torch.empty_like(k_shuffled)
        k_all[perm] = k_shuffled  # unshuffle
        return k_all[rank() * n:(rank() + 1) * n], k_all

    @torch.no_grad()
    def enqueue(self, queue: Tensor, keys: Tensor) -> None:
        """Write (N, D) global keys into ``queue`` (D, K) at the pointer (pointer not moved)."""
        ptr = int(self.queue_ptr)
        queue[:, ptr:ptr + keys.shape[0]] = keys.T.to(queue.dtype)

    def _check_queue(self, n_local: int) -> None:
        big_b = n_local * world_size()
        if self.cfg.queue_size % big_b:
            raise UserError(f"MoCo v2: method.queue_size={self.cfg.queue_size} must be a multiple "
                            f"of the global batch size {big_b} (train.batch_size); e.g. "
                            f"queue_size={max(1, self.cfg.queue_size // big_b) * big_b}")

    # -- the step -------------------------------------------------------------------------------
    def forward(self, views: list[Tensor], step: StepInfo) -> dict[str, Tensor]:
        x1, x2 = views
        self._check_queue(x1.shape[0])
        q1 = self.query(x1)  # (n, D)
        q2 = self.query(x2) if self.cfg.symmetric else None
        with torch.no_grad():
            # official order: momentum update (pre-optimizer-step θ_q), then the keys
            ema_update(self.key_backbone, self.backbone, self.momentum)
            ema_update(self.key_projector, self.projector, self.momentum)
            k2, k2_all = self.keys(x2)
            k1, k1_all = self.keys(x1) if self.cfg.symmetric else (None, None)
        # logits use clones of the queues, taken before this step's keys are enqueued
        queue2 = self.queue.clone()
        if self.cfg.symmetric:
            queue1 = self.queue_v1.clone()
            loss = 0.5 * (moco_infonce_loss(q1, k2, queue2, self.cfg.temperature)
                          + moco_infonce_loss(q2, k1, queue1, self.cfg.temperature))
        else:
            loss = moco_infonce_loss(q1, k2, queue2, self.cfg.temperature)
        with torch.no_grad():
            pos_sim = (q1.detach() * k2).sum(1).mean()
            self.enqueue(self.queue, k2_all)
            if self.cfg.symmetric:
                self.enqueue(self.queue_v1, k1_all)
            self.queue_ptr[0] = (int(self.queue_ptr) + k2_all.shape[0]) % self.cfg.queue_size
        return {"loss": loss, "pos_sim": pos_sim, "momentum": torch.tensor(self.momentum)}
