"""SimCLR invariants (docs/methods.md#simclr; #test-checklist items 1-3) and per-sample
augmentation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sslbench.ssl.simclr import nt_xent_loss
from sslbench.views import crop_boxes, simclr_view


def test_nt_xent_orthonormal_identical_views__spec_value():
    z = torch.eye(8)[:4]  # N=4 orthonormal embeddings, D=8
    assert nt_xent_loss(z, z, 0.5).item() == pytest.approx(0.594438, abs=1e-6)
    assert nt_xent_loss(z, z, 0.5).item() == pytest.approx(math.log(1 + 6 * math.exp(-2)), abs=1e-6)


def test_nt_xent_orthonormal_large_batch__spec_value():
    z = torch.eye(256)
    assert nt_xent_loss(z, z, 0.2).item() == pytest.approx(1.489833, abs=1e-5)


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_nt_xent_collapsed__log_2n_minus_1(tau):
    z = torch.ones(4, 16) * 3.0
    assert nt_xent_loss(z, z, tau).item() == pytest.approx(1.945910, abs=1e-6)


def test_nt_xent_invariances():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(10, 16, generator=g), torch.randn(10, 16, generator=g)
    base = nt_xent_loss(z1, z2, 0.3)
    assert nt_xent_loss(5.0 * z1, 0.1 * z2, 0.3).item() == pytest.approx(base.item(), abs=1e-6)
    assert nt_xent_loss(z2, z1, 0.3).item() == pytest.approx(base.item(), abs=1e-6)
    # the definition, anchor by anchor (float64): -log of the softmax at the positive over the
    # 2N - 1 other embeddings; the TF convention (loss_a + loss_b, each a mean over N anchors)
    # is twice our mean over 2N
    n, tau = 10, 0.3
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    terms = []
    for a in range(2 * n):
        others = torch.stack([z[k] for k in range(2 * n) if k != a])
        terms.append(torch.logsumexp(others @ z[a] / tau, 0) - z[(a + n) % (2 * n)] @ z[a] / tau)
    loss_a, loss_b = torch.stack(terms[:n]).mean(), torch.stack(terms[n:]).mean()
    assert 2 * base.item() == pytest.approx((loss_a + loss_b).item(), abs=1e-5)
    assert base.item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-6)


def test_nt_xent_gradient_orthogonal_to_z():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(6, 8, generator=g, requires_grad=True)
    z2 = torch.randn(6, 8, generator=g, requires_grad=True)
    nt_xent_loss(z1, z2, 0.5).backward()
    dots = (z1.grad * z1.detach()).sum(1)
    assert torch.allclose(dots, torch.zeros(6), atol=1e-6)
    assert z1.grad.abs().sum() > 0


def test_nt_xent_positive_pairs_lower_loss_than_random():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(32, 64, generator=g)
    matched = nt_xent_loss(z, z + 0.01 * torch.randn(32, 64, generator=g), 0.2)
    shuffled = nt_xent_loss(z, z[torch.randperm(32, generator=g)], 0.2)
    assert matched < shuffled


def test_augmentation_parameters_differ_per_sample():
    """Every op draws its parameters per sample (torchvision v2 on a batch would not)."""
    torch.manual_seed(0)
    aug = simclr_view(32, color_strength=0.5)
    img = torch.rand(1, 3, 32, 32).expand(64, 3, 32, 32).contiguous()  # 64 identical images
    out = aug(img)
    flat = out.flatten(1)
    distinct = torch.unique(flat.round(decimals=4), dim=0).shape[0]
    assert distinct == 64, f"only {distinct} distinct views of 64 identical inputs"
    boxes = crop_boxes(64, 32, 32, (0.08, 1.0))  # the crop's per-sample boxes
    assert torch.unique(boxes, dim=0).shape[0] > 32
