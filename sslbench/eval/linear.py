"""Linear probe on frozen features: L-BFGS multinomial logistic regression.

docs/methods.md#linear-probe, variant 3.

SimCLR's transfer protocol: L2-regularised multinomial logistic regression fitted with L-BFGS on
pre-extracted features (no augmentation), the regularisation chosen on a held-out validation split
carved from the training data (never the test set), then refitted on train + validation with the
chosen value. ``C`` follows scikit-learn's convention (objective ``0.5‖W‖² + C Σ CE``), features
are standardised per dimension with training statistics, and the fit runs full-batch on the
features' device (GPU when present).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .protocol import EvalContext, Result, register_protocol


def fit_logreg(x: Tensor, y: Tensor, num_classes: int, c: float, max_iter: int,
               init: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
    """Minimise ``mean CE + ‖W‖² / (2 C n)`` (= sklearn's objective / (C n)); bias unpenalised."""
    n, d = x.shape
    w = torch.zeros(num_classes, d, dtype=x.dtype, device=x.device)
    b = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    if init is not None:
        w.copy_(init[0])
        b.copy_(init[1])
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6,
                            tolerance_change=1e-9, history_size=20, line_search_fn="strong_wolfe")
    reg = 1.0 / (2.0 * c * n)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + reg * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def _standardise(train: Tensor) -> tuple[Tensor, Tensor]:
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)
    return mean, std


def accuracy(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> float:
    return float(((x @ w.T + b).argmax(1) == y).float().mean())


def unstandardise(w: Tensor, b: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """The head on standardised features as a head on raw features: ``W' = W / σ``,
    ``b' = b − W'·μ``, so ``x W'ᵀ + b' == ((x − μ) / σ) Wᵀ + b`` (LP-FT head init,
    docs/methods.md#lp-ft)."""
    w2 = w / std.reshape(1, -1)
    return w2, b - w2 @ mean.reshape(-1)


def run_linear(feats: dict[str, tuple[Tensor, Tensor]], num_classes: int, c_grid: Sequence[float],
               max_iter: int, refit: bool = True,
               device: Optional[torch.device] = None, return_head: bool = False):
    """Choose C on ``feats["val"]``, refit, report accuracy on every other split.

    ``feats`` maps split -> (features, labels) and must hold "train" and "val". Returns
    ``(metrics, settings)``, plus the final head on un-standardised features ``(W', b')`` (see
    :func:`unstandardise`) when ``return_head``.
    """
    dev = device or torch.device("cpu")
    f = {k: (x.to(dev, torch.float32), y.to(dev)) for k, (x, y) in feats.items()}
    (xtr, ytr), (xva, yva) = f["train"], f["val"]
    mean, std = _standardise(xtr)
    xtr_s, xva_s = (xtr - mean) / std, (xva - mean) / std
    val_acc: dict[float, float] = {}
    init = None
    for c in sorted(c_grid):  # strongest regularisation first, warm-started along the path
        w, b = fit_logreg(xtr_s, ytr, num_classes, c, max_iter, init)
        init = (w, b)
        val_acc[c] = accuracy(w, b, xva_s, yva)
    best_c = max(sorted(val_acc), key=lambda c: (val_acc[c], -c))  # ties -> stronger reg.
    if refit:
        xfit, yfit = torch.cat([xtr, xva]), torch.cat([ytr, yva])
        mean, std = _standardise(xfit)
        w, b = fit_logreg((xfit - mean) / std, yfit, num_classes, best_c, max_iter)
    else:
        w, b = fit_logreg(xtr_s, ytr, num_classes, best_c, max_iter)
    metrics = {"val_acc": val_acc[best_c]}
    for split, (x, y) in f.items():
        if split in ("train", "val"):
            continue
        metrics["acc" if split == "test" else f"{split}_acc"] = accuracy(w, b, (x - mean) / std, y)
    settings = {"solver": "lbfgs", "standardise": "per-dimension (train stats)",
                "c_grid": [float(c) for c in sorted(c_grid)], "chosen_C": float(best_c),
                "max_iter": max_iter, "refit_on_train_and_val": refit,
                "chosen_val_acc_by_C": {f"{c:g}": a for c, a in val_acc.items()}}
    if return_head:
        return metrics, settings, unstandardise(w, b, mean, std)
    return metrics, settings


@register_protocol("linear", frozen_features=True, order=10)
def linear(ctx: EvalContext) -> Result:
    """The L-BFGS probe on the fit split's frozen features, C chosen on the validation split."""
    c = ctx.cfg.eval.linear
    metrics, settings = run_linear(ctx.features(), ctx.num_classes, c.c_grid, c.max_iter,
                                   c.refit_on_train_and_val, ctx.device)
    settings["val_split"] = ctx.val_split
    return metrics, settings


def carve_validation(labels: Tensor, groups: Optional[Tensor], fraction: float,
                     seed: int) -> tuple[Tensor, Tensor]:
    """Split training indices into (train, val). When ``groups`` is given (e.g. the source glyph
    of each render) whole groups go to one side, so validation never sees a training group."""
    g = torch.Generator().manual_seed(seed)
    n = labels.numel()
    if groups is None:
        perm = torch.randperm(n, generator=g)
        n_val = max(1, round(fraction * n))
        return perm[n_val:].sort().values, perm[:n_val].sort().values
    uniq = groups.unique()
    perm = uniq[torch.randperm(uniq.numel(), generator=g)]
    n_val = max(1, round(fraction * uniq.numel()))
    is_val = torch.isin(groups, perm[:n_val])
    return (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)
