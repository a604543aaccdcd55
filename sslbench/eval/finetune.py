"""Full fine-tuning (MAE recipe, docs/methods.md#fine-tuning), also LP-FT's second stage.

[0] He, Chen, Xie, Li, Dollár, Girshick. Masked Autoencoders Are Scalable Vision Learners.
    CVPR 2022. https://arxiv.org/abs/2111.06377
[1] Kumar, Raghunathan, Jones, Ma, Liang. Fine-Tuning can Distort Pretrained Features and
    Underperform Out-of-Distribution. ICLR 2022. https://arxiv.org/abs/2202.10054

:func:`build_classifier` trains a **copy** of the backbone (the timm model rebuilt from its name
and kwargs, weights copied, a ``num_classes`` head added); the backbone in memory, its
safetensors file and the feature cache are never written. Per lr of ``lr_grid``: AdamW with
weight decay on ≥2-D weights only (timm's ``no_weight_decay`` exemptions), warmup then cosine to
``min_lr``, MAE's layer-wise lr decay for ViTs (``timm.optim.param_groups_layer_decay`` on the
model with its head), label smoothing, drop path, bf16 autocast on CUDA only. Evaluation runs in
fp32 on un-augmented images with the whole model in ``eval()`` mode, the frozen features' path.
The lr with the best validation accuracy wins (ties -> smaller lr); its best-validation model is
tested, or retrained on train + val with ``refit_on_train_and_val``. ``optimizer: sgd``
(momentum 0.9) gives Kumar et al.'s pipeline and the SimCLR-style ResNet fine-tuning.

Deviations from MAE [ours]: the head (trunc-normal std ``head_init_std``) reads the backbone's
own pooled feature (ResNet: average pool; ViT: cls token after the final norm), as the probes do,
instead of average pooling + ``fc_norm``, so LP-FT's head fits the features it was fitted on;
timm groups the final ``norm`` with the last block (scale ``decay``, MAE: 1); ResNets get no
layer decay; augmentation is RandomResizedCrop(``crop_scale``) [+ flip ``flip_p``] instead of
RRC(0.08, 1) + flip + RandAugment + mixup / cutmix + random erasing (a 0.08 crop of a 32 px digit
is mostly background, mirrored digits change identity, and the rest needs far more epochs than a
CPU budget); a fixed number of ``steps`` per lr instead of 100 epochs; absolute lrs.

LP-FT (:mod:`sslbench.eval.lpft`, docs/methods.md#lp-ft) runs this pipeline from the linear
probe's head. With ``bn_eval: true`` (the paper's ``lp_then_ft_valmode``) every BatchNorm layer
stays in ``eval()`` mode (statistics frozen, affine parameters trained); unlike the paper's val
mode, drop path stays active. The frozen features come from the same eval path, so LP-FT's
step-0 logits equal the probe's up to float rounding (``chosen_step0_val_acc`` records it).
LP-FT's default lr grid is FT's, so the two differ only in head init and BN mode.

Calibration of these defaults and the LP-FT vs FT measurements: docs/findings.md.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Any, Optional

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone, adapt_small_input, family_of
from ..datasets import ImageDataset
from ..errors import UserError
from ..schedules import cosine_with_warmup
from ..utils import seed_everything
from ..views import Normalize, RandomResizedCropFlip, to_float
from .protocol import EvalContext, Log, Result, register_protocol
from .scoring import score


# -- model ---------------------------------------------------------------------------------------

def build_classifier(backbone: Backbone, num_classes: int, drop_path_rate: float = 0.0
                     ) -> nn.Module:
    """A fresh timm model with the backbone's weights (copied) and a ``num_classes`` head."""
    kwargs = dict(backbone.timm_kwargs)
    if drop_path_rate or "drop_path_rate" in kwargs:
        kwargs["drop_path_rate"] = float(drop_path_rate)
    model = timm.create_model(backbone.name, pretrained=False, **kwargs)
    if family_of(model) == "resnet" and backbone.small_input:
        adapt_small_input(model)
    model.load_state_dict(backbone.model.state_dict())  # copies into the new tensors
    model.reset_classifier(num_classes)
    p = next(backbone.model.parameters())
    return model.to(device=p.device, dtype=p.dtype)


def init_head(model: nn.Module, std: float = 2e-5,
              weights: Optional[tuple[Tensor, Tensor]] = None) -> None:
    """MAE head init (trunc_normal(std), zero bias), or copy ``weights`` = (W, b) in."""
    head = model.get_classifier()
    with torch.no_grad():
        if weights is None:
            nn.init.trunc_normal_(head.weight, std=std)
            head.bias.zero_()
        else:
            head.weight.copy_(weights[0].to(head.weight))
            head.bias.copy_(weights[1].to(head.bias))


def param_groups(model: nn.Module, weight_decay: float, layer_decay: Optional[float]
                 ) -> list[dict[str, Any]]:
    """timm parameter groups: layer-wise lr decay (``lr_scale``) for ViTs, plain weight-decay
    groups (no decay on 1-D params / ``no_weight_decay``) otherwise."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    nwd = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    if layer_decay is not None and family_of(model) == "vit":
        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=nwd,
                                        layer_decay=layer_decay)
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=nwd)


def set_bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def augmentation(cfg: Any, size: int) -> nn.Module:
    return RandomResizedCropFlip(size, cfg.crop_scale, flip_p=float(cfg.flip_p))


# -- train / predict -----------------------------------------------------------------------------

def train_classifier(model: nn.Module, dataset: ImageDataset, indices: Tensor,
                     normalize: Normalize, cfg: Any, lr: float, seed: int,
                     device: torch.device, bn_eval: bool = False,
                     steps: Optional[int] = None) -> list[float]:
    """Fine-tune ``model`` in place on ``dataset[indices]``; returns the per-step train losses
    (stops early, returning a non-finite last loss, if the loss diverges)."""
    steps = int(cfg.steps if steps is None else steps)
    seed_everything(seed)  # kornia draws from the global RNG
    g = torch.Generator().manual_seed(seed)
    size = int(dataset.get_batch([int(indices[0])])[0].shape[-1])
    aug = augmentation(cfg, size).to(device)
    groups = param_groups(model, float(cfg.weight_decay),
                          float(cfg.layer_decay) if cfg.layer_decay is not None else None)
    if cfg.optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    else:
        raise UserError(f"unknown fine-tuning optimizer '{cfg.optimizer}' (adamw | sgd)")
    n = indices.numel()
    bs = max(min(2, n), min(int(cfg.batch_size), n))  # BN in train mode needs >= 2 samples
    spe = max(1, n // bs)
    warmup = int(round(float(cfg.warmup_fraction) * steps))
    final = min(float(cfg.min_lr), lr)
    model.train()
    if bn_eval:
        set_bn_eval(model)
    losses: list[float] = []
    perm = indices
    try:
        for step in range(steps):
            b = step % spe
            if b == 0:
                perm = indices[torch.randperm(n, generator=g)]
            x, y = dataset.get_batch(perm[b * bs:(b + 1) * bs])
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.no_grad():
                x = normalize(aug(to_float(x)))
            lr_t = cosine_with_warmup(step, steps, warmup, lr, final)
            for group in opt.param_groups:
                group["lr"] = lr_t * group.get("lr_scale", 1.0)
            with torch.enable_grad():
                with _autocast(device):
                    logits = model(x)
                loss = F.cross_entropy(logits.float(), y,
                                       label_smoothing=float(cfg.label_smoothing))
                opt.zero_grad(set_to_none=True)
                loss.backward()
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                break
            opt.step()
    finally:
        model.eval()
    return losses


@torch.no_grad()
def predict(model: nn.Module, dataset: ImageDataset, normalize: Normalize,
            device: torch.device, batch_size: int,
            indices: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """fp32 logits (CPU) and labels of un-augmented images, the model in ``eval()`` mode (the
    frozen-feature extraction path); the training flag is restored afterwards."""
    was = model.training
    model.eval()
    idx = torch.arange(len(dataset)) if indices is None else indices
    out, labels = [], []
    try:
        for s in range(0, idx.numel(), batch_size):
            x, y = dataset.get_batch(idx[s:s + batch_size])
            out.append(model(normalize(x.to(device))).float().cpu())
            labels.append(y)
    finally:
        model.train(was)
    return torch.cat(out), torch.cat(labels)


def _acc(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


# -- protocols -----------------------------------------------------------------------------------

def run_finetune(backbone: Backbone, num_classes: int, train: ImageDataset, fit_idx: Tensor,
                 val_idx: Tensor, evals: dict[str, ImageDataset], normalize: Normalize, cfg: Any,
                 seed: int, device: torch.device, eval_batch_size: int,
                 head_init: Optional[tuple[Tensor, Tensor]] = None, bn_eval: bool = False,
                 log: Log = None, predictions: Optional[dict[str, Tensor]] = None
                 ) -> tuple[dict[str, float], dict]:
    """Fine-tune a copy of ``backbone`` per lr in ``cfg.lr_grid`` on ``train[fit_idx]``, choose
    the lr on ``train[val_idx]``, report ``evals`` ("test" -> ``acc``, others -> ``<name>_acc``)."""
    family = family_of(backbone.model)
    layer_decay = float(cfg.layer_decay) if (cfg.layer_decay is not None
                                             and family == "vit") else None

    def fresh() -> nn.Module:
        seed_everything(seed)  # the head init is seeded
        model = build_classifier(backbone, num_classes, float(cfg.drop_path))
        init_head(model, float(cfg.head_init_std), head_init)
        return model

    fits = len(cfg.lr_grid) + bool(cfg.refit_on_train_and_val)
    spent: list[float] = []

    def fit(idx: Tensor, lr: float) -> tuple[nn.Module, list[float]]:
        model = fresh()
        t = time.perf_counter()
        losses = train_classifier(model, train, idx, normalize, cfg, lr, seed, device, bn_eval)
        spent.append(time.perf_counter() - t)
        if log:
            eta = (fits - len(spent)) * sum(spent) / len(spent)
            log(f"  lr={lr:g} (fit {len(spent)}/{fits}): {len(losses)} steps in "
                f"{spent[-1]:.1f} s, train loss {losses[0]:.3f} -> "
                f"{sum(losses[-10:]) / len(losses[-10:]):.3f}; ETA {eta:.0f} s")
        return model, losses

    step0_val = None
    if head_init is not None:
        lv, yv = predict(fresh(), train, normalize, device, eval_batch_size, val_idx)
        step0_val = _acc(lv, yv)
    val_acc: dict[float, float] = {}
    diverged: list[float] = []
    best, best_model, best_losses = None, None, []
    for lr in sorted(float(v) for v in cfg.lr_grid):
        model, losses = fit(fit_idx, lr)
        if not math.isfinite(losses[-1]):
            diverged.append(lr)
            val_acc[lr] = 0.0
            continue
        lv, yv = predict(model, train, normalize, device, eval_batch_size, val_idx)
        val_acc[lr] = _acc(lv, yv)
        if log:
            log(f"  lr={lr:g}: val_acc {val_acc[lr]:.4f}")
        if best is None or val_acc[lr] > val_acc[best]:  # ties -> smaller lr (sorted grid)
            best, best_model, best_losses = lr, model, losses
        del model
    if best is None:
        raise UserError(f"fine-tuning diverged for every lr in {sorted(cfg.lr_grid)}; "
                        f"lower the lr grid")
    if cfg.refit_on_train_and_val:
        best_model, best_losses = fit(torch.cat([fit_idx, val_idx]).sort().values, best)
    metrics = {"val_acc": val_acc[best]}
    for name, ds in evals.items():
        logits, y = predict(best_model, ds, normalize, device, eval_batch_size)
        score(metrics, name, logits.argmax(1), y, predictions)
    tail = best_losses[-10:]
    settings = _settings(cfg, layer_decay, head_init is not None, bn_eval)
    settings.update({
        "chosen_lr": best, "chosen_val_acc_by_lr": {f"{lr:g}": a for lr, a in val_acc.items()},
        "chosen_train_loss_last10": sum(tail) / len(tail),
    })
    if diverged:
        settings["chosen_diverged_lrs"] = diverged
    if step0_val is not None:
        settings["chosen_step0_val_acc"] = step0_val
    return metrics, settings


def _settings(cfg: Any, layer_decay: Optional[float], probe_head: bool, bn_eval: bool
              ) -> dict[str, Any]:
    """The fine-tuning settings a record names, before the choices made on validation."""
    refit = bool(cfg.refit_on_train_and_val)
    return {
        "solver": f"{cfg.optimizer} full fine-tuning",
        "optimizer": str(cfg.optimizer), "steps": int(cfg.steps),
        "batch_size": int(cfg.batch_size), "lr_grid": sorted(float(v) for v in cfg.lr_grid),
        "lr_scaling": "none (absolute lr)", "schedule": "linear warmup + cosine",
        "warmup_fraction": float(cfg.warmup_fraction), "min_lr": float(cfg.min_lr),
        "weight_decay": float(cfg.weight_decay), "layer_decay": layer_decay,
        "label_smoothing": float(cfg.label_smoothing), "drop_path": float(cfg.drop_path),
        "augmentation": {"random_resized_crop_scale": [float(s) for s in cfg.crop_scale],
                         "flip_p": float(cfg.flip_p)},
        "head_init": ("linear probe (lbfgs, un-standardised)" if probe_head
                      else f"trunc_normal(std={float(cfg.head_init_std):g})"),
        "bn_eval": bool(bn_eval), "amp": "bf16 autocast on CUDA, fp32 on CPU",
        "selection": ("refit chosen lr on train+val" if refit
                      else "best-validation model (no refit)"),
        "refit_on_train_and_val": refit,
    }


@register_protocol("finetune", needs_backbone=True, order=40)
def finetune(ctx: EvalContext) -> Result:
    """Full fine-tuning of a copy of the backbone, lr chosen on the validation split; the
    ``supervised`` baseline runs it from random init with ``eval.supervised``."""
    cfg = ctx.cfg.eval.supervised if ctx.kind == "supervised" else ctx.cfg.eval.finetune
    metrics, settings = run_finetune(ctx.backbone, ctx.num_classes, ctx.train, ctx.fit_idx,
                                     ctx.val_idx, ctx.evals, ctx.normalize, cfg,
                                     int(ctx.eval_seed), ctx.device, ctx.cfg.eval.batch_size,
                                     log=ctx.log, predictions=ctx.predictions)
    settings["val_split"] = ctx.val_split
    return metrics, settings


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
