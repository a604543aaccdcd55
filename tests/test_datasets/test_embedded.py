"""The embedded benchmark: deterministic, split by glyph, with a shifted OOD split."""
from __future__ import annotations

import torch

from sslbench.config import DataConfig
from sslbench.datasets.embedded import build_embedded


def test_shapes_and_sizes():
    s = build_embedded(DataConfig())
    assert set(s) == {"train", "test", "ood"}
    assert s["train"].images.shape == (898 * 6, 3, 32, 32)  # 5,388 as with 1,347 x 4 before
    assert s["test"].images.shape == (899 * 12, 3, 32, 32)
    assert s["ood"].images.shape == s["test"].images.shape
    assert s["train"].images.dtype == torch.uint8
    counts = torch.bincount(s["train"].labels, minlength=10)
    assert counts.min() > 0.8 * counts.float().mean()  # stratified


def test_deterministic_and_seeded():
    from sslbench.datasets.embedded import _build

    a = _build.__wrapped__(32, 1, 1, 0.25, seed=0)  # uncached: built twice
    b = _build.__wrapped__(32, 1, 1, 0.25, seed=0)
    c = _build.__wrapped__(32, 1, 1, 0.25, seed=1)
    assert torch.equal(a["train"].images, b["train"].images)
    assert torch.equal(a["ood"].images, b["ood"].images)
    assert not torch.equal(a["train"].images, c["train"].images)


def test_split_by_glyph():
    s = build_embedded(DataConfig())
    train_glyphs, test_glyphs = set(s["train"].groups.tolist()), set(s["test"].groups.tolist())
    assert not train_glyphs & test_glyphs
    assert set(s["ood"].groups.tolist()) == test_glyphs
    assert len(train_glyphs) + len(test_glyphs) == 1797


def test_ood_is_shifted():
    s = build_embedded(DataConfig())
    # in-distribution renders are grey-ish (low saturation); OOD uses saturated colours
    def saturation(x):
        x = x.float() / 255
        return (x.max(1).values - x.min(1).values).mean().item()

    assert saturation(s["ood"].images) > 2 * saturation(s["test"].images)
    # renders of the same glyph differ (nuisances applied per render)
    g = s["train"].groups
    first = (g == g[0]).nonzero().squeeze(1)
    assert len(first) == 6 and not torch.equal(s["train"].images[first[0]],
                                                s["train"].images[first[1]])
