"""Greedy local contrastive learning: GIM-style isolated stages and LoCo overlapping blocks
(docs/methods.md#gim, #loco).

[0] Löwe, O'Connor, Veeling. Putting An End to End-to-End: Gradient-Isolated Learning of
    Representations (Greedy InfoMax). NeurIPS 2019. https://arxiv.org/abs/1905.11786
    Official code: https://github.com/loeweX/Greedy_InfoMax
[1] Xiong, Ren, Urtasun. LoCo: Local Contrastive Representation Learning. NeurIPS 2020.
    https://arxiv.org/abs/2008.01342 (no official code found; docs/methods.md#loco and
    #open-questions)

The timm backbone is cut into ``num_stages`` consecutive stages S_1..S_S that ARE the timm
model's own modules, run in timm's ``forward_features`` order, so the backbone evaluated later
(``eval_backbone()`` = ``self.backbone``) is exactly the trained one:

- ResNet: the residual stages ``layer1..layer4`` split into ``num_stages`` contiguous groups (4:
  one stage each), the stem (``conv1, bn1, act1, maxpool``) attached to S_1.
- ViT: the blocks split into ``num_stages`` contiguous groups, patch embedding + position
  embedding (+ cls/reg tokens, ``patch_drop``, ``norm_pre``) attached to S_1 and the final
  ``norm`` to S_S. When the depth is not a multiple of ``num_stages`` the groups are as equal
  as possible, larger ones first (``test_vit``: 6 blocks / 4 stages = 2, 2, 1, 1).

Every stage output is globally pooled and fed to that loss's OWN SimCLR projection head; the
objective on the two views' projections is a pluggable ``(z1, z2) -> loss`` (``objective``,
only ``"nt_xent"`` = SimCLR's loss with gathered negatives for now). The total loss is the sum of
the local losses; all stages train simultaneously, isolated from each other by ``detach``.

- ``overlap: false`` (GIM on SimCLR, the LoCo paper's baseline): ``h_i = S_i(sg(h_{i-1}))``,
  ``L_i = obj(head_i(pool(h_i)))``; only S_i and head_i receive gradient from L_i.
- ``overlap: true`` (LoCo as described in docs/methods.md#loco, [ours]/[paper?]: not checked
  against the paper): local block i is (S_i, S_{i+1});
  ``L_i = obj(head_i(pool(S_{i+1}(h_i))))`` with ``h_i = S_i(sg(h_{i-1}))``, so L_i trains S_i
  and S_{i+1}, and the next block starts from ``S_{i+1}(sg(h_i))``. The last stage gets a plain
  local loss. Each middle stage thus receives gradient from two losses (as "decoder" of L_i
  and as the bottom of L_{i+1}).
  The shared stage S_{i+1} is RUN TWICE per step (once as decoder on ``h_i``, once on
  ``sg(h_i)``): every stage but the first runs twice per step. The decoder pass normalises
  with batch statistics exactly like the main pass but does NOT update BatchNorm running
  statistics (nor ``num_batches_tracked``), so every BN buffer is updated once per step, by the
  same forward the evaluated backbone performs. Stochastic layers (dropout, drop-path) draw
  independent masks in the two passes.

Pooling fed to the heads: the last stage uses the backbone's own head
(``forward_head(pre_logits=True)``), i.e. exactly ``backbone(x)``, the evaluated feature.
Intermediate ResNet stages: global average pool of the map. Intermediate ViT stages: the token
the backbone itself reads out — the cls token for ``global_pool="token"`` (timm's default),
otherwise the mean of the patch tokens (never the final ``norm``/``fc_norm``/``attn_pool``, which
belong to the last stage and must not receive gradient from other stages).

Deviations from GIM proper (docs/methods.md#gim) [ours]: the objective is SimCLR's NT-Xent on
globally pooled features of two augmented views (the "GIM on SimCLR" baseline of the LoCo paper,
docs/methods.md#loco), not GIM's CPC/InfoNCE over a 7×7 grid of overlapping patches with a
BN-free pre-activation ResNet; the timm backbones keep their BatchNorm (statistics are per stage
anyway, and no patches are folded into the batch, so GIM pitfall 4 does not arise). Evaluation
reads the last stage only (the ``eval_backbone`` contract has no per-stage probes; GIM pitfall
5).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..backbones import Backbone
from ..config import POS_INT, OneOf, checked
from ..errors import UserError, did_you_mean
from .base import DataSpec, SSLMethod, StepInfo, register_method
from .simclr import (ProjectionConfig, TwoViewConfig, nt_xent_loss, projection_head,
                     two_view_augment, two_views)

LossFn = Callable[[Tensor, Tensor], Tensor]

# Objectives on the two views' projections, ``(z1, z2) -> scalar``, built from the method Config.
# Any contrastive loss with this signature can be plugged in here; the stage logic is agnostic.
OBJECTIVES: dict[str, Callable[[Any], LossFn]] = {
    "nt_xent": lambda cfg: functools.partial(nt_xent_loss, temperature=cfg.temperature),
}

_VIT_STEM = ("patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre")
_VIT_TOP = ("norm", "fc_norm", "attn_pool", "head")
_RESNET_STEM = ("conv1", "bn1")
_RESNET_TOP = ("fc",)  # Identity when num_classes=0; listed so a real classifier is owned too


def split_evenly(n_units: int, n_groups: int) -> list[list[int]]:
    """Contiguous groups of ``range(n_units)`` with sizes differing by at most 1, larger first."""
    q, r = divmod(n_units, n_groups)
    groups, start = [], 0
    for g in range(n_groups):
        size = q + (1 if g < r else 0)
        groups.append(list(range(start, start + size)))
        start += size
    return groups


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm layers of ``module`` normalise with batch statistics (in train mode) but leave
    their running statistics and ``num_batches_tracked`` untouched.

    With ``track_running_stats=False`` in train mode torch passes no running buffers to
    ``F.batch_norm`` (plain and SyncBatchNorm alike), so the output is identical to a normal
    train-mode forward and nothing is written.
    """
    bn_types = nn.modules.batchnorm._BatchNorm  # noqa: SLF001 - base of BatchNorm*d and SyncBN
    bns = [m for m in module.modules() if isinstance(m, bn_types) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


@register_method("greedy")
class GreedyLocal(SSLMethod):
    """Stage-wise local SimCLR: GIM-style gradient-isolated stages, or LoCo overlapping blocks."""

    families = ("resnet", "vit")
    paper = "Löwe et al., NeurIPS 2019 (GIM); Xiong et al., NeurIPS 2020 (LoCo)"

    @dataclass
    class Config(TwoViewConfig, ProjectionConfig):
        """SimCLR's pieces (its head and loss settings, its two views; same defaults), plus the
        fields below. ``proj_hidden_dim: None`` means each head's own input width."""

        num_stages: int = checked(POS_INT, 4)  # ResNet: groups of layer1..4 (<= 4); ViT: blocks
        overlap: bool = False  # False: GIM-style isolated stages; True: LoCo blocks (S_i, S_i+1)
        # key of OBJECTIVES: (z1, z2) -> loss on each stage's head
        objective: str = checked(OneOf(lambda: OBJECTIVES), "nt_xent")
        # BatchNorm statistics per view (each view through stages and heads on its own, as
        # SimCLR's default) or over both views in one pass (GIM/LoCo code; the default). Paired
        # over 8 seeds on the embedded ResNet, per view: linear +0.7 [-0.7, +2.1] (a tie), k-NN
        # +1.3 [+0.5, +2.2] (docs/findings.md#simclr-pipeline-ablation, last table)
        bn_per_view: bool = False

    def __init__(self, backbone: Backbone, cfg: Any, data: DataSpec) -> None:
        super().__init__(backbone, cfg, data)
        self.check_backbone(backbone)
        model = backbone.model
        n_units = 4 if backbone.family == "resnet" else len(model.blocks)
        unit = "residual stages" if backbone.family == "resnet" else "blocks"
        if not 1 <= cfg.num_stages <= n_units:
            raise UserError(f"method.num_stages={cfg.num_stages} does not fit '{backbone.name}' "
                            f"({n_units} {unit}); use 1..{n_units}")
        if cfg.objective not in OBJECTIVES:
            raise UserError(f"unknown method.objective '{cfg.objective}'"
                            f"{did_you_mean(cfg.objective, list(OBJECTIVES))}; "
                            f"use one of: {', '.join(OBJECTIVES)}")
        self.num_stages: int = cfg.num_stages
        self.groups: list[list[int]] = split_evenly(n_units, cfg.num_stages)  # unit ids per stage
        self.objective: LossFn = OBJECTIVES[cfg.objective](cfg)
        # fail at construction, not mid-run, if a timm variant has parameters we cannot place
        for name, _ in model.named_parameters():
            self.stage_of(name)

        # one SimCLR projection head per local loss, never shared
        self.heads = nn.ModuleList([projection_head(self.stage_dim(self.head_input_stage(i)), cfg)
                                    for i in range(self.num_stages)])
        self.augment = two_view_augment(data.image_size, cfg)  # SimCLR's views

    def make_views(self, images: Tensor) -> list[Tensor]:
        return two_views(images, self.augment, self.normalize)

    # -- stage structure --------------------------------------------------------------------------
    def head_input_stage(self, i: int) -> int:
        """Index of the stage whose pooled output feeds head/loss ``i`` (LoCo: one above)."""
        return i + 1 if self.cfg.overlap and i < self.num_stages - 1 else i

    def stage_of(self, name: str) -> int:
        """Stage (0-based) owning the timm parameter ``name`` (relative to ``backbone.model``)."""
        parts = name.split(".")
        last = self.num_stages - 1
        if self.backbone.family == "resnet":
            if parts[0] in _RESNET_STEM:
                return 0
            if parts[0].startswith("layer") and parts[0][5:].isdigit():
                return self._group_of(int(parts[0][5:]) - 1)
            if parts[0] in _RESNET_TOP:
                return last
        else:
            if parts[0] in _VIT_STEM:
                return 0
            if parts[0] == "blocks":
                return self._group_of(int(parts[1]))
            if parts[0] in _VIT_TOP:
                return last
        raise UserError(f"method 'greedy' cannot assign parameter '{name}' of backbone "
                        f"'{self.backbone.name}' to a stage; this timm variant is not supported")

    def _group_of(self, unit: int) -> int:
        return next(g for g, units in enumerate(self.groups) if unit in units)

    def stage_parameters(self, i: int) -> list[tuple[str, nn.Parameter]]:
        """Named backbone parameters of stage ``i`` (0-based; names relative to the timm model)."""
        return [(n, p) for n, p in self.backbone.model.named_parameters() if self.stage_of(n) == i]

    def stage_dim(self, i: int) -> int:
        """Width of the pooled output of stage ``i``."""
        model = self.backbone.model
        if i == self.num_stages - 1:
            return self.backbone.num_features
        if self.backbone.family == "resnet":
            layer = f"layer{self.groups[i][-1] + 1}"
            return next(f["num_chs"] for f in model.feature_info if f["module"] == layer)
        return model.embed_dim

    def stage_forward(self, i: int, x: Tensor) -> Tensor:
        """Stage ``i`` of ``backbone.model.forward_features``, with the timm modules in its order.

        Modules are looked up on every call (not cached) so a later module swap such as
        ``convert_sync_batchnorm`` is honoured. No detach here: the callers place it. timm's
        ``grad_checkpointing`` flag is not honoured (stages are short; memory is per stage).

        Args:
            x: stage 0: images (B, 3, H, W); later: the previous stage's output.
        Returns:
            ResNet: (B, C_i, H_i, W_i) maps; ViT: (B, prefix + L, D) tokens.
        """
        m = self.backbone.model
        if self.backbone.family == "resnet":
            if i == 0:
                x = m.maxpool(m.act1(m.bn1(m.conv1(x))))
            for k in self.groups[i]:
                x = getattr(m, f"layer{k + 1}")(x)
            return x
        if i == 0:
            x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))  # noqa: SLF001
        for k in self.groups[i]:
            x = m.blocks[k](x)
        if i == self.num_stages - 1:
            x = m.norm(x)
        return x

    def pool(self, i: int, h: Tensor) -> Tensor:
        """Global pooling of stage ``i``'s output -> (B, stage_dim(i)).

        The last stage uses the backbone's own head, so its feature IS ``backbone(x)``.
        """
        m = self.backbone.model
        if i == self.num_stages - 1:
            return m.forward_head(h, pre_logits=True)
        if self.backbone.family == "resnet":
            return h.mean(dim=(2, 3))  # (B, C, H, W) -> (B, C)
        if m.global_pool == "token":  # read the token the backbone reads out
            return h[:, 0]
        return h[:, m.num_prefix_tokens:].mean(dim=1)  # (B, prefix + L, D) -> (B, D)

    # -- training -----------------------------------------------------------------------------
    def stage_losses(self, views: list[Tensor]) -> list[Tensor]:
        """The local losses ``[L_1, ..., L_S]`` (each a scalar, each with its own graph slice).

        Args:
            views: two (n, 3, H, W) batches, the two views of the same n images.
        """
        # passes: each view on its own (bn_per_view) or both in one (2n, 3, H, W) batch, whose
        # BatchNorm statistics then mix the two views of every image
        hs = list(views) if self.cfg.bn_per_view else [torch.cat(views)]
        last = self.num_stages - 1
        losses: list[Tensor] = []
        for i in range(self.num_stages):
            zs = []
            for k, h in enumerate(hs):
                # stop-gradient at the input of every stage: no loss reaches below S_i through h
                h = hs[k] = self.stage_forward(i, h.detach())
                if self.cfg.overlap and i < last:
                    # LoCo decoder pass: S_{i+1} on the NON-detached h_i, so L_i trains S_i and
                    # S_{i+1}. BN running stats are left to the main pass of S_{i+1} (next step).
                    with frozen_bn_stats(self.backbone):
                        feat = self.pool(i + 1, self.stage_forward(i + 1, h))
                else:
                    feat = self.pool(i, h)
                zs.append(self.heads[i](feat))  # (n, proj_dim) per view, or (2n, proj_dim)
            z1, z2 = zs if len(zs) == 2 else zs[0].chunk(2)
            losses.append(self.objective(z1, z2))
        return losses

    def forward(self, views: list[Tensor], step: StepInfo) -> dict[str, Tensor]:
        losses = self.stage_losses(views)
        out = {"loss": torch.stack(losses).sum()}
        for i, loss in enumerate(losses):
            out[f"loss_stage{i + 1}"] = loss.detach()
        return out
