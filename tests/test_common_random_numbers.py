"""Common random numbers and compute accounting (issue "Rankings with power").

For one seed every method on a backbone starts from the same initialisation, which is also the
random-init baseline's; sees the same source images in the same order; and is evaluated on the
same validation carve-out. Seed-to-seed noise that all methods share then cancels in a paired
comparison. Records carry the model FLOPs of pretraining."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from conftest import REPO, write_recipe
from sslbench.engine import StepBatches
from sslbench.eval.kinds import build_subject
from sslbench.eval.sampling import subsample_and_carve
from sslbench.recipe import load_recipe
from sslbench.run import build_method, pretrain
from sslbench.suite import load_suite

EMBEDDED = REPO / "recipes" / "embedded"
SUITE = REPO / "recipes" / "suites" / "embedded.yaml"


def _suite_recipes(backbone: str) -> list:
    _, cells = load_suite(SUITE)
    cfgs = [load_recipe(REPO / c.recipe, [*c.overrides, "train.seed=3"])
            for c in {c.recipe: c for c in cells}.values()]
    return [c for c in cfgs if c.backbone.name == backbone]


# Methods whose own initialisation of the backbone is part of the method, with the reason.
OWN_INIT = {"mae": "the official MAE encoder init (xavier_uniform, fixed 2-D sin-cos positions); "
                   "method.reinit_encoder=false keeps the shared initialisation"}


@pytest.mark.parametrize("backbone", ["test_resnet", "test_vit"])
def test_same_seed_same_initialisation_as_random_init(backbone):
    cfgs = _suite_recipes(backbone)
    assert len(cfgs) >= 5
    reference = build_subject(cfgs[0], "random_init").backbone.state_dict()
    for cfg in cfgs:
        state = build_method(cfg).backbone.state_dict()
        if cfg.method.name in OWN_INIT:  # deterministic per seed, but its own
            again = build_method(cfg).backbone.state_dict()
            assert all(torch.equal(state[k], again[k]) for k in state)
            continue
        assert state.keys() == reference.keys(), cfg.method.name
        for k in state:
            assert torch.equal(state[k], reference[k]), (cfg.method.name, k)
    other = copy.deepcopy(cfgs[0])
    other.train.seed = 4
    other_seed = build_method(other).backbone.state_dict()
    assert any(not torch.equal(other_seed[k], reference[k]) for k in reference)


def test_same_image_sequence_whatever_the_batch_size():
    """The suite's batch sizes (128, and 64 for rotation) read the same sequence of images."""
    n = 5388  # the embedded train split
    seq = {}
    for batch in (128, 64):
        steps = 40_960 // batch
        sampler = StepBatches(n, batch, seed=3, start=0, total=steps)
        seq[batch] = torch.cat([sampler.indices(s) for s in range(steps)])
    assert torch.equal(seq[128], seq[64])
    assert not torch.equal(seq[128], torch.cat([StepBatches(n, 128, 4, 0, 320).indices(s)
                                                for s in range(320)]))


def test_methods_see_the_same_batches(tmp_path, monkeypatch):
    seen: dict[str, list[list[int]]] = {}
    current = {"name": ""}
    original = StepBatches.indices

    def recording(self, step):  # the loop asks the sampler for each step's indices
        batch = original(self, step)
        seen.setdefault(current["name"], []).append(batch.tolist())
        return batch

    monkeypatch.setattr(StepBatches, "indices", recording)
    for name, method in [("simclr", {"name": "simclr"}),
                         ("rotation", {"name": "rotation"})]:
        current["name"] = name
        recipe = write_recipe(tmp_path / f"{name}.yaml", {"train": {"max_steps": 3, "seed": 5}})
        raw = yaml.safe_load(recipe.read_text())
        recipe.write_text(yaml.safe_dump({**raw, "method": method}))
        cfg = load_recipe(recipe)
        pretrain(cfg, {"name": name, "path": str(recipe), "sha256": "x"}, tmp_path / name,
                 quiet=True)
    assert len(seen["simclr"]) == 3 and seen["simclr"] == seen["rotation"]


def test_same_validation_carve_for_every_method():
    """The carve depends on the labels, groups, fraction and eval seed only."""
    labels = torch.arange(200) % 10
    groups = torch.arange(200) // 4
    a = subsample_and_carve(labels, groups, 0.5, 0.1, 0)
    b = subsample_and_carve(labels, groups, 0.5, 0.1, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    val_groups = set(groups[a[2]].tolist())
    assert not val_groups & set(groups[a[1]].tolist())  # carved by glyph


def test_pretraining_records_model_flops(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", {"train": {"max_steps": 2}})
    cfg = load_recipe(recipe)
    info = pretrain(cfg, {"name": "r", "path": str(recipe), "sha256": "x"}, tmp_path / "run",
                    quiet=True)
    fit = info["pretrain"]
    assert fit["flops_per_image"] > 0
    assert fit["total_flops"] == pytest.approx(fit["flops_per_image"] * fit["images_seen"])
    assert json.loads((tmp_path / "run" / "run.json").read_text())["pretrain"] == fit

    # the same count, independently: forward + backward of the method on one batch of views
    method = build_method(cfg)
    batch = cfg.train.batch_size
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    views = method.make_views(images)
    from sslbench.ssl.base import StepInfo

    counter = FlopCounterMode(display=False)
    with counter:
        method(views, StepInfo(0, 2, 84))["loss"].backward()
    assert fit["flops_per_image"] == pytest.approx(counter.get_total_flops() / batch)
    # SimCLR: two views of each image, forward + backward ~ 3x forward of the backbone
    backbone = build_method(cfg).backbone.eval()
    forward = FlopCounterMode(display=False)
    with forward, torch.no_grad():
        backbone(views[0][:1])
    assert 2 * 2.5 * forward.get_total_flops() < fit["flops_per_image"] < 2 * 3.5 * \
        forward.get_total_flops() + 2e6
