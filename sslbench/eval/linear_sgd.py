"""Linear probe with SGD on frozen features, BatchNorm without affine before the linear layer.

docs/methods.md#linear-probe, variant 2 (MAE's linear probe:
``BatchNorm1d(d, affine=False, eps=1e-6) -> Linear``, head weight trunc_normal(std 0.01), zero
bias, wd 0, warmup + cosine to 0), adapted for the CPU-sized embedded benchmark:

- **No augmentation.** The probe trains on the cached, un-augmented frozen features (the same
  ``features/`` cache as the L-BFGS probe and k-NN, extracted with the backbone in ``eval()``
  mode under ``no_grad``), full 32 px images; MAE trains on RandomResizedCrop + flip views. On
  pre-extracted features every epoch costs milliseconds, so the lr grid is affordable.
- **Plain SGD** (momentum 0.9) instead of LARS at B = 16384: with the BN whitening the feature
  scale is normalised away, which is what LARS' trust ratio buys at huge batch; at B = 256 plain
  SGD is the simpler equivalent. lr is absolute (not scaled by batch size).
- **lr chosen on the validation split** from ``eval.linear_sgd.lr_grid`` (MAE fixes blr = 0.1);
  the chosen lr is then refitted on train + validation when ``refit_on_train_and_val`` (the same
  rule as the L-BFGS probe). ``val_acc`` is the chosen lr's accuracy on validation when the fit
  excluded it.

The BN running statistics are the probe's own (they whiten the features); the backbone is not
involved at all here, so it stays bit-identical. The probe is deterministic given the seed and
the features (seeded head init and batch order).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schedules import cosine_with_warmup
from .protocol import EvalContext, Result, register_protocol
from .scoring import score


def bn_linear_head(dim: int, num_classes: int, generator: torch.Generator) -> nn.Sequential:
    head = nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), nn.Linear(dim, num_classes))
    nn.init.trunc_normal_(head[1].weight, std=0.01, generator=generator)
    nn.init.zeros_(head[1].bias)
    return head


def fit_bn_linear(x: Tensor, y: Tensor, num_classes: int, lr: float, epochs: int,
                  batch_size: int, momentum: float = 0.9, weight_decay: float = 0.0,
                  warmup_fraction: float = 0.1, seed: int = 0) -> nn.Sequential:
    """Train ``BN(affine=False) -> Linear`` on ``(x, y)`` (same device) with SGD + cosine."""
    g = torch.Generator().manual_seed(seed)
    head = bn_linear_head(x.shape[1], num_classes, g).to(x.device)
    n = x.shape[0]
    bs = max(2, min(batch_size, n))  # BN in train mode needs >= 2 samples per batch
    spe = max(1, n // bs)  # drop the ragged last batch (BN on 1 sample is undefined)
    total = max(1, epochs * spe)
    warmup = int(round(warmup_fraction * total))
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    head.train()
    perm = torch.arange(n)
    with torch.enable_grad():
        for step in range(total):
            b = step % spe
            if b == 0:
                perm = torch.randperm(n, generator=g)
            idx = perm[b * bs:(b + 1) * bs].to(x.device)
            for group in opt.param_groups:
                group["lr"] = cosine_with_warmup(step, total, warmup, lr, 0.0)
            loss = F.cross_entropy(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    head.eval()
    return head


@torch.no_grad()
def _accuracy(head: nn.Module, x: Tensor, y: Tensor) -> float:
    head.eval()
    return float((head(x).argmax(1) == y).float().mean())


def run_linear_sgd(feats: dict[str, tuple[Tensor, Tensor]], num_classes: int, cfg: Any,
                   seed: int = 0, device: Optional[torch.device] = None,
                   predictions: Optional[dict[str, Tensor]] = None
                   ) -> tuple[dict[str, float], dict]:
    """Choose lr on ``feats["val"]`` (refit on train + val if asked), report every other split.

    ``cfg`` is an ``EvalConfig.linear_sgd`` (``lr_grid``, ``epochs``, ``batch_size``,
    ``momentum``, ``weight_decay``, ``warmup_fraction``, ``refit_on_train_and_val``).
    """
    dev = device or torch.device("cpu")
    f = {k: (x.to(dev, torch.float32), y.to(dev)) for k, (x, y) in feats.items()}
    (xtr, ytr), (xva, yva) = f["train"], f["val"]

    def fit(x: Tensor, y: Tensor, lr: float) -> nn.Sequential:
        return fit_bn_linear(x, y, num_classes, lr, int(cfg.epochs), int(cfg.batch_size),
                             float(cfg.momentum), float(cfg.weight_decay),
                             float(cfg.warmup_fraction), seed)

    val_acc: dict[float, float] = {}
    for lr in sorted(float(v) for v in cfg.lr_grid):
        val_acc[lr] = _accuracy(fit(xtr, ytr, lr), xva, yva)
    best = max(sorted(val_acc), key=lambda lr: (val_acc[lr], -lr))  # ties -> smaller lr
    refit = bool(cfg.refit_on_train_and_val)
    head = fit(torch.cat([xtr, xva]), torch.cat([ytr, yva]), best) if refit else fit(xtr, ytr, best)
    metrics = {"val_acc": val_acc[best]}
    for split, (x, y) in f.items():
        if split in ("train", "val"):
            continue
        head.eval()
        score(metrics, split, head(x).argmax(1), y, predictions)
    settings = {
        "solver": "sgd+bn", "head": "BatchNorm1d(affine=False, eps=1e-6) -> Linear",
        "augmentation": "none (cached frozen features)", "optimizer": "sgd",
        "momentum": float(cfg.momentum), "weight_decay": float(cfg.weight_decay),
        "epochs": int(cfg.epochs), "batch_size": int(cfg.batch_size),
        "schedule": "linear warmup + cosine to 0", "warmup_fraction": float(cfg.warmup_fraction),
        "lr_grid": sorted(float(v) for v in cfg.lr_grid), "refit_on_train_and_val": refit,
        "chosen_lr": best, "chosen_val_acc_by_lr": {f"{lr:g}": a for lr, a in val_acc.items()},
    }
    return metrics, settings


@register_protocol("linear_sgd", frozen_features=True, order=30)
def linear_sgd(ctx: EvalContext) -> Result:
    """The BN + linear SGD probe on the fit split's frozen features, lr chosen on validation."""
    metrics, settings = run_linear_sgd(ctx.features(), ctx.num_classes, ctx.cfg.eval.linear_sgd,
                                       int(ctx.eval_seed), ctx.device, ctx.predictions)
    settings["val_split"] = ctx.val_split
    return metrics, settings
