"""The view helpers of sslbench.views: per-image colour jitter."""
from __future__ import annotations

import kornia.augmentation as K
import kornia.enhance as E
import torch

from sslbench.views import ColorJitterPerImage


def _images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.6 * torch.rand(n, 3, 8, 8, generator=g)  # away from 0 and 1: no clamping


def test_brightness_factor_distribution_matches_kornia():
    """Brightness only: the per-image factor out / in is uniform on [1 - b, 1 + b], as kornia's
    ColorJitter draws it (compared by quantiles over 4,000 images)."""
    x = _images(4000)
    torch.manual_seed(1)
    ours = (ColorJitterPerImage(0.2, 0, 0, 0)(x) / x).mean((1, 2, 3))
    torch.manual_seed(1)
    theirs = (K.ColorJitter(0.2, 0, 0, 0, p=1.0)(x) / x).mean((1, 2, 3))
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    torch.testing.assert_close(torch.quantile(ours, q), torch.quantile(theirs, q), atol=0.01,
                               rtol=0)
    torch.testing.assert_close(torch.quantile(ours, q), 0.8 + 0.4 * q, atol=0.01, rtol=0)


def test_probability_of_jitter():
    x = _images(4000)
    torch.manual_seed(2)
    changed = (ColorJitterPerImage(0.4, 0, 0, 0, p=0.8)(x) != x).flatten(1).any(1)
    assert abs(changed.float().mean().item() - 0.8) < 0.03


def test_each_image_draws_its_own_order():
    """Brightness and contrast do not commute; every output equals one of the two orders of its
    own factors, and both orders occur within one batch (kornia: one order per call)."""
    x = _images(400)
    torch.manual_seed(3)
    jitter = ColorJitterPerImage(0.5, 0.5, 0, 0)
    torch.manual_seed(3)
    # replay the draws of forward(): apply mask, then the factors, then the orders
    n = x.shape[0]
    torch.rand(n)
    b = torch.empty(n).uniform_(0.5, 1.5)
    c = torch.empty(n).uniform_(0.5, 1.5)
    torch.empty(n).uniform_(1, 1)
    torch.empty(n).uniform_(-0.0, 0.0)
    order = torch.argsort(torch.rand(n, 4), dim=1)
    torch.manual_seed(3)
    out = jitter(x)
    bc = E.adjust_contrast_with_mean_subtraction(E.adjust_brightness_accumulative(x, b).clamp(0, 1),
                                                 c).clamp(0, 1)
    cb = E.adjust_brightness_accumulative(E.adjust_contrast_with_mean_subtraction(x, c)
                                          .clamp(0, 1), b).clamp(0, 1)
    brightness_first = (order == 0).int().argmax(1) < (order == 1).int().argmax(1)
    expected = torch.where(brightness_first[:, None, None, None], bc, cb)
    torch.testing.assert_close(out, expected)
    assert 0.3 < brightness_first.float().mean().item() < 0.7
