"""The batched view ops of sslbench.views against torchvision's per-image semantics."""
from __future__ import annotations

import kornia.augmentation as K
import kornia.enhance as E
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF

from sslbench import views
from sslbench.views import (ColorJitterPerImage, RandomGrayscale, RandomResizedCropFlip,
                            crop_boxes, shift_hue)


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


def test_neutral_factors_leave_images_unchanged():
    """Strengths of zero make the jitter an exact identity (the batched order relies on the
    neutral factor being exact)."""
    x = torch.rand(16, 3, 8, 8)
    assert torch.equal(ColorJitterPerImage(0, 0, 0, 0)(x), x)


def test_shift_hue_matches_torchvision():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(12, 3, 6, 6, generator=g)
    x[0] = 0.5  # grey: no hue
    turns = torch.rand(12, generator=g) - 0.5
    expected = torch.stack([TF.adjust_hue(img, float(t)) for img, t in zip(x, turns)])
    torch.testing.assert_close(shift_hue(x, turns), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(shift_hue(x, torch.zeros(12)), x, atol=1e-6, rtol=0)


def test_brightness_contrast_saturation_match_torchvision():
    """One image, one op, a given factor: the batched ops equal torchvision's (which weighs red
    by 0.2989 instead of 0.299 in its grey level, hence the tolerance)."""
    x = _images(6)
    f = torch.tensor([0.3, 0.6, 0.9, 1.1, 1.4, 1.8])
    for ours, theirs in ((views._brightness, TF.adjust_brightness),
                         (views._contrast, TF.adjust_contrast),
                         (views._saturation, TF.adjust_saturation)):
        expected = torch.stack([theirs(img, float(v)) for img, v in zip(x, f)])
        torch.testing.assert_close(ours(x, f).clamp(0, 1), expected, atol=1e-4, rtol=0)


def test_grayscale_probability_and_luma():
    x = _images(4000)
    torch.manual_seed(5)
    out = RandomGrayscale(0.2)(x)
    grey = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert abs(grey.float().mean().item() - 0.2) < 0.03
    # torchvision weighs red by 0.2989 where ITU-R 601-2 (PIL, kornia, ours) says 0.299
    torch.testing.assert_close(out[grey][:, :1], TF.rgb_to_grayscale(x[grey]), atol=1e-4, rtol=0)


def test_crop_boxes_follow_torchvision():
    """The batched boxes have torchvision's RandomResizedCrop.get_params distribution
    (quantiles of top, left, height and width over 20,000 draws, 32 px and a 48 x 24 image)."""
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    for h, w in ((32, 32), (48, 24)):
        torch.manual_seed(0)
        tv = torch.tensor([T.RandomResizedCrop.get_params(torch.zeros(3, h, w), [0.08, 1.0],
                                                          [3 / 4, 4 / 3])
                           for _ in range(20000)], dtype=torch.float32)
        ours = crop_boxes(20000, h, w, (0.08, 1.0))
        assert (ours[:, 0] + ours[:, 2] <= h).all() and (ours[:, 1] + ours[:, 3] <= w).all()
        for k in range(4):
            diff = (torch.quantile(tv[:, k], q) - torch.quantile(ours[:, k], q)).abs().max()
            assert diff <= 1.0, (h, w, k, diff)


def test_resized_crop_equals_crop_then_interpolate():
    """One batched resampling == crop each box and resize it bilinearly (kornia's way), and
    flips exactly when drawn."""
    x = torch.rand(40, 3, 20, 28)
    torch.manual_seed(6)
    boxes = crop_boxes(40, 20, 28, (0.08, 1.0))
    flip = torch.rand(40) < 0.5
    torch.manual_seed(6)
    out = RandomResizedCropFlip(16, (0.08, 1.0), flip_p=0.5)(x)
    assert 5 < int(flip.sum()) < 35
    for i in range(40):
        top, left, h, w = (int(v) for v in boxes[i])
        ref = F.interpolate(x[i:i + 1, :, top:top + h, left:left + w], size=(16, 16),
                            mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(out[i], ref.flip(2) if flip[i] else ref, atol=1e-5, rtol=0)


def test_hue_selection_paths_agree():
    """The GPU path (shift all, select; no host sync) equals the CPU path (shift the chosen)."""
    x = _images(64)
    take = torch.rand(64) < 0.3
    turns = torch.rand(64) - 0.5
    torch.testing.assert_close(views._hue_where(x, take, turns, sync_free=True),
                               views._hue_where(x, take, turns, sync_free=False))
    assert torch.equal(views._hue_where(x, take, turns)[~take], x[~take])
