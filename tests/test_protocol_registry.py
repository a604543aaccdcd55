"""Protocols behind a registry: one module each, declared needs, one entry point.

A throwaway ``nearest_centroid`` protocol, registered here, goes the whole way a real one goes:
the config's domain rule, ``sslbench eval``, ``evaluate`` on a random-init backbone, a valid v2
record, and the suite runner's list of expected records.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import write_recipe
from sslbench.errors import UserError
from sslbench.eval.protocol import (PROTOCOLS, EvalContext, Result, get_protocol,
                                    protocol_names, register_protocol)

BUILTINS = ("linear", "knn", "linear_sgd", "finetune", "lpft")


def nearest_centroid(ctx: EvalContext) -> Result:
    """Each class's mean fit-split feature; an image gets the class of the nearest mean."""
    feats = ctx.features()
    x, y = feats["train"]
    centroids = torch.stack([x[y == c].mean(0) for c in range(ctx.num_classes)])
    metrics = {}
    for split, (xs, ys) in feats.items():
        if split != "train":
            pred = torch.cdist(xs, centroids).argmin(1)
            metrics["acc" if split == "test" else f"{split}_acc"] = float((pred == ys).float()
                                                                          .mean())
    return metrics, {"distance": "euclidean", "val_split": ctx.val_split}


@pytest.fixture
def centroid():
    register_protocol("nearest_centroid", frozen_features=True)(nearest_centroid)
    yield get_protocol("nearest_centroid")
    PROTOCOLS.unregister("nearest_centroid")


def _recipe(tmp_path, **eval_cfg) -> Path:
    return write_recipe(tmp_path / "tiny.yaml", {
        "data": {"renders_per_train_glyph": 1, "renders_per_test_glyph": 1},
        "eval": {"batch_size": 256, "knn": {"k": 5}, **eval_cfg},
        "leaderboard": {"dir": "lb"}})


def test_builtins_are_one_module_each_in_a_fixed_order():
    import sslbench.run as run_mod

    assert protocol_names() == BUILTINS == tuple(run_mod.PROTOCOLS)
    for name in BUILTINS:
        assert get_protocol(name).run.__module__ == f"sslbench.eval.{name}"
        assert PROTOCOLS.origin(name) == "built-in"
    frozen = {n for n in BUILTINS if get_protocol(n).frozen_features}
    backbone = {n for n in BUILTINS if get_protocol(n).needs_backbone}
    assert frozen == {"linear", "knn", "linear_sgd", "lpft"}
    assert backbone == {"finetune", "lpft"}
    assert [n for n in BUILTINS if get_protocol(n).skip_with_feature_layer] == ["lpft"]


def test_each_kind_runs_the_protocols_it_can():
    from sslbench.eval.kinds import BASELINES, kind_of, protocols_for, skip_notes

    def names(kind, layer=None):
        return [p.name for p in protocols_for(kind, list(BUILTINS), layer)]

    assert names("run") == names("random_init") == names("timm:x") == list(BUILTINS)
    assert names("raw_pixels") == ["linear", "knn", "linear_sgd"]
    assert names("supervised") == names("supervised", 2) == ["finetune"]
    assert names("run", 2) == ["linear", "knn", "linear_sgd", "finetune"]
    assert skip_notes("raw_pixels", list(BUILTINS), None) == [
        "note: finetune, lpft skipped for raw_pixels (no backbone to fine-tune)"]
    assert skip_notes("run", ["lpft"], 2) == [
        "note: lpft skipped with eval.feature_layer=2 (LP-FT starts from the probe on the final "
        "representation; run it with feature_layer null)"]
    assert BASELINES == ("raw_pixels", "random_init", "supervised")
    with pytest.raises(UserError, match="unknown --backbone 'randm'.*random"):
        kind_of("randm")


def test_a_second_protocol_under_a_taken_name_is_refused(centroid):
    register_protocol("nearest_centroid", frozen_features=True)(nearest_centroid)  # same: fine

    def other(ctx):
        return {}, {}

    with pytest.raises(UserError, match="registered twice"):
        register_protocol("nearest_centroid")(other)
    assert get_protocol("nearest_centroid").run is nearest_centroid


def test_a_protocol_registered_in_a_test_runs_end_to_end(tmp_path, centroid, capsys):
    from sslbench.cli import main
    from sslbench.recipe import load_recipe
    from sslbench.leaderboard.record import record_path, schema_problems
    from sslbench.run import evaluate, expected_records, recipe_info

    recipe = _recipe(tmp_path, protocols=["nearest_centroid", "knn"], label_fractions=[0.5, 1.0])
    cfg = load_recipe(recipe)  # the domain rule of eval.protocols reads the registry
    assert protocol_names()[-1] == "nearest_centroid"
    records = evaluate(cfg, recipe_info(recipe), "random_init", None, quiet=True)
    assert [(r["protocol"], r["protocol_settings"]["label_fraction"]) for r in records] == [
        ("nearest_centroid", 0.5), ("knn", 0.5), ("nearest_centroid", 1.0), ("knn", 1.0)]
    for rec in records:
        path = record_path("lb/results", rec)
        assert json.loads(path.read_text()) == rec and schema_problems(rec) == []
        assert rec["schema_version"] == 2 and rec["identity"]["protocol"] == rec["protocol"]
        assert (rec["method"], rec["backbone"], rec["backbone_family"]) == (
            "random_init", "test_resnet", "resnet")
    centroid_rec = records[2]
    assert set(centroid_rec["metrics"]) == {"acc", "ood_acc", "val_acc"}
    assert centroid_rec["protocol_settings"] == {
        "distance": "euclidean", "val_split": {"fraction": 0.1, "by_group": True},
        "label_fraction": 1.0}
    # the suite runner expects exactly these records (benchmark._done)
    expected = expected_records(cfg, recipe_info(recipe), "random_init")
    assert sorted(r["identity_hash"] for r in expected) == \
        sorted(r["identity_hash"] for r in records)
    # a feature layer is part of the identity of a frozen-feature protocol
    cfg.eval.feature_layer, cfg.eval.label_fractions = 1, [1.0]
    (layered,) = evaluate(cfg, recipe_info(recipe), "random_init", None,
                          protocols=["nearest_centroid"], quiet=True)
    assert layered["protocol_settings"]["feature_layer"] == 1
    assert layered["identity_hash"] != centroid_rec["identity_hash"]
    # and the CLI takes it like a built-in
    capsys.readouterr()
    assert main(["eval", str(recipe), "--backbone", "pixels", "--protocol", "nearest_centroid",
                 "leaderboard.dir=lb2"]) == 0
    assert "nearest_centroid" in capsys.readouterr().out
    assert len(list(Path("lb2/results/embedded").glob("*__nearest_centroid__*.json"))) == 2


def test_a_recipe_plugin_file_registers_a_protocol(tmp_path):
    from sslbench.recipe import load_recipe

    plugin = tmp_path / "my_protocol.py"
    plugin.write_text(
        "from sslbench.eval.protocol import register_protocol\n\n\n"
        "@register_protocol('always_zero')\n"
        "def always_zero(ctx):\n"
        "    return {'acc': 0.0}, {}\n")
    try:
        cfg = load_recipe(_recipe(tmp_path, protocols=["always_zero"]),
                          [f"plugins=[{plugin}]"])
        assert list(cfg.eval.protocols) == ["always_zero"]
        assert not get_protocol("always_zero").frozen_features
        assert PROTOCOLS.origin("always_zero").startswith("sslbench_plugin_my_protocol")
    finally:
        PROTOCOLS.unregister("always_zero")
    with pytest.raises(UserError, match="always_zero"):
        load_recipe(_recipe(tmp_path, protocols=["always_zero"]))
