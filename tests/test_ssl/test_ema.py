"""EMA helper invariants (docs/methods.md#test-checklist, item 6)."""
from __future__ import annotations

import torch
from torch import nn

from sslbench.ssl.ema import ema_update, frozen_copy


def test_frozen_copy_gets_no_grad_and_ema_identity():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    teacher = frozen_copy(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    old_t = {k: v.clone() for k, v in teacher.named_parameters()}
    ema_update(teacher, student, 0.9)
    for k, s in student.named_parameters():
        torch.testing.assert_close(dict(teacher.named_parameters())[k], 0.9 * old_t[k] + 0.1 * s)
    teacher(torch.randn(5, 4)).sum()  # forward works; backward impossible (no grad)
    out = student(torch.randn(5, 4)).sum()
    out.backward()
    assert all(p.grad is None for p in teacher.parameters())
