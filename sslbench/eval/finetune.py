"""Full fine-tuning (spec §11.3, MAE recipe) and LP-FT (spec §11.4, Kumar et al. ICLR 2022).

Both protocols train a **copy** of the backbone: :func:`build_classifier` rebuilds the timm model
from the backbone's own timm name / kwargs (with the fine-tuning drop-path rate), copies the
weights in with ``load_state_dict`` and adds a ``num_classes`` head with timm's
``reset_classifier``. The pretrained backbone in memory (used by the other protocols) and
``backbone.safetensors`` / the feature cache on disk are never written.

Fine-tuning (``finetune``), per lr in ``lr_grid``:

- model = timm model + linear head, head init trunc_normal(std ``head_init_std`` = 2e-5, MAE),
  zero bias. The representation is the backbone's own pooled feature (ResNet: global average
  pool; ViT: the cls token after the final norm, as in pretraining and the probes) — MAE
  fine-tunes with global average pooling + ``fc_norm`` instead; we keep the probes' pooling so
  that LP-FT's head matches the features it was fitted on.
- augmentation on the device (kornia, per-sample parameters): RandomResizedCrop(32,
  scale=``crop_scale`` (0.3, 1)) [+ horizontal flip with ``flip_p``, default 0]. Deviation: MAE
  uses scale (0.08, 1) + flip + RandAugment(m9) + mixup 0.8 / cutmix 1.0 + random erasing 0.25;
  at 32 px a 0.08 crop of a 20-26 px digit is mostly background, mirrored digits change
  identity (the SSL recipes also use (0.3, 1) and no flip), and mixup/cutmix/RandAugment need
  far more than the ~4 epochs a CPU budget allows. Label smoothing 0.1 is kept.
- AdamW (β 0.9, 0.999), weight decay 0.05 on ≥2-D weights only (none on 1-D params, biases,
  norms, ``pos_embed``, ``cls_token``: timm's ``no_weight_decay``), linear warmup
  (``warmup_fraction`` of the steps) then cosine to ``min_lr``. ``optimizer: sgd`` (momentum 0.9)
  gives Kumar et al.'s pipeline instead.
- ViT: layer-wise lr decay with ``timm.optim.param_groups_layer_decay`` on the model *with* its
  head, so the scales are MAE's: head 1, block j ``decay^(depth − j)``, embeddings
  ``decay^(depth + 1)``. One difference from MAE: timm groups the final ``norm`` with the last
  block (scale ``decay``) where MAE's ``fc_norm`` gets 1. ResNets and other families: no layer
  decay (``layer_decay`` recorded as null); the spec's SimCLR-style ResNet fine-tuning (SGD/LARS)
  is available as ``optimizer: sgd``.
- drop path ``drop_path`` (0.1, MAE ViT-B); applies to ResNets too (timm supports it).
- a fixed number of optimisation ``steps`` per lr at ``batch_size`` (150 x 128 ≈ 4 epochs of the
  embedded train split instead of 100 epochs; a fixed step budget also means smaller label
  fractions get more epochs rather than fewer updates).
- bf16 autocast on CUDA only (fp32 on CPU); evaluation always runs in fp32, on un-augmented
  full images, with the whole model in ``eval()`` mode — the same path as the frozen features.
- absolute lrs (not scaled by batch size), default grid (1e-3, 3e-3). Calibration on the
  embedded benchmark, SimCLR ``test_resnet`` (``runs/embedded/quickstart-s0``), 150 steps:
  validation accuracy 0.38 / 0.64 / 0.88 at lr 3e-4 / 1e-3 / 3e-3 (linear probe: 0.66). The
  tiny ViTs (``test_vit``) barely move in 150 steps (MAE / MoCo v3 / DINO inits: 0.10-0.16
  validation at 1e-3 and 3e-3; 1e-2 diverges); MoCo v3 ``test_vit`` reaches 0.34 after 600
  steps at 3e-3 (its probe: ~0.20), so give ViTs several hundred ``steps`` or more (GPU).
- **model selection**: the lr with the best validation accuracy (ties -> smaller lr); by
  default (``refit_on_train_and_val: false``) the **best-validation model is kept** and tested —
  no retraining, so the grid costs ``len(lr_grid)`` runs and ``val_acc`` is an honest held-out
  number. ``refit_on_train_and_val: true`` retrains the chosen lr on train + val (one more run).

LP-FT (``lpft``): stage 1 is the L-BFGS linear probe (:func:`sslbench.eval.linear.run_linear`)
on the cached frozen features of the same fit split, C chosen on the same validation split and
**not** refitted on train + val (stage 2 selects its lr on that validation split, so the head
must not have seen it). The head, learned on per-dimension standardised features, is folded back
into a head on raw features (``W' = W/σ``, ``b' = b − W'·μ``, spec §11.4 pitfall) and copied into
the model's head; stage 2 is the fine-tuning pipeline above from that head with a smaller lr grid
(``eval.lpft``), and with ``bn_eval: true`` (the paper's ``lp_then_ft_valmode``) every BatchNorm
layer stays in ``eval()`` mode during fine-tuning: running statistics frozen, BN affine
parameters still trained. (The paper's val mode puts the whole network in eval mode; we keep
drop path active, since FT and LP-FT share one pipeline here.) Because the frozen features were
extracted by the same eval path (normalise -> backbone in eval mode, fp32), the model's step-0
logits equal the probe's up to float rounding; ``chosen_step0_val_acc`` records the check, next
to the probe's own numbers (``chosen_lp``). Default lr grid: FT's (1e-3, 3e-3), chosen on the
validation split like FT's, so that FT and LP-FT differ only in head init and BN mode (the paper
sweeps both; a grid 3x below FT's, (3e-4, 1e-3), left LP-FT at the probe's accuracy after 150
steps on the embedded benchmark, see below).

Known behaviour on the embedded benchmark (SimCLR ``test_resnet``, 150 steps): the probe is
fitted on *un-augmented* images, and on RandomResizedCrop(0.3, 1) views its loss starts *above*
chance (2.7 vs ln 10 = 2.3), so the first fine-tuning steps adapt the features to the crops and
validation accuracy first drops below the probe's (0.65 -> 0.50 / 0.50 / 0.53 / 0.60 at lr 3e-5
/ 1e-4 / 3e-4 / 1e-3 with ``bn_eval``). Milder crops keep LP-FT above LP (60 steps, lr 1e-3:
0.67 with scale (0.8, 1), 0.72 without crops); ``eval.lpft.crop_scale=[0.8,1.0]`` is the knob.
The default keeps FT's augmentation so that FT and LP-FT differ only in head init, lr and BN
mode. With SGD (the paper's optimiser) the probe's large un-standardised head (C = 10) diverged
at lr 1e-2.

LP-FT against FT out of distribution (the paper's claim), one SimCLR ``test_resnet`` run
(quickstart, seed 0, 1 thread; its probe: 63.7 % test / 38.1 % OOD), test / OOD top-1 %:

=====================================================  ============  ============
setting                                                FT            LP-FT
=====================================================  ============  ============
lr grid (1e-3, 3e-3), both pick 3e-3; LP-FT bn_eval    89.9 / 77.9   ~70 / ~43 [a]
LP-FT with bn_eval false                               –             85.7 / 66.0
LP-FT with crop scale (0.8, 1), bn_eval                –             83.2 / 61.4
lr grid (3e-3, 1e-2), both pick 1e-2; LP-FT no bn_eval 94.3 / 87.2   90.2 / 78.9
20 % of the labels (bn_eval / not)                     88.0 / 69.6   73.2 / 50.6, 84.4 / 60.3
5 % of the labels (bn_eval / not)                      69.3 / 46.4   49.8 / 29.2, 51.8 / 29.7
=====================================================  ============  ============

[a] the 3-seed records of commit 4f93785 (seed 0: 70.0 / 43.4). With the quickstart's lr grid
(1e-3 ... 1e-1, both protocols' choices inside it), 3 seeds of commit 5ab875b: FT 94.4 ± 0.3 /
88.7 ± 2.5, LP-FT (bn_eval) 78.7 ± 8.1 / 61.6 ± 22.1; LP-FT collapses to chance at 3e-2 and
above (validation 0.10), FT keeps improving to 1e-2-3e-2. LP-FT never wins: the features
are weak next to what fine-tuning learns from the labels (random init fine-tuned: 89.0 / 72.0,
seed 0 on one H200), so there is nothing for LP-FT to protect, and its low-loss start moves the
features less. BN in eval mode costs most (its frozen statistics come from un-augmented
pretraining views, while fine-tuning trains on crops).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Any, Callable, Optional

import kornia.augmentation as K
import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import Backbone, adapt_small_input, family_of
from ..datasets import ImageDataset
from ..errors import UserError
from ..schedules import cosine_with_warmup
from ..ssl.augment import Normalize, to_float
from ..utils import seed_everything
from .linear import run_linear

Log = Optional[Callable[[str], None]]


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
    ops: list[nn.Module] = [K.RandomResizedCrop((size, size), scale=tuple(cfg.crop_scale))]
    if cfg.flip_p > 0:
        ops.append(K.RandomHorizontalFlip(p=float(cfg.flip_p)))
    return nn.Sequential(*ops)


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
            device: torch.device, batch_size: int = 512,
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
                 seed: int, device: torch.device, eval_batch_size: int = 512,
                 head_init: Optional[tuple[Tensor, Tensor]] = None, bn_eval: bool = False,
                 log: Log = None) -> tuple[dict[str, float], dict]:
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

    def fit(idx: Tensor, lr: float) -> tuple[nn.Module, list[float]]:
        model = fresh()
        t = time.perf_counter()
        losses = train_classifier(model, train, idx, normalize, cfg, lr, seed, device, bn_eval)
        if log:
            log(f"  lr={lr:g}: {len(losses)} steps in {time.perf_counter() - t:.1f} s, "
                f"train loss {losses[0]:.3f} -> {sum(losses[-10:]) / len(losses[-10:]):.3f}")
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
    refit = bool(cfg.refit_on_train_and_val)
    if refit:
        best_model, best_losses = fit(torch.cat([fit_idx, val_idx]).sort().values, best)
    metrics = {"val_acc": val_acc[best]}
    for name, ds in evals.items():
        logits, y = predict(best_model, ds, normalize, device, eval_batch_size)
        metrics["acc" if name == "test" else f"{name}_acc"] = _acc(logits, y)
    tail = best_losses[-10:]
    settings: dict[str, Any] = {
        "solver": f"{cfg.optimizer} full fine-tuning",
        "optimizer": str(cfg.optimizer), "steps": int(cfg.steps),
        "batch_size": int(cfg.batch_size), "lr_grid": sorted(float(v) for v in cfg.lr_grid),
        "lr_scaling": "none (absolute lr)", "schedule": "linear warmup + cosine",
        "warmup_fraction": float(cfg.warmup_fraction), "min_lr": float(cfg.min_lr),
        "weight_decay": float(cfg.weight_decay), "layer_decay": layer_decay,
        "label_smoothing": float(cfg.label_smoothing), "drop_path": float(cfg.drop_path),
        "augmentation": {"random_resized_crop_scale": [float(s) for s in cfg.crop_scale],
                         "flip_p": float(cfg.flip_p)},
        "head_init": ("linear probe (lbfgs, un-standardised)" if head_init is not None
                      else f"trunc_normal(std={float(cfg.head_init_std):g})"),
        "bn_eval": bool(bn_eval), "amp": "bf16 autocast on CUDA, fp32 on CPU",
        "selection": ("refit chosen lr on train+val" if refit
                      else "best-validation model (no refit)"),
        "refit_on_train_and_val": refit,
        "chosen_lr": best, "chosen_val_acc_by_lr": {f"{lr:g}": a for lr, a in val_acc.items()},
        "chosen_train_loss_last10": sum(tail) / len(tail),
    }
    if diverged:
        settings["chosen_diverged_lrs"] = diverged
    if step0_val is not None:
        settings["chosen_step0_val_acc"] = step0_val
    return metrics, settings


def run_lpft(backbone: Backbone, num_classes: int, train: ImageDataset, fit_idx: Tensor,
             val_idx: Tensor, evals: dict[str, ImageDataset], normalize: Normalize,
             feats: dict[str, tuple[Tensor, Tensor]], linear_cfg: Any, cfg: Any, seed: int,
             device: torch.device, eval_batch_size: int = 512,
             log: Log = None) -> tuple[dict[str, float], dict]:
    """LP (L-BFGS on ``feats``: "train" = fit split features, "val", test/ood) then FT from the
    un-standardised LP head with ``cfg`` = ``EvalConfig.lpft``."""
    _, lp_settings, head = run_linear(feats, num_classes, linear_cfg.c_grid,
                                      linear_cfg.max_iter, refit=False, device=device,
                                      return_head=True)
    # the stage-1 numbers of the head actually used (run_linear's val_acc is that of the
    # warm-started grid fit of the chosen C; its refit=False head is refitted from zero)
    lp_metrics = {}
    for split, (x, y) in feats.items():
        if split == "train":
            continue
        logits = x.to(head[0]) @ head[0].T + head[1]
        lp_metrics["acc" if split == "test" else f"{split}_acc"] = _acc(logits.cpu(), y.cpu())
    if log:
        log(f"  LP: C={lp_settings['chosen_C']:g} val_acc {lp_metrics['val_acc']:.4f} "
            f"acc {lp_metrics.get('acc', float('nan')):.4f}")
    metrics, settings = run_finetune(backbone, num_classes, train, fit_idx, val_idx, evals,
                                     normalize, cfg, seed, device, eval_batch_size,
                                     head_init=head, bn_eval=bool(cfg.bn_eval), log=log)
    settings["lp"] = {"solver": "lbfgs", "c_grid": lp_settings["c_grid"],
                      "max_iter": lp_settings["max_iter"], "refit_on_train_and_val": False,
                      "standardise": "per-dimension, folded into the head (W/σ, b − W·μ/σ)"}
    settings["chosen_lp"] = {"C": lp_settings["chosen_C"], **lp_metrics}
    return metrics, settings


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
