"""Optimisers: SGD, AdamW and LARS (the MoCo v3 / MAE / DINO version).

LARS: You, Gitman, Ginsburg, arXiv:1708.03888; the variant and the weight-decay exclusions are
described in docs/methods.md#optimisers-and-schedules.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .errors import UserError, did_you_mean
from .registry import publish

OPTIMIZERS = ("sgd", "adamw", "lars")
publish("optimizer", lambda: OPTIMIZERS)  # config checks optim.name against these


class LARS(torch.optim.Optimizer):
    """LARS: for params with ndim > 1, ``g += wd*w``; ``g *= q`` with the trust ratio
    ``q = eta*||w||/||g||``; heavy-ball momentum. 1-D params (biases, norms) get neither weight
    decay nor adaptation.

    ``clip_lr`` (LARC's clipping, solo-learn's ``clip_lr``): ``q = min(q / lr, 1)``, so a layer's
    effective rate ``lr * q`` becomes ``min(eta*||w||/||g||, lr)``, never above the global lr.
    solo-learn divides by ``||g|| + wd*||w||`` where this (MoCo v3 / DINO) form divides by the
    norm of the decayed gradient ``||g + wd*w||``; the two agree without weight decay."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001, clip_lr: bool = False) -> None:
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                        trust_coefficient=trust_coefficient, clip_lr=clip_lr)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                dp: Tensor = p.grad
                if p.ndim > 1:
                    dp = dp.add(p, alpha=g["weight_decay"])
                    pn, un = torch.norm(p), torch.norm(dp)
                    q = torch.where((pn > 0) & (un > 0), g["trust_coefficient"] * pn / un,
                                    torch.ones_like(pn))
                    if g["clip_lr"] and g["lr"] > 0:
                        q = torch.clamp(q / g["lr"], max=1.0)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
        return loss


def create_optimizer(param_groups: list[dict[str, Any]], cfg: Any,
                     fused: bool = False) -> torch.optim.Optimizer:
    """``fused``: SGD and AdamW update every parameter in one fused kernel (CUDA) instead of
    a loop over parameters."""
    if cfg.name == "sgd":
        return torch.optim.SGD(param_groups, lr=0.0, momentum=cfg.momentum, fused=fused or None)
    if cfg.name == "adamw":
        return torch.optim.AdamW(param_groups, lr=0.0, betas=tuple(cfg.betas),
                                 fused=fused or None)
    if cfg.name == "lars":
        return LARS(param_groups, lr=0.0, momentum=cfg.momentum,
                    trust_coefficient=cfg.trust_coefficient, clip_lr=cfg.clip_lr)
    raise UserError(f"unknown optimizer optim.name='{cfg.name}'{did_you_mean(cfg.name, OPTIMIZERS)}")
