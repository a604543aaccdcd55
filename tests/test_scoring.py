"""Accuracy and its standard error by a bootstrap over groups (sslbench.eval.scoring)."""
from __future__ import annotations

import math

import pytest
import torch

from sslbench.eval.scoring import bootstrap_se, eval_set_sizes, group_totals, metric_name, score


def test_metric_names():
    assert metric_name("test") == "acc" and metric_name("ood") == "ood_acc"
    metrics, kept = {}, {}
    score(metrics, "ood", torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 0]), kept)
    assert metrics == {"ood_acc": 0.5} and torch.equal(kept["ood"], torch.tensor([1, 2, 3, 4]))


def test_group_totals():
    hits, count = group_totals(torch.tensor([1, 0, 1, 1, 0]), torch.tensor([7, 7, 3, 3, 9]))
    assert hits.tolist() == [2.0, 1.0, 0.0] and count.tolist() == [2.0, 2.0, 1.0]  # ids 3, 7, 9


def test_independent_images_give_the_binomial_se():
    n, p = 4000, 0.6
    correct = torch.rand(n, generator=torch.Generator().manual_seed(1)) < p
    expected = math.sqrt(p * (1 - p) / n)  # 0.0077
    assert bootstrap_se(correct, None) == pytest.approx(expected, rel=0.08)


def test_correlated_renders_count_once():
    """4 renders of each of 500 glyphs, every glyph all right or all wrong: the information is
    that of 500 cases, not 2,000; the SE is twice the naive binomial one."""
    glyph_right = torch.rand(500, generator=torch.Generator().manual_seed(2)) < 0.5
    correct = glyph_right.repeat_interleave(4)
    groups = torch.arange(500).repeat_interleave(4)
    p = float(correct.float().mean())
    naive = math.sqrt(p * (1 - p) / 2000)
    se = bootstrap_se(correct, groups)
    assert se == pytest.approx(math.sqrt(p * (1 - p) / 500), rel=0.08)
    assert se == pytest.approx(2 * naive, rel=0.08)
    assert bootstrap_se(correct, groups) == se  # fixed seed: reproducible


def test_eval_set_sizes():
    from sslbench.datasets import TensorImageDataset

    ds = TensorImageDataset(torch.zeros(6, 3, 4, 4, dtype=torch.uint8), torch.zeros(6),
                            ["a"], groups=torch.tensor([0, 0, 1, 1, 2, 2]))
    plain = TensorImageDataset(torch.zeros(3, 3, 4, 4, dtype=torch.uint8), torch.zeros(3), ["a"])
    assert eval_set_sizes({"test": ds, "x": plain}) == {"test": {"images": 6, "groups": 3},
                                                        "x": {"images": 3, "groups": 3}}


def test_records_carry_standard_errors_and_set_sizes(tiny_recipe, tmp_path):
    """A run's linear and k-NN records name each accuracy's bootstrap SE and the set sizes."""
    from sslbench.recipe import load_recipe
    from sslbench.run import run

    cfg = load_recipe(tiny_recipe, ["train.max_steps=2", "eval.baselines=[raw_pixels]",
                                    f"leaderboard.dir={tmp_path / 'lb'}"])
    records, _ = run(cfg, {"name": "tiny", "path": str(tiny_recipe), "sha256": "x"},
                     tmp_path / "run", quiet=True)
    assert {r["protocol"] for r in records} == {"linear", "knn"}
    for rec in records:
        sizes = rec["eval_sets"]
        assert sizes["test"] == {"images": 450 * 2, "groups": 450} == sizes["ood"]  # TINY's
        acc, se = rec["metrics"]["acc"], rec["metrics"]["acc_se"]
        # between the SE of 900 independent images and that of 450 all-or-nothing glyphs
        assert math.sqrt(acc * (1 - acc) / 900) * 0.9 < se < math.sqrt(acc * (1 - acc) / 450)
        assert 0 < rec["metrics"]["ood_acc_se"] < 0.05
