"""Label-fraction subsampling of the training split and the fit / validation carve.

Every protocol sees the same labelled data for a given ``(label_fraction, eval_seed)``:

1. :func:`label_fraction_indices` keeps a *class-stratified* fraction of the TRAIN split: each
   class keeps ``max(1, round(fraction * n_c))`` of its ``n_c`` images (so every class is present
   and the class proportions of the split are preserved; "class-balanced" in the sense of the
   SimCLR / BYOL 1% / 10% ImageNet subsets, which are stratified). The images are chosen by a
   per-class permutation seeded by the eval seed only (not the fraction), so for one seed the
   subsets are **nested**: the 1% subset is a prefix of every class's 10% subset. Nesting makes
   accuracy-vs-label-fraction curves less noisy (a larger fraction only adds images). Different
   eval seeds give different subsets. ``fraction == 1.0`` returns ``arange(n)`` in order, so
   everything downstream is bit-identical to the behaviour before label fractions existed.
   Images (not groups) are sampled: with 4 renders per glyph a small subset may hold one render
   of a glyph, which is the point of a label budget.
2. :func:`carve_fit_val` carves the validation split used for every hyperparameter choice from
   the (subsampled) training data — never from the test split — with
   :func:`sslbench.eval.linear.carve_validation` (by group when the dataset has groups, e.g. the
   source glyph of each render, so no glyph is on both sides). At tiny fractions a class could
   land in validation only; one of its validation groups is then moved back to the fit split
   (documented repair, so every probe can predict every class; a no-op on the full embedded
   benchmark). If nothing is left for validation, the fraction is too small to choose
   hyperparameters and a UserError says so.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..errors import UserError
from .linear import carve_validation

_SEED_OFFSET = 7_919  # decorrelates the subset stream from carve_validation's seed stream


def label_fraction_indices(labels: Tensor, fraction: float, seed: int) -> Tensor:
    """Sorted indices of a class-stratified, seeded ``fraction`` of ``labels`` (>= 1 per class).

    Nested across fractions for one ``seed``; ``fraction == 1`` gives ``arange(len(labels))``.
    """
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"label fraction {fraction} is not in (0, 1]; fix eval.label_fractions")
    n = labels.numel()
    if fraction == 1.0:
        return torch.arange(n)
    g = torch.Generator().manual_seed(_SEED_OFFSET + int(seed))
    keep = []
    for c in labels.unique(sorted=True).tolist():  # fixed class order -> deterministic stream
        idx = (labels == c).nonzero().squeeze(1)
        perm = idx[torch.randperm(idx.numel(), generator=g)]
        keep.append(perm[:max(1, round(fraction * idx.numel()))])
    return torch.cat(keep).sort().values


def carve_fit_val(labels: Tensor, groups: Optional[Tensor], val_fraction: float,
                  seed: int) -> tuple[Tensor, Tensor]:
    """(fit, val) positions into ``labels``: disjoint, covering, carved by group when given;
    every class present in ``labels`` keeps at least one fit example."""
    fit, val = carve_validation(labels, groups, val_fraction, seed)
    missing = sorted(set(labels.unique().tolist()) - set(labels[fit].unique().tolist()))
    if missing:
        keys = val if groups is None else groups[val]  # move whole groups, one per class
        back = torch.zeros(val.numel(), dtype=torch.bool)
        for c in missing:
            first = int((labels[val] == c).nonzero()[0])
            back |= keys == keys[first]
        fit = torch.cat([fit, val[back]]).sort().values
        val = val[~back]
    if val.numel() == 0:
        raise UserError(f"the labelled subset ({labels.numel()} images) is too small to carve a "
                        f"validation split for hyperparameter choice; use a larger "
                        f"eval.label_fractions value")
    return fit, val


def subsample_and_carve(labels: Tensor, groups: Optional[Tensor], fraction: float,
                        val_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """(labelled subset, fit, val) as indices into the full training split."""
    sub = label_fraction_indices(labels, fraction, seed)
    fit, val = carve_fit_val(labels[sub], None if groups is None else groups[sub],
                             val_fraction, seed)
    return sub, sub[fit], sub[val]
