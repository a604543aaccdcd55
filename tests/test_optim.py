"""LARS: the trust ratio, the 1-D exclusions and LARC's clipping (optim.clip_lr)."""
from __future__ import annotations

import torch

from sslbench.optim import LARS


def _step(lr: float, clip_lr: bool, wd: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    w.grad = torch.tensor([[0.0, 0.5]])  # ||g|| = 0.5
    b.grad = torch.tensor([2.0])
    opt = LARS([{"params": [w], "weight_decay": wd}, {"params": [b], "weight_decay": 0.0}],
               lr=lr, momentum=0.9, trust_coefficient=0.02, clip_lr=clip_lr)
    opt.step()
    return w.detach(), b.detach()


def test_trust_ratio_scales_the_layer_rate():
    """ratio = 0.02 * 5 / 0.5 = 0.2: w moves by lr * 0.2 * g; the bias by lr * g (no ratio)."""
    w, b = _step(lr=0.5, clip_lr=False)
    torch.testing.assert_close(w, torch.tensor([[3.0, 4.0 - 0.5 * 0.2 * 0.5]]))
    torch.testing.assert_close(b, torch.tensor([1.0 - 0.5 * 2.0]))


def test_clip_lr_caps_the_layer_rate_at_the_global_lr():
    """clip: ratio -> min(ratio / lr, 1). lr 0.5: 0.2 / 0.5 = 0.4 -> the layer rate is
    lr * 0.4 = 0.2 (= eta*||w||/||g||). lr 0.1: 0.2 / 0.1 = 2 -> capped at 1: rate 0.1 = lr."""
    w, _ = _step(lr=0.5, clip_lr=True)
    torch.testing.assert_close(w, torch.tensor([[3.0, 4.0 - 0.2 * 0.5]]))
    w, b = _step(lr=0.1, clip_lr=True)
    torch.testing.assert_close(w, torch.tensor([[3.0, 4.0 - 0.1 * 0.5]]))
    torch.testing.assert_close(b, torch.tensor([1.0 - 0.1 * 2.0]))  # 1-D: untouched by LARS


def test_weight_decay_enters_the_ratio():
    """wd 0.1: g' = g + 0.1 w = (0.3, 0.9), ||g'|| = sqrt(0.9); ratio = 0.1 / sqrt(0.9)."""
    w, _ = _step(lr=1.0, clip_lr=False, wd=0.1)
    ratio = 0.1 / 0.9 ** 0.5
    torch.testing.assert_close(w, torch.tensor([[3.0 - ratio * 0.3, 4.0 - ratio * 0.9]]))
