"""Context-prediction invariants (docs/methods.md#context-prediction; #test-checklist item 16)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from sslbench.errors import UserError
from sslbench.ssl.base import StepInfo
from sslbench.ssl.context import (ContextPrediction, GridGeometry, default_geometry, drop_colour,
                                  extract_patches, grid_position, label_offset,
                                  normalise_patches, offset_label, pair_table, pixelate,
                                  sample_grid)

METHOD = ContextPrediction  # the tiny_method fixture (conftest.py) builds it
INFO = StepInfo(step=0, total_steps=10, steps_per_epoch=5)
NEIGHBOURS = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dx, dy) != (0, 0)]
SPEC_LABELS = {(-1, -1): 0, (0, -1): 1, (1, -1): 2, (-1, 0): 3, (1, 0): 4, (-1, 1): 5,
               (0, 1): 6, (1, 1): 7}


# -- labels ------------------------------------------------------------------------------------

def test_label_layout_is_the_spec_table():
    assert {d: offset_label(*d) for d in NEIGHBOURS} == SPEC_LABELS
    assert all(label_offset(lbl) == d for d, lbl in SPEC_LABELS.items())
    with pytest.raises(ValueError):
        offset_label(0, 0)
    with pytest.raises(ValueError):
        offset_label(2, 0)


def test_opposite_offsets_sum_to_7():
    for dx, dy in NEIGHBOURS:
        assert offset_label(dx, dy) + offset_label(-dx, -dy) == 7


def test_center_pairs_cover_each_label_once():
    first, second, labels = pair_table("center")
    assert first.tolist() == [4] * 8
    assert sorted(labels.tolist()) == list(range(8))
    assert torch.bincount(labels, minlength=8).tolist() == [1] * 8  # uniform


@pytest.mark.parametrize("pairs, count", [("center_both", 16), ("all", 40)])
def test_swapping_a_pair_maps_label_to_7_minus_label(pairs, count):
    first, second, labels = pair_table(pairs)
    assert len(labels) == count
    table = {(int(i), int(j)): int(lbl) for i, j, lbl in zip(first, second, labels)}
    for (i, j), lbl in table.items():
        (xi, yi), (xj, yj) = grid_position(i), grid_position(j)
        assert lbl == offset_label(xj - xi, yj - yi)  # label = where the second one lies
        assert table[(j, i)] == 7 - lbl
    if pairs == "center_both":
        assert torch.bincount(labels, minlength=8).tolist() == [2] * 8


def test_bad_pairing_name():
    with pytest.raises(UserError, match="pairs"):
        pair_table("random")


# -- geometry ----------------------------------------------------------------------------------

@pytest.mark.parametrize("size, expected", [(32, (8, 3, 1)), (64, (18, 4, 1)),
                                            (224, (61, 16, 4))])
def test_default_geometry(size, expected):
    geo = default_geometry(size)
    assert (geo.patch, geo.gap, geo.jitter) == expected
    assert geo.gap - 2 * geo.jitter > 0  # no overlap, ever
    assert geo.slack >= 0  # fits without clamping


def test_invalid_geometry_is_a_user_error():
    with pytest.raises(UserError, match="exceed"):
        default_geometry(32, patch=9, gap=2, jitter=1)  # gap - 2 jitter = 0: patches may touch
    with pytest.raises(UserError, match="image size"):
        default_geometry(32, patch=10, gap=3, jitter=1)  # 30 + 6 + 2 > 32


@pytest.mark.parametrize("size", [32, 224])
def test_patches_in_bounds_and_never_overlap(size):
    torch.manual_seed(0)
    geo = default_geometry(size)
    corners = sample_grid(4000, geo)  # (B, 9, 2) as (y, x)
    assert corners.min() >= 0
    assert corners.max() <= size - geo.patch
    for i, j in itertools.combinations(range(9), 2):
        ci, cj = corners[:, i], corners[:, j]
        separated = ((ci - cj).abs() >= geo.patch + 1).any(dim=1)  # a gap on some axis
        assert separated.all(), (i, j)
    # the jitter is really used, with every integer offset in [-j, j]
    offsets = corners[:, 4] - corners[:, 3]  # centre minus left neighbour
    assert offsets[:, 1].unique().numel() == 4 * geo.jitter + 1


@pytest.mark.parametrize("pairs", ["center_both", "all"])
def test_labels_agree_with_sampled_pixel_positions(pairs):
    """The method's pair construction: the label says where the second patch really is."""
    torch.manual_seed(0)
    geo = default_geometry(32)
    corners = sample_grid(500, geo).float()
    first, second, labels = pair_table(pairs)
    delta = corners[:, second] - corners[:, first]  # (B, P, 2) as (dy, dx)
    for p, lbl in enumerate(labels.tolist()):
        dx, dy = label_offset(lbl)
        for d, g in ((delta[:, p, 1], dx), (delta[:, p, 0], dy)):
            if g == 0:
                assert (d.abs() <= 2 * geo.jitter).all()
            else:
                assert (d * g >= geo.patch + geo.min_separation).all()
        # swapping the pair flips the offset, i.e. maps the label to 7 - label
        assert offset_label(-dx, -dy) == 7 - lbl


def test_extract_patches_reads_the_right_pixels():
    size = 32
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    img = torch.stack([yy, xx, yy * size + xx]).float()  # (3, S, S): pixels encode position
    x = torch.stack([img, img + 1000])  # (2, 3, S, S)
    torch.manual_seed(0)
    geo = default_geometry(size)
    corners = sample_grid(2, geo)
    patches = extract_patches(x, corners, geo.patch)  # (2, 9, 3, p, p)
    assert patches.shape == (2, 9, 3, geo.patch, geo.patch)
    for b, k in itertools.product(range(2), range(9)):
        y0, x0 = corners[b, k].tolist()
        torch.testing.assert_close(patches[b, k], x[b, :, y0:y0 + geo.patch, x0:x0 + geo.patch])


# -- shortcut guards ---------------------------------------------------------------------------

def test_colour_drop_keeps_one_mean_free_channel_and_patch_norm_fixes_rms():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8) + 3.0
    out = drop_colour(x, torch.tensor(0.01))
    kept = out.std(dim=(2, 3)) > 0.1  # (N, 3)
    assert kept.sum(1).tolist() == [1] * 64  # exactly one channel survives per patch
    assert out.abs()[~kept[:, :, None, None].expand_as(out)].max() <= 0.005  # the rest is noise
    assert out.mean(dim=(2, 3))[kept].abs().max() < 1e-5  # kept channel is mean-subtracted
    assert kept.sum(0).min() > 5  # the kept channel is random
    normed = normalise_patches(out, 1.0)
    rms = normed.square().mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.ones(64))


def test_pixelate_only_when_asked_and_only_on_large_patches():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 24, 24)
    assert torch.equal(pixelate(x, 0.0), x)
    small = torch.rand(4, 3, 8, 8)
    assert torch.equal(pixelate(small, 1.0), small)  # 8 px < 100 pixels: nothing to do
    out = pixelate(x, 1.0)
    assert out.shape == x.shape
    assert all(not torch.equal(out[i], x[i]) for i in range(16))


def test_make_views_shape_and_per_patch_normalisation(tiny_method):
    m = tiny_method()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(0)
    views = m.make_views(images)
    assert views.shape == (3, 9, 3, 8, 8)
    rms = views.square().mean(dim=(2, 3, 4)).sqrt()
    torch.testing.assert_close(rms, torch.ones(3, 9))


def test_vit_patch_input_size_is_backbone_compatible(tiny_method):
    m = tiny_method("vit")
    assert m.input_size == 8  # 8 px patches, ViT patch 4
    m16 = tiny_method("vit", patch_input_size=16)
    views = m16.make_views(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert views.shape == (2, 9, 3, 16, 16)
    assert torch.isfinite(m16(views, INFO)["loss"])
    with pytest.raises(UserError, match="multiple"):
        tiny_method("vit", patch_input_size=10)


def test_geometry_dataclass_reports_slack():
    assert GridGeometry(32, 8, 3, 1).slack == 0
    assert GridGeometry(224, 61, 16, 4).slack == 1


# -- loss and gradients ------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_chance_loss_with_zero_last_layer_is_ln8(tiny_method, family):
    m = tiny_method(family)
    torch.nn.init.zeros_(m.head[-1].weight)
    views = m.make_views(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    out = m(views, INFO)
    assert out["loss"].item() == pytest.approx(2.079442, abs=1e-6)
    assert out["loss"].item() == pytest.approx(math.log(8), abs=1e-6)


def test_swapped_features_give_the_swapped_pairs_logits(tiny_method):
    """Pair (a, b) and its swap (b, a) feed the head the concatenation in opposite orders."""
    m = tiny_method(pairs="center_both").eval()
    first, second, labels = m.first, m.second, m.labels
    h = torch.randn(2, 9, m.backbone.num_features)
    logits = m.pair_logits(h)  # (2, 16, 8)
    for p in range(len(labels)):
        q = int(((first == second[p]) & (second == first[p])).nonzero())
        assert int(labels[q]) == 7 - int(labels[p])
        manual = m.head(torch.cat([h[:, second[p]], h[:, first[p]]], dim=-1))
        torch.testing.assert_close(logits[:, q], manual)


def test_shared_backbone_gets_gradients_from_both_patches(tiny_method):
    m = tiny_method()
    views = m.make_views(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    views.requires_grad_(True)
    out = m(views, INFO)
    assert abs(out["loss"].item() - math.log(8)) < 1.0
    out["loss"].backward()
    # every patch of the grid (centre and all neighbours) influences the loss
    assert (views.grad.abs().sum(dim=(2, 3, 4)) > 0).all()
    grads = [p.grad for p in m.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert m.head[0].weight.grad.abs().sum() > 0
    # pair-table buffers are not checkpoint state
    assert not any(k in m.state_dict() for k in ("first", "second", "labels"))
