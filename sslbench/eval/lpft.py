"""LP-FT (Kumar et al., ICLR 2022; docs/methods.md#lp-ft): the L-BFGS linear probe as head init,
then the fine-tuning pipeline of :mod:`sslbench.eval.finetune` from that head.

The probe is fitted on the cached frozen features of the fit split, C chosen on the validation
split and not refitted on train + val (the fine-tuning stage chooses its lr on that split). Its
head, learned on standardised features, is folded back into a head on raw features
(:func:`sslbench.eval.linear.unstandardise`); ``eval.lpft.bn_eval`` keeps every BatchNorm layer
in ``eval()`` mode while fine-tuning.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ..backbones import Backbone
from ..datasets import ImageDataset
from ..views import Normalize
from .finetune import run_finetune
from .linear import run_linear
from .protocol import EvalContext, Log, Result, register_protocol
from .scoring import score


def run_lpft(backbone: Backbone, num_classes: int, train: ImageDataset, fit_idx: Tensor,
             val_idx: Tensor, evals: dict[str, ImageDataset], normalize: Normalize,
             feats: dict[str, tuple[Tensor, Tensor]], linear_cfg: Any, cfg: Any, seed: int,
             device: torch.device, eval_batch_size: int, log: Log = None,
             predictions: Optional[dict[str, Tensor]] = None) -> tuple[dict[str, float], dict]:
    """LP (L-BFGS on ``feats``: "train" = fit split features, "val", test/ood) then FT from the
    un-standardised LP head with ``cfg`` = ``EvalConfig.lpft``."""
    _, lp_settings, head = run_linear(feats, num_classes, linear_cfg.c_grid,
                                      linear_cfg.max_iter, refit=False, device=device,
                                      return_head=True, extend=linear_cfg.extend_grid)
    # the stage-1 numbers of the head actually used: with refit=False it is the C path's fit of
    # the chosen C (converged, warm-started along the path)
    lp_metrics = {}
    for split, (x, y) in feats.items():
        if split == "train":
            continue
        logits = (x.to(head[0]) @ head[0].T + head[1]).cpu()
        score(lp_metrics, split, logits.argmax(1), y)
    if log:
        log(f"  LP: C={lp_settings['chosen_C']:g} val_acc {lp_metrics['val_acc']:.4f} "
            f"acc {lp_metrics.get('acc', float('nan')):.4f}")
    metrics, settings = run_finetune(backbone, num_classes, train, fit_idx, val_idx, evals,
                                     normalize, cfg, seed, device, eval_batch_size,
                                     head_init=head, bn_eval=bool(cfg.bn_eval), log=log,
                                     predictions=predictions)
    settings["lp"] = {"solver": "lbfgs", "c_grid": lp_settings["c_grid"],
                      "extend_grid": lp_settings["extend_grid"],
                      "max_iter": lp_settings["max_iter"], "refit_on_train_and_val": False,
                      "standardise": "per-dimension, folded into the head (W/σ, b − W·μ/σ)"}
    settings["chosen_lp"] = {"C": lp_settings["chosen_C"], **lp_metrics}
    return metrics, settings


@register_protocol("lpft", frozen_features=True, needs_backbone=True, order=50,
                   skip_with_feature_layer="LP-FT starts from the probe on the final "
                                           "representation")
def lpft(ctx: EvalContext) -> Result:
    """LP-FT on the fit split, both stages choosing on the validation split."""
    metrics, settings = run_lpft(ctx.backbone, ctx.num_classes, ctx.train, ctx.fit_idx,
                                 ctx.val_idx, ctx.evals, ctx.normalize, ctx.features(),
                                 ctx.cfg.eval.linear, ctx.cfg.eval.lpft, int(ctx.eval_seed),
                                 ctx.device, ctx.cfg.eval.batch_size, log=ctx.log,
                                 predictions=ctx.predictions)
    settings["val_split"] = ctx.val_split
    return metrics, settings
