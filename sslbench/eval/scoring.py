"""Scoring an evaluation set: its accuracy under the record's metric name, and the accuracy's
standard error by a bootstrap over the set's groups.

Renders (or crops, or frames) of one source object are not independent test cases: the embedded
benchmark renders every held-out glyph several times, so a binomial standard error over images
understates the uncertainty. :func:`bootstrap_se` resamples whole groups (``ImageDataset.groups``,
the glyph id of every render; one group per image when a dataset has none) with replacement
(Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 6; the cluster bootstrap of
Field & Welsh, JRSS-B 2007)."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

BOOTSTRAP_REPS = 1000  # resamples; the SE's own relative error is about 1 / sqrt(2 * reps)
BOOTSTRAP_SEED = 0  # fixed: the same predictions always give the same SE


def metric_name(split: str) -> str:
    """The metric an evaluation set's accuracy is recorded under: ``acc`` for the test split,
    ``<name>_acc`` for the others (``ood_acc``, ``cifar10_1_acc``, ...)."""
    return "acc" if split == "test" else f"{split}_acc"


def score(metrics: dict[str, float], split: str, pred: Tensor, y: Tensor,
          predictions: Optional[dict[str, Tensor]] = None) -> None:
    """Set ``metrics[metric_name(split)]`` to the accuracy of ``pred``; keep ``pred`` in
    ``predictions`` (when given) for :func:`bootstrap_se`."""
    metrics[metric_name(split)] = float((pred.cpu() == y.cpu()).float().mean())
    if predictions is not None:
        predictions[split] = pred.detach().cpu()


def group_totals(correct: Tensor, groups: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """(correct answers, images) per group."""
    correct = correct.double().flatten()
    if groups is None:
        return correct, torch.ones_like(correct)
    _, inverse = torch.unique(groups.flatten(), return_inverse=True)
    size = int(inverse.max()) + 1
    hits = torch.zeros(size, dtype=torch.float64).index_add_(0, inverse, correct)
    count = torch.zeros(size, dtype=torch.float64).index_add_(0, inverse,
                                                              torch.ones_like(correct))
    return hits, count


def bootstrap_se(correct: Tensor, groups: Optional[Tensor], reps: int = BOOTSTRAP_REPS,
                 seed: int = BOOTSTRAP_SEED) -> float:
    """Standard error of the accuracy ``correct.mean()`` (``correct``: 0/1 per image), from
    ``reps`` resamples of whole groups with replacement: the sample standard deviation of the
    resampled accuracies (each = resampled hits / resampled images)."""
    hits, count = group_totals(correct, groups)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randint(0, hits.numel(), (reps, hits.numel()), generator=g)
    acc = hits[pick].sum(1) / count[pick].sum(1)
    return float(acc.std())


def uncertainty(predictions: dict[str, Tensor], evals: dict[str, Any]) -> dict[str, float]:
    """``<metric>_se`` for every evaluation set (``ImageDataset``) with predictions."""
    return {f"{metric_name(s)}_se": bootstrap_se(p == evals[s].labels, evals[s].groups)
            for s, p in predictions.items() if s in evals}


def eval_set_sizes(evals: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Images and independent groups (e.g. glyphs) of every evaluation set (``ImageDataset``s):
    the sizes the records' standard errors come from."""
    out = {}
    for name, ds in evals.items():
        groups = getattr(ds, "groups", None)
        out[name] = {"images": len(ds),
                     "groups": len(ds) if groups is None else int(torch.unique(groups).numel())}
    return out
