"""RotNet invariants (docs/methods.md#rotation-prediction; #test-checklist item 15)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslbench.errors import UserError
from sslbench.ssl.base import StepInfo
from sslbench.ssl.rotation import RotNet, all_rotations, rotate, rotation_labels

METHOD = RotNet  # the tiny_method fixture (conftest.py) builds it
INFO = StepInfo(step=0, total_steps=10, steps_per_epoch=5)


def _asymmetric(b: int = 1) -> torch.Tensor:
    return torch.arange(b * 3 * 32 * 32, dtype=torch.float32).view(b, 3, 32, 32)


def test_labels_exactly_uniform_and_interleaved():
    b = 5
    views, labels = all_rotations(torch.rand(b, 3, 32, 32))
    assert views.shape == (4 * b, 3, 32, 32)
    assert torch.bincount(labels, minlength=4).tolist() == [b] * 4
    assert torch.equal(labels, torch.arange(4 * b) % 4)
    assert torch.equal(rotation_labels(4 * b), labels)
    with pytest.raises(ValueError):
        rotation_labels(6)  # a batch must hold whole groups of 4


def test_interleaved_rows_are_the_rotations_of_their_image():
    x = torch.rand(3, 3, 32, 32)
    views, labels = all_rotations(x)
    for j in range(views.shape[0]):
        assert torch.equal(views[j], rotate(x[j // 4], int(labels[j])))


def test_rotation_group_identities():
    x = _asymmetric(2)
    assert torch.equal(rotate(rotate(x, 1), 3), x)
    assert torch.equal(rotate(x, 2), x.flip(-1).flip(-2))  # 180° = flip_h ∘ flip_v
    assert torch.equal(rotate(rotate(rotate(rotate(x, 1), 1), 1), 1), x)  # rot⁴ = id


def test_rotation_convention_is_numpy_rot90_counter_clockwise():
    x = _asymmetric()
    for k in range(4):
        ref = torch.from_numpy(np.rot90(x.numpy(), k, axes=(-2, -1)).copy())
        assert torch.equal(rotate(x, k), ref)
    # 90° counter-clockwise: the top-right corner moves to the top-left
    assert rotate(x, 1)[0, 0, 0, 0] == x[0, 0, 0, -1]


def test_four_distinct_rotations_of_an_asymmetric_image():
    views, _ = all_rotations(_asymmetric())
    flat = views.flatten(1)
    assert torch.unique(flat, dim=0).shape[0] == 4


def test_non_square_images_rejected():
    with pytest.raises(ValueError, match="square"):
        all_rotations(torch.rand(2, 3, 32, 24))


def test_make_views_augments_before_rotating(tiny_method):
    """Each group of 4 is one augmented image in 4 rotations (padding placed before rotation),
    and the crops differ between samples (per-sample kornia parameters)."""
    m = tiny_method()
    images = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(8, 3, 32, 32)
    torch.manual_seed(1)
    views = m.make_views(images.contiguous())
    assert views.shape == (32, 3, 32, 32) and views.dtype == torch.float32
    for i in range(8):
        for k in range(4):
            assert torch.equal(views[4 * i + k], rotate(views[4 * i], k))
    assert torch.unique(views[0::4].flatten(1), dim=0).shape[0] > 1


def test_views_are_normalised_with_the_data_statistics(tiny_method):
    m = tiny_method(crop_padding=0, flip_p=0.0)  # augmentation is the identity
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    views = m.make_views(images)
    expected = (images.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(views[0::4], expected)


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_chance_loss_with_zero_head_is_ln4(tiny_method, family):
    m = tiny_method(family)
    torch.nn.init.zeros_(m.head.weight)
    torch.nn.init.zeros_(m.head.bias)
    views = m.make_views(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))
    out = m(views, INFO)
    assert out["loss"].item() == pytest.approx(1.386294, abs=1e-6)
    assert out["loss"].item() == pytest.approx(math.log(4), abs=1e-6)
    assert out["loss"].dtype == torch.float32


def test_small_random_head_is_near_chance_and_everything_gets_gradients(tiny_method):
    m = tiny_method()
    views = m.make_views(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    out = m(views, INFO)
    assert abs(out["loss"].item() - math.log(4)) < 0.5
    assert 0.0 <= out["acc"].item() <= 1.0
    out["loss"].backward()
    assert m.head.weight.grad is not None and m.head.weight.grad.abs().sum() > 0
    grads = [p.grad for p in m.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_rrc_crop_and_bad_crop_name(tiny_method):
    m = tiny_method(crop="rrc", flip_p=0.0)
    views = m.make_views(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert views.shape == (8, 3, 32, 32)
    with pytest.raises(UserError, match="crop"):
        tiny_method(crop="center")
