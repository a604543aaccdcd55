"""DINO: self-distillation with no labels (docs/methods.md#dino).

[0] Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin. Emerging Properties in
    Self-Supervised Vision Transformers. ICCV 2021. https://arxiv.org/abs/2104.14294
    Official code: https://github.com/facebookresearch/dino

A student (backbone + DINO head) is trained to match, by cross-entropy, the centred and sharpened
output distribution of a teacher (an EMA of the student, backbone and head) across multi-crop
views; the teacher sees only the two global crops, the student sees every crop, and the
student-vs-same-view terms are skipped. The teacher (not the student) is evaluated.

Defaults are the 32 px values of docs/methods.md#dino where it gives them, otherwise the
official ViT code:

- K = ``out_dim`` = 4096 prototypes (solo-learn CIFAR; the official code uses 65536), head
  d → 2048 → 2048 → 256 with GELU and no BN, 8 local crops (official);
- EMA momentum 0.996 → 1 (official; solo-learn's CIFAR recipe uses 0.9995 → 1, which the
  official help text advises for B ≈ 256 — set ``momentum_teacher`` in the recipe);
- τ_s = 0.1; τ_t linear 0.04 → 0.07 over 30 epochs, then 0.07: the official README "boost"
  setting (the official code default is 0.04 constant; solo-learn's CIFAR config reaches 0.07
  with 0 warm-up epochs now, 50 in earlier versions). With 0 warm-up epochs the generic
  few-step test (tests/test_ssl/test_methods.py) fails on ``test_vit``: its near-identical
  initial outputs let the centre raise the teacher entropy faster than the student can follow;
- ``norm_last_layer`` True, ``freeze_last_layer`` 1 epoch, per-parameter clipping at 3.0 (the
  official ViT recipe; solo-learn's CIFAR ResNet uses no clipping — set ``clip_grad: null``).

Deviations from the official code:

- Multi-crop at 32 px ([ours], docs/methods.md#dino): 2 global 32 px crops with scale (0.4, 1)
  ((0.14, 1) when ``num_local_crops`` = 0) and 16 px local crops with scale (0.05, 0.4); at
  224 px the official 224 / 96. Gaussian blur is off by default at 32 px
  (docs/methods.md#augmentation; the official 224 px values are ``global_blur_p: [1.0, 0.1]``,
  ``local_blur_p: 0.5``); crops are resized bilinearly (kornia) rather than bicubically.
- The weight-normalised last layer is written out by hand (``weight_g``, ``weight_v`` as in
  ``torch.nn.utils.weight_norm``) so that ``state_dict`` and ``deepcopy`` need no parametrisation
  machinery; its maths is the official ``g · v / ‖v‖`` per prototype.
- The teacher runs in train mode like the official one (BN uses batch statistics) but with its
  stochastic depth switched off (the official teacher is built with drop_path 0).
- Per-parameter clipping in ``after_backward`` sees true gradients under fp16 too: the engine
  unscales before calling the hook.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from ..config import (CROP_SCALE, EMA, JITTER, NONNEG, NONNEG_INT, POS_INT, POSITIVE, PROB,
                      ListOf, checked)
from ..distributed import all_reduce_mean
from ..errors import UserError
from ..schedules import cosine_momentum
from ..views import simclr_view, to_float
from .base import SSLMethod, StepInfo, register_method
from .ema import ema_update, frozen_copy

NUM_GLOBAL_CROPS = 2


# -- pure functions ---------------------------------------------------------------------------

def n_loss_terms(num_local_crops: int) -> int:
    """Number of (teacher global view, student view) pairs with the view differing: 2(2+L) − 2."""
    return NUM_GLOBAL_CROPS * (NUM_GLOBAL_CROPS + num_local_crops) - NUM_GLOBAL_CROPS


def teacher_temperature(epoch: int, warmup_temp: float, final_temp: float,
                        warmup_epochs: int) -> float:
    """τ_t at ``epoch``: ``linspace(warmup_temp, final_temp, warmup_epochs)[epoch]`` during the
    warm-up (both ends included, as the official schedule array), then ``final_temp``."""
    if epoch >= warmup_epochs:
        return final_temp
    if warmup_epochs == 1:  # linspace(a, b, 1) == [a]
        return warmup_temp
    return warmup_temp + (final_temp - warmup_temp) * epoch / (warmup_epochs - 1)


def dino_loss(student_out: Tensor, teacher_out: Tensor, center: Tensor, student_temp: float,
              teacher_temp: float) -> Tensor:
    """Cross-entropy between centred, sharpened teacher and student distributions (fp32).

    Crops are stacked view by view: ``student_out`` is ``[g1; g2; l1; …; lL]`` and
    ``teacher_out`` is ``[g1; g2]``, each block holding the same B images in the same order.

    Args:
        student_out: ((2 + L)·B, K) student logits.
        teacher_out: (2·B, K) raw teacher logits (global crops only).
        center: (1, K) the teacher centre *before* this step's update.

    Returns:
        The scalar ``Σ_{i ∈ globals} Σ_{v ≠ i} mean_b(−Σ_K P_t^i log P_s^v) / n_terms``.
    """
    batch = teacher_out.shape[0] // NUM_GLOBAL_CROPS
    assert teacher_out.shape[0] == NUM_GLOBAL_CROPS * batch, teacher_out.shape
    n_crops = student_out.shape[0] // batch
    assert student_out.shape[0] == n_crops * batch and n_crops >= NUM_GLOBAL_CROPS, \
        f"student {tuple(student_out.shape)} vs teacher {tuple(teacher_out.shape)}"
    log_p_s = F.log_softmax(student_out.float() / student_temp, dim=-1).chunk(n_crops)  # (B, K)
    # the target is a constant: no gradient may reach the teacher through it
    p_t = F.softmax((teacher_out.float().detach() - center) / teacher_temp, dim=-1)  # (2B, K)
    total = student_out.new_zeros((), dtype=torch.float32)
    for i, q in enumerate(p_t.chunk(NUM_GLOBAL_CROPS)):
        for v in range(n_crops):
            if v == i:  # the student never predicts the teacher's own view
                continue
            total = total + torch.sum(-q * log_p_s[v], dim=-1).mean()
    return total / n_loss_terms(n_crops - NUM_GLOBAL_CROPS)


@torch.no_grad()
def update_center(center: Tensor, teacher_out: Tensor, momentum: float) -> None:
    """``c ← m·c + (1 − m)·mean(teacher_out)``, in place, with the batch mean of the raw teacher
    logits of both global crops averaged over processes (equal local batches)."""
    batch_mean = all_reduce_mean(teacher_out.detach().float().mean(dim=0, keepdim=True))  # (1, K)
    center.mul_(momentum).add_(batch_mean, alpha=1.0 - momentum)


# -- head ---------------------------------------------------------------------------------------

class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight ``g · v / ‖v‖`` (one norm per output row), ``g`` = 1.

    Matches ``torch.nn.utils.weight_norm(nn.Linear(in, out, bias=False))`` with ``weight_g``
    filled with 1 afterwards (DINO); ``v`` keeps ``nn.Linear``'s default initialisation.
    """

    def __init__(self, in_dim: int, out_dim: int, freeze_norm: bool) -> None:
        super().__init__()
        v = torch.empty(out_dim, in_dim)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))  # nn.Linear's default
        self.weight_v = nn.Parameter(v)  # (K, bottleneck)
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not freeze_norm)

    @property
    def weight(self) -> Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """MLP ``d → hidden (→ hidden)* → bottleneck`` with GELU, L2 normalisation, then the
    weight-normalised prototype layer ``bottleneck → K``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, num_layers: int = 3, batch_norm: bool = False,
                 norm_last_layer: bool = True) -> None:
        super().__init__()
        if num_layers < 1:
            raise UserError(f"method.head_layers must be >= 1, got {num_layers}")
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(d, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            d = hidden_dim
        layers.append(nn.Linear(d, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # built after the init loop, as in the official head: the prototypes keep their own init
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, freeze_norm=norm_last_layer)

    def forward(self, h: Tensor) -> Tensor:
        z = F.normalize(self.mlp(h), dim=-1)  # (B, bottleneck), on the unit sphere
        return self.last_layer(z)  # (B, K)


def disable_drop_path(module: nn.Module) -> None:
    """Switch stochastic depth off in place (the official teacher has drop_path_rate 0)."""
    for m in module.modules():
        if isinstance(m, DropPath):
            m.drop_prob = 0.0


# -- method -------------------------------------------------------------------------------------

@register_method("dino")
class DINO(SSLMethod):
    """DINO: student/teacher self-distillation on multi-crop views, teacher = EMA of student."""

    families = ("resnet", "vit")
    paper = "Caron et al., ICCV 2021"

    @dataclass
    class Config:
        # K prototypes: solo-learn CIFAR; 65536 in the official ViT code
        out_dim: int = checked(POS_INT, 4096)
        head_hidden_dim: int = checked(POS_INT, 2048)
        head_bottleneck_dim: int = checked(POS_INT, 256)
        head_layers: int = checked(POS_INT, 3)
        head_batch_norm: bool = False  # off for ViTs (official default)
        norm_last_layer: bool = True  # freeze weight_g = 1 (official ViT-B; False for ViT-S)
        student_temp: float = checked(POSITIVE, 0.1)
        teacher_temp: float = checked(POSITIVE, 0.07)  # > 0.07 is unstable (official help)
        warmup_teacher_temp: float = checked(POSITIVE, 0.04)
        # official "boost" (solo-learn CIFAR now: 0)
        warmup_teacher_temp_epochs: int = checked(NONNEG_INT, 30)
        center_momentum: float = checked(EMA, 0.9)
        # cosine to momentum_teacher_final, per step
        momentum_teacher: float = checked(EMA, 0.996)
        momentum_teacher_final: float = checked(EMA, 1.0)
        # epochs during which the prototypes get no update
        freeze_last_layer: int = checked(NONNEG_INT, 1)
        # per-parameter grad-norm clip; null / 0 disables
        clip_grad: Optional[float] = checked(NONNEG.or_null("for no clipping"), 3.0)
        num_local_crops: int = checked(NONNEG_INT, 8)
        # None: (0.4, 1), or (0.14, 1) if L = 0
        global_crop_scale: Optional[list[float]] = checked(CROP_SCALE.or_null("for the default"),
                                                           None)
        local_crop_scale: list[float] = checked(CROP_SCALE, factory=lambda: [0.05, 0.4])
        # None: 96 at >= 224 px, else image_size // 2
        local_crop_size: Optional[int] = checked(POS_INT.or_null("for the default"), None)
        jitter: list[float] = checked(JITTER, factory=lambda: [0.4, 0.4, 0.2, 0.1])
        color_p: float = checked(PROB, 0.8)
        gray_p: float = checked(PROB, 0.2)
        # not in the paper: per-view colour inversion (augment.simclr_view)
        invert_p: float = checked(PROB, 0.0)
        flip_p: float = checked(PROB, 0.5)
        # one per global crop; 224 px: [1, 0.1]
        global_blur_p: list[float] = checked(ListOf(PROB, length=2), factory=lambda: [0.0, 0.0])
        local_blur_p: float = checked(PROB, 0.0)  # 224 px: 0.5
        solarize_p: float = checked(PROB, 0.2)  # second global crop only

    def __init__(self, backbone, cfg, data) -> None:
        super().__init__(backbone, cfg, data)
        self._check_config(backbone, cfg, data.image_size)
        self.head = DINOHead(backbone.num_features, cfg.out_dim, cfg.head_hidden_dim,
                             cfg.head_bottleneck_dim, cfg.head_layers, cfg.head_batch_norm,
                             cfg.norm_last_layer)
        # the teacher mirrors the student module-for-module so that ema_update pairs by name
        self.teacher = frozen_copy(nn.ModuleDict({"backbone": self.backbone, "head": self.head}))
        disable_drop_path(self.teacher)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))  # (1, K), checkpointed
        self.teacher_temp = teacher_temperature(0, cfg.warmup_teacher_temp, cfg.teacher_temp,
                                                cfg.warmup_teacher_temp_epochs)
        self._build_augmentations(data.image_size)

    # -- construction helpers -------------------------------------------------------------------
    @staticmethod
    def local_size(cfg, image_size: int) -> int:
        if cfg.local_crop_size:
            return int(cfg.local_crop_size)
        return 96 if image_size >= 224 else image_size // 2

    @classmethod
    def _check_config(cls, backbone, cfg, image_size: int) -> None:
        if cfg.num_local_crops < 0:
            raise UserError(f"method.num_local_crops must be >= 0, got {cfg.num_local_crops}")
        if len(cfg.global_blur_p) != NUM_GLOBAL_CROPS:
            raise UserError(f"method.global_blur_p needs one probability per global crop "
                            f"(2), got {list(cfg.global_blur_p)}")
        patch = backbone.patch_size
        if backbone.family == "vit" and patch and cfg.num_local_crops > 0:
            size = cls.local_size(cfg, image_size)
            if size % patch:
                raise UserError(f"DINO local crops of {size} px are not divisible by the ViT "
                                f"patch size {patch}; set method.local_crop_size to a multiple "
                                f"of {patch} (e.g. {max(patch, size // patch * patch)})")

    def _build_augmentations(self, image_size: int) -> None:
        cfg = self.cfg
        scale = cfg.global_crop_scale or ([0.4, 1.0] if cfg.num_local_crops > 0 else [0.14, 1.0])
        common = dict(jitter=tuple(cfg.jitter), color_p=cfg.color_p, gray_p=cfg.gray_p,
                      flip_p=cfg.flip_p, invert_p=cfg.invert_p)
        self.global_augs = nn.ModuleList([
            simclr_view(image_size, scale, blur_p=cfg.global_blur_p[0], **common),
            simclr_view(image_size, scale, blur_p=cfg.global_blur_p[1],
                        solarize_p=cfg.solarize_p, **common),
        ])
        self.local_aug = simclr_view(self.local_size(cfg, image_size), cfg.local_crop_scale,
                                     blur_p=cfg.local_blur_p, **common)

    # -- the contract ---------------------------------------------------------------------------
    @torch.no_grad()
    def make_views(self, images: Tensor) -> list[Tensor]:
        """``[globals (2B, 3, S, S), locals (L·B, 3, s, s)]`` (locals omitted when L = 0), each
        stacked view by view (``[g1; g2]``, ``[l1; …; lL]``) so that ``chunk`` splits views."""
        x = to_float(images)
        globals_ = torch.cat([aug(x) for aug in self.global_augs])  # (2B, 3, S, S)
        views = [self.normalize(globals_)]
        if self.cfg.num_local_crops > 0:
            # one batched call; x.repeat stacks whole copies of the batch, i.e. view-major
            locals_ = self.local_aug(x.repeat(self.cfg.num_local_crops, 1, 1, 1))  # (LB, 3, s, s)
            views.append(self.normalize(locals_))
        return views

    def student(self, views: Sequence[Tensor]) -> Tensor:
        """((2 + L)·B, K) student logits: one pass per resolution (ViTs interpolate pos-embeds)."""
        return torch.cat([self.head(self.backbone(v)) for v in views])

    @torch.no_grad()
    def teacher_logits(self, global_views: Tensor) -> Tensor:
        """(2B, K) raw teacher logits of the global crops only."""
        return self.teacher["head"](self.teacher["backbone"](global_views))

    def forward(self, views: list[Tensor], step: StepInfo) -> dict[str, Tensor]:
        s_out = self.student(views).float()  # ((2 + L)B, K)
        t_out = self.teacher_logits(views[0]).float()  # (2B, K)
        loss = dino_loss(s_out, t_out, self.center, self.cfg.student_temp, self.teacher_temp)
        with torch.no_grad():  # entropy of P_t: collapse shows as 0 (one-hot) or ln K (uniform)
            p_t = F.softmax((t_out - self.center) / self.teacher_temp, dim=-1)
            entropy = -(p_t * torch.log(p_t.clamp_min(1e-30))).sum(-1).mean()
        # after the loss: this step's targets were centred with the previous centre
        update_center(self.center, t_out, self.cfg.center_momentum)
        return {"loss": loss, "teacher_entropy": entropy,
                "teacher_temp": loss.new_tensor(self.teacher_temp)}

    def before_step(self, step: StepInfo) -> None:
        self.teacher_temp = teacher_temperature(step.epoch, self.cfg.warmup_teacher_temp,
                                                self.cfg.teacher_temp,
                                                self.cfg.warmup_teacher_temp_epochs)

    def after_backward(self, step: StepInfo) -> None:
        if step.epoch < self.cfg.freeze_last_layer:
            # prototypes stay fixed in the first epoch(s): stabilises the start (official)
            for p in self.head.last_layer.parameters():
                p.grad = None
        if self.cfg.clip_grad:
            clip_per_parameter(self.parameters(), self.cfg.clip_grad)

    def teacher_momentum(self, step: StepInfo) -> float:
        return cosine_momentum(step.step, step.total_steps, self.cfg.momentum_teacher,
                               self.cfg.momentum_teacher_final)

    def after_step(self, step: StepInfo) -> None:
        student = nn.ModuleDict({"backbone": self.backbone, "head": self.head})
        ema_update(self.teacher, student, self.teacher_momentum(step))

    def eval_backbone(self):
        return self.teacher["backbone"]


@torch.no_grad()
def clip_per_parameter(params, max_norm: float) -> None:
    """Scale each gradient separately so that its own L2 norm is at most ``max_norm`` (official
    DINO: coefficient ``max_norm / (‖g‖ + 1e-6)``, applied only when below 1)."""
    for p in params:
        if p.grad is None:
            continue
        coef = max_norm / (p.grad.norm(2) + 1e-6)
        p.grad.mul_(coef.clamp(max=1.0))  # no host sync; a factor of exactly 1 is a no-op
