"""EMA teachers / momentum encoders (MoCo, MoCo v3, DINO).

Update and momentum schedule: docs/methods.md#optimisers-and-schedules.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with ``requires_grad=False`` everywhere: the teacher / key encoder."""
    teacher = copy.deepcopy(module)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``θ_t ← m·θ_t + (1 − m)·θ_s`` over parameters only (BN buffers keep their own running
    statistics, as in the official MoCo / DINO code). Parameters are zipped by name, so a
    DDP-wrapped or reordered student cannot silently pair the wrong tensors."""
    s_params = dict(student.named_parameters())
    for name, t in teacher.named_parameters():
        t.mul_(momentum).add_(s_params[name].detach(), alpha=1.0 - momentum)
