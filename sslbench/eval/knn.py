"""Weighted k-NN on frozen features (docs/methods.md#k-nn; DINO ``eval_knn.py`` / InstDisc).

Features are L2-normalised; for each test sample the k most cosine-similar training samples vote
with weight ``exp(s / T)``; the class with the largest summed weight wins. Defaults k = 200,
T = 0.1 (CIFAR/InstDisc convention); DINO's ImageNet protocol is k = 20, T = 0.07. Both are
recorded with every result because numbers are not comparable across (k, T).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .protocol import EvalContext, Result, register_protocol
from .scoring import score


@torch.no_grad()
def knn_predict(train_x: Tensor, train_y: Tensor, test_x: Tensor, k: int, temperature: float,
                num_classes: int, chunk: int = 1024) -> Tensor:
    train_x = F.normalize(train_x.float(), dim=1)
    test_x = F.normalize(test_x.float(), dim=1)
    k = min(k, train_x.shape[0])
    preds = []
    for start in range(0, test_x.shape[0], chunk):  # chunk >= 1 whatever the test size
        sim = test_x[start:start + chunk] @ train_x.T  # (c, N)
        s, idx = sim.topk(k, dim=1)  # (c, k)
        w = (s / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, dtype=w.dtype, device=w.device)
        votes.scatter_add_(1, train_y[idx], w)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def run_knn(feats: dict[str, tuple[Tensor, Tensor]], num_classes: int, k: int,
            temperature: float, predictions: Optional[dict[str, Tensor]] = None
            ) -> tuple[dict[str, float], dict]:
    """k-NN accuracy of every non-train split in ``feats`` (train = the memory bank); the
    predictions go to ``predictions`` when given (:mod:`sslbench.eval.scoring`)."""
    train_x, train_y = feats["train"]
    metrics = {}
    for split, (x, y) in feats.items():
        if split in ("train", "val"):
            continue
        pred = knn_predict(train_x, train_y, x, k, temperature, num_classes)
        score(metrics, split, pred, y, predictions)
    return metrics, {"k": k, "temperature": temperature, "metric": "cosine",
                     "weighting": "exp(s/T)"}


@register_protocol("knn", frozen_features=True, order=20)
def knn(ctx: EvalContext) -> Result:
    """k-NN with the whole labelled subset as memory bank: nothing is chosen on validation."""
    return run_knn(ctx.features(validation=False), ctx.num_classes, ctx.cfg.eval.knn.k,
                   ctx.cfg.eval.knn.temperature, ctx.predictions)
