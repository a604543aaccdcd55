"""Label fractions, linear_sgd, fine-tuning and LP-FT (docs/methods.md#label-fractions,
#linear-probe, #fine-tuning, #lp-ft).

Tiny and CPU-fast: timm ``test_resnet`` / ``test_vit``, synthetic 32 px images or the embedded
benchmark at 1 render per glyph, a handful of optimisation steps.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from conftest import write_recipe
from sslbench.backbones import create_backbone, save_backbone
from sslbench.config import (BackboneConfig, DataConfig, FinetuneConfig, LinearSGDConfig,
                             LPFTConfig, to_yaml)
from sslbench.datasets import TensorImageDataset
from sslbench.eval.features import cached_extract, extract, file_hash
from sslbench.eval.finetune import (build_classifier, init_head, predict, run_finetune,
                                    train_classifier)
from sslbench.eval.knn import run_knn
from sslbench.eval.linear import TOL, fit_logreg, run_linear, unstandardise
from sslbench.eval.linear_sgd import run_linear_sgd
from sslbench.eval.lpft import run_lpft
from sslbench.eval.sampling import carve_fit_val, label_fraction_indices, subsample_and_carve
from sslbench.leaderboard.record import record_path
from sslbench.recipe import load_recipe
from sslbench.views import Normalize

CPU = torch.device("cpu")
NORM = Normalize([0.5] * 3, [0.25] * 3)


@pytest.fixture(autouse=True)
def _one_thread():
    """These models are tiny: one intra-op thread is as fast and does not oversubscribe a busy
    2-core machine (where 2 spinning threads per process can be 10x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _backbone(name: str, small_input: bool = False):
    torch.manual_seed(0)
    cfg = BackboneConfig(name=name, small_input=small_input)
    return create_backbone(OmegaConf.structured(cfg), 32)


def _toy(n_per_class: int = 12, classes: int = 4, seed: int = 0, groups: bool = True):
    """Easy images: class c = a bright square in quadrant c, on noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = torch.randint(0, 80, (len(y), 3, 32, 32), generator=g, dtype=torch.uint8)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c % 4, 2)
        x[i, :, r * 16:(r + 1) * 16, q * 16:(q + 1) * 16] += 150
    grp = torch.arange(len(y)) // 2 if groups else None  # 2 "renders" per "glyph"
    return TensorImageDataset(x, y, [str(c) for c in range(classes)], grp, name=f"toy{seed}")


def _ft_cfg(cls=FinetuneConfig, **kw):
    return OmegaConf.structured(cls(**{"steps": 4, "batch_size": 16, "lr_grid": [1e-3],
                                       "drop_path": 0.0, **kw}))


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_bit_identical(before: dict, module: torch.nn.Module) -> None:
    after = module.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"{k} changed"


# -- label fractions and the validation carve ----------------------------------------------------

def test_label_fraction_is_stratified_seeded_nested_and_covers_every_class():
    counts = [5, 20, 40, 100, 3]
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    sub = label_fraction_indices(labels, 0.1, seed=0)
    per_class = torch.bincount(labels[sub], minlength=len(counts)).tolist()
    assert per_class == [max(1, round(0.1 * c)) for c in counts]  # >= 1 of every class
    assert torch.equal(sub, sub.unique())  # sorted, no repeats
    assert torch.equal(sub, label_fraction_indices(labels, 0.1, seed=0))  # same seed, same set
    assert not torch.equal(sub, label_fraction_indices(labels, 0.1, seed=1))
    # documented: for one seed the subsets nest (the 10% set is inside the 30% set)
    bigger = label_fraction_indices(labels, 0.3, seed=0)
    assert set(sub.tolist()) <= set(bigger.tolist())
    assert torch.equal(label_fraction_indices(labels, 1.0, seed=3), torch.arange(len(labels)))
    from sslbench.errors import UserError

    with pytest.raises(UserError):
        label_fraction_indices(labels, 0.0, seed=0)


def test_validation_is_carved_from_the_labelled_subset_by_group_never_from_test():
    from sslbench.datasets.embedded import build_embedded

    splits = build_embedded(DataConfig(renders_per_train_glyph=1, renders_per_test_glyph=1))
    train, test = splits["train"], splits["test"]
    for fraction in (1.0, 0.2):
        sub, fit, val = subsample_and_carve(train.labels, train.groups, fraction, 0.1, seed=0)
        assert set(fit.tolist()).isdisjoint(val.tolist())
        assert sorted(fit.tolist() + val.tolist()) == sub.tolist()  # within the subset only
        assert set(train.groups[fit].tolist()).isdisjoint(train.groups[val].tolist())
        assert set(train.groups[val].tolist()).isdisjoint(test.groups.tolist())  # test glyphs
        assert set(train.labels[fit].tolist()) == set(range(10))
    # at fraction 1 it is exactly the linear probe's historical carve
    from sslbench.eval.linear import carve_validation

    _, fit, val = subsample_and_carve(train.labels, train.groups, 1.0, 0.1, seed=0)
    tr, va = carve_validation(train.labels, train.groups, 0.1, 0)
    assert torch.equal(fit, tr) and torch.equal(val, va)


def test_carve_keeps_every_class_in_the_fit_split_at_tiny_fractions():
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3])
    groups = torch.arange(7)  # val fraction 0.5 would send whole classes to validation
    for seed in range(10):
        fit, val = carve_fit_val(labels, groups, 0.5, seed)
        assert set(labels[fit].tolist()) == {0, 1, 2, 3} and len(val) >= 1
        assert set(fit.tolist()).isdisjoint(val.tolist())


def test_record_path_adds_label_fraction_only_when_not_one():
    rec = {"recipe": {"name": "r"}, "method": "m", "backbone": "b", "protocol": "lpft", "seed": 0,
           "eval_seed": 1, "dataset": "d", "protocol_settings": {"label_fraction": 1.0}}
    assert record_path("x", rec).name == "r__m__b__lpft__seed0__ev1.json"
    rec["protocol_settings"] = {}
    assert record_path("x", rec).name == "r__m__b__lpft__seed0__ev1.json"
    rec["protocol_settings"] = {"label_fraction": 0.1}
    assert record_path("x", rec).name == "r__m__b__lpft__seed0__ev1__lf0.1.json"


# -- linear_sgd -----------------------------------------------------------------------------------

def test_linear_sgd_learns_is_scale_invariant_and_deterministic():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3

    def sample(n, scale=1.0):
        y = torch.randint(0, 4, (n,), generator=g)
        return (centers[y] + torch.randn(n, 16, generator=g)) * scale, y

    feats = {"train": sample(300), "val": sample(60), "test": sample(100), "ood": sample(50)}
    cfg = OmegaConf.structured(LinearSGDConfig(lr_grid=[0.01, 0.1], epochs=5, batch_size=64))
    m, s = run_linear_sgd(feats, 4, cfg, seed=0)
    assert m["acc"] > 0.9 and m["ood_acc"] > 0.9 and s["solver"] == "sgd+bn"
    assert s["chosen_lr"] in (0.01, 0.1) and s["chosen_val_acc_by_lr"][f"{s['chosen_lr']:g}"] == \
        m["val_acc"]
    assert run_linear_sgd(feats, 4, cfg, seed=0) == (m, s)
    # the BN whitening makes it insensitive to the feature scale
    scaled = {k: (x * 1000.0, y) for k, (x, y) in feats.items()}
    assert run_linear_sgd(scaled, 4, cfg, seed=0)[0]["acc"] > 0.9


# -- invariants of every protocol on the in-memory backbone -----------------------------------------

def test_no_protocol_modifies_the_backbone_weights_or_bn_buffers(tmp_path):
    bb = _backbone("test_resnet")
    before = _state(bb)
    train, test = _toy(seed=0), _toy(n_per_class=4, seed=1)
    fn = lambda x: bb(NORM(x))  # noqa: E731
    xtr, ytr = cached_extract(fn, train, CPU, 32, tmp_path, "k", module=bb)
    xte, yte = cached_extract(fn, test, CPU, 32, tmp_path, "k", module=bb)
    fit, val = carve_fit_val(ytr, train.groups, 0.25, 0)
    feats = {"train": (xtr[fit], ytr[fit]), "val": (xtr[val], ytr[val]), "test": (xte, yte)}
    run_linear(feats, 4, [0.1, 1.0], 20)
    run_knn({"train": (xtr, ytr), "test": (xte, yte)}, 4, 5, 0.1)
    run_linear_sgd(feats, 4, OmegaConf.structured(LinearSGDConfig(epochs=2)), 0)
    _assert_bit_identical(before, bb)  # frozen-feature protocols
    assert bb.training  # extraction restores the training flag
    ft = run_finetune(bb, 4, train, fit, val, {"test": test}, NORM, _ft_cfg(steps=2), 0, CPU,
                      512)[0]
    lin = SimpleNamespace(c_grid=[1.0], max_iter=20, extend_grid=2)
    lp = run_lpft(bb, 4, train, fit, val, {"test": test}, NORM, feats, lin,
                  _ft_cfg(LPFTConfig, steps=2, bn_eval=False), 0, CPU, 512)[0]
    _assert_bit_identical(before, bb)  # fine-tuning trains a copy
    assert 0 <= ft["acc"] <= 1 and 0 <= lp["acc"] <= 1 and "val_acc" in ft


# -- LP-FT --------------------------------------------------------------------------------------------

def test_unstandardised_head_gives_the_same_logits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64) * 5 + 3
    y = torch.randint(0, 3, (50,), generator=g)
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True)
    fit = fit_logreg((x - mean) / std, y, 3, c=1.0, max_iter=50, tol=TOL)
    w, b = fit.w, fit.b
    w2, b2 = unstandardise(w, b, mean, std)
    torch.testing.assert_close(x @ w2.T + b2, ((x - mean) / std) @ w.T + b)


def _lp_head(bb, train, fit, val, test):
    fn = lambda x: bb(NORM(x))  # noqa: E731
    xtr, ytr = extract(fn, train, CPU, 64, module=bb)
    xte, yte = extract(fn, test, CPU, 64, module=bb)
    feats = {"train": (xtr[fit], ytr[fit]), "val": (xtr[val], ytr[val]), "test": (xte, yte)}
    m, _, (w, b) = run_linear(feats, 4, [1.0], 50, refit=False, return_head=True)
    return m, w, b, xte @ w.T + b


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_lpft_step0_matches_the_linear_probe(name):
    bb = _backbone(name, small_input=True)  # ResNet 3x3 stem: build_classifier must adapt it
    train, test = _toy(seed=0), _toy(n_per_class=6, seed=1)
    fit, val = carve_fit_val(train.labels, train.groups, 0.25, 0)
    lp_metrics, w, b, lp_logits = _lp_head(bb, train, fit, val, test)
    model = build_classifier(bb, 4, drop_path_rate=0.1)
    init_head(model, weights=(w, b))
    logits, y = predict(model, test, NORM, CPU, 512)
    torch.testing.assert_close(logits, lp_logits, rtol=1e-4, atol=1e-4)
    assert float((logits.argmax(1) == y).float().mean()) == pytest.approx(lp_metrics["acc"])


def test_lpft_with_lr_zero_stays_the_linear_probe_only_with_bn_eval():
    bb = _backbone("test_resnet")
    train, test = _toy(seed=0), _toy(n_per_class=6, seed=1)
    fit, val = carve_fit_val(train.labels, train.groups, 0.25, 0)
    _, w, b, lp_logits = _lp_head(bb, train, fit, val, test)
    for bn_eval in (True, False):
        model = build_classifier(bb, 4)
        init_head(model, weights=(w, b))
        losses = train_classifier(model, train, fit, NORM, _ft_cfg(LPFTConfig), lr=0.0, seed=0,
                                  device=CPU, bn_eval=bn_eval, steps=5)
        assert len(losses) == 5
        logits, _ = predict(model, test, NORM, CPU, 512)
        if bn_eval:
            torch.testing.assert_close(logits, lp_logits, rtol=1e-4, atol=1e-4)
        else:
            # BN layers in train mode normalise with batch statistics and update their running
            # mean/var (momentum 0.1) on every forward pass, whatever the lr: the eval-mode
            # network then uses different statistics than the features the probe was fitted on.
            assert not torch.allclose(logits, lp_logits, rtol=1e-4, atol=1e-4)


# -- fine-tuning ----------------------------------------------------------------------------------

def test_finetune_changes_weights_and_lowers_the_train_loss():
    bb = _backbone("test_resnet")
    train = _toy(n_per_class=16, seed=0)
    model = build_classifier(bb, 4)
    init_head(model)
    start = _state(model)
    cfg = _ft_cfg(batch_size=32, crop_scale=[0.9, 1.0], warmup_fraction=0.0, label_smoothing=0.0)
    losses = train_classifier(model, train, torch.arange(len(train)), NORM, cfg, lr=3e-3, seed=0,
                              device=CPU, steps=25)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.startswith("conv1") for k in changed) and any("fc" in k for k in changed)
    assert any("running_mean" in k for k in changed)  # bn_eval false: BN stats follow the data


def test_vit_layer_decay_scales_follow_mae():
    from sslbench.eval.finetune import param_groups

    model = build_classifier(_backbone("test_vit"), 4)
    groups = param_groups(model, 0.05, 0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    depth = len(model.blocks)
    assert scale[id(model.head.weight)] == 1.0 and wd[id(model.head.weight)] == 0.05
    assert scale[id(model.blocks[-1].mlp.fc1.weight)] == 0.5
    assert scale[id(model.blocks[0].mlp.fc1.weight)] == 0.5 ** depth
    assert scale[id(model.pos_embed)] == 0.5 ** (depth + 1) and wd[id(model.pos_embed)] == 0.0
    assert wd[id(model.blocks[0].norm1.weight)] == 0.0


# -- end to end -----------------------------------------------------------------------------------

def test_evaluate_writes_finetune_lpft_linear_sgd_records(tmp_path):
    from sslbench.run import evaluate, recipe_info

    recipe = write_recipe(tmp_path / "tiny.yaml", {
        "data": {"renders_per_train_glyph": 1, "renders_per_test_glyph": 1},
        "eval": {"label_fractions": [0.25, 1.0], "batch_size": 256,
                 "linear_sgd": {"epochs": 2, "lr_grid": [0.1]},
                 "finetune": {"steps": 2, "batch_size": 32, "lr_grid": [1e-3]},
                 "lpft": {"steps": 2, "batch_size": 32, "lr_grid": [1e-4]}},
        "leaderboard": {"dir": "lb"}})
    cfg = load_recipe(recipe)
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))  # a run directory is bound to its config
    torch.manual_seed(0)
    weights = save_backbone(create_backbone(cfg.backbone, 32), run_dir / "backbone.safetensors")
    digest = file_hash(weights)
    records = evaluate(cfg, recipe_info(recipe), "run", run_dir,
                       protocols=["finetune", "lpft", "linear_sgd"], quiet=True)
    assert file_hash(weights) == digest  # the pretrained backbone on disk is untouched
    got = {(r["protocol"], r["protocol_settings"]["label_fraction"]) for r in records}
    assert got == {(p, f) for p in ("finetune", "lpft", "linear_sgd") for f in (0.25, 1.0)}
    files = sorted(p.name.rsplit("__", 1)[0] for p in Path("lb/results/embedded").glob("*.json"))
    assert files == sorted(f"tiny__simclr__test_resnet__{p}__seed0__ev0{lf}"
                           for p in ("finetune", "lpft", "linear_sgd") for lf in ("", "__lf0.25"))
    for r in records:
        assert {"acc", "ood_acc", "val_acc"} <= r["metrics"].keys()
        assert json.loads(record_path("lb/results", r).read_text())["protocol"] == r["protocol"]
    by = {(r["protocol"], r["protocol_settings"]["label_fraction"]): r for r in records}
    assert by[("linear_sgd", 1.0)]["protocol_settings"]["solver"] == "sgd+bn"
    assert by[("lpft", 1.0)]["protocol_settings"]["bn_eval"] is True
    assert by[("finetune", 0.25)]["protocol_settings"]["chosen_lr"] == 1e-3
    lp = by[("lpft", 1.0)]["protocol_settings"]
    assert lp["chosen_step0_val_acc"] == pytest.approx(lp["chosen_lp"]["val_acc"], abs=1e-6)
    # raw pixels have nothing to fine-tune: those protocols are skipped, not crashed
    pix = evaluate(cfg, recipe_info(recipe), "raw_pixels", None,
                   protocols=["finetune", "linear_sgd"], quiet=True)
    assert {r["protocol"] for r in pix} == {"linear_sgd"}


def _tiny_recipe(tmp_path, **eval_cfg):
    return write_recipe(tmp_path / "tiny.yaml", {
        "data": {"renders_per_train_glyph": 1, "renders_per_test_glyph": 1},
        "eval": {"batch_size": 256, **eval_cfg}, "leaderboard": {"dir": "lb"}})


def test_supervised_baseline_trains_from_scratch_with_its_own_budget(tmp_path):
    from sslbench.run import evaluate, recipe_info

    recipe = _tiny_recipe(tmp_path, supervised={"steps": 3, "batch_size": 32, "lr_grid": [3e-3]},
                          finetune={"steps": 1, "batch_size": 32, "lr_grid": [1e-4]})
    cfg = load_recipe(recipe)
    # whatever protocols are asked for, the supervised reference is the fine-tuning protocol
    records = evaluate(cfg, recipe_info(recipe), "supervised", None,
                       protocols=["linear", "knn"], quiet=True)
    assert [(r["method"], r["protocol"]) for r in records] == [("supervised", "finetune")]
    rec = records[0]
    assert rec["backbone"] == "test_resnet" and rec["pretrain"] is None
    assert rec["protocol_settings"]["steps"] == 3  # eval.supervised, not eval.finetune
    assert rec["protocol_settings"]["chosen_lr"] == 3e-3
    assert {"acc", "ood_acc", "val_acc"} <= rec["metrics"].keys()
    from sslbench.leaderboard.aggregation import is_baseline

    assert is_baseline(rec["method"])


def test_timm_baseline_needs_and_loads_local_weights(tmp_path):
    from sslbench.errors import UserError
    from sslbench.run import evaluate, recipe_info

    recipe = _tiny_recipe(tmp_path, knn={"k": 5})
    cfg = load_recipe(recipe)
    with pytest.raises(UserError, match="backbone.checkpoint=PATH"):
        evaluate(cfg, recipe_info(recipe), "timm:test_resnet", None, protocols=["knn"],
                 quiet=True)
    torch.manual_seed(1)
    weights = save_backbone(create_backbone(cfg.backbone, 32), tmp_path / "w.safetensors")
    torch.manual_seed(2)  # a different random net: what the baseline would be without weights
    other = save_backbone(create_backbone(cfg.backbone, 32), tmp_path / "other.safetensors")
    for w in (weights, other):
        cfg.backbone.checkpoint = str(w)
        (rec,) = evaluate(cfg, recipe_info(recipe), "timm:test_resnet", None, protocols=["knn"],
                          quiet=True)
        assert (rec["method"], rec["backbone"]) == ("timm:test_resnet", "test_resnet")
        assert rec["pretrain"] == {"checkpoint": w.name, "checkpoint_sha256": file_hash(w)}
    # the backbone is the file's weights, not a fresh init
    bb = create_backbone(cfg.backbone, 32)  # loads `other`
    cfg.backbone.checkpoint = None
    x = torch.rand(2, 3, 32, 32)
    from sslbench.backbones import load_weights

    ref = create_backbone(cfg.backbone, 32)
    load_weights(ref, other)
    assert torch.equal(bb.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_feature_layer_reads_intermediate_layers(name):
    from sslbench.errors import UserError

    bb = _backbone(name, small_input=name == "test_vit").eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(bb.features_at(x, None), bb(x))
        inter = bb.model.forward_intermediates(x, intermediates_only=True)
        assert len(inter) == bb.num_layers
        for i, f in enumerate(inter):
            assert torch.allclose(bb.features_at(x, i), f.mean(dim=(2, 3)))
        assert torch.allclose(bb.features_at(x, -1), inter[-1].mean(dim=(2, 3)))
    with pytest.raises(UserError, match="out of range"):
        bb.features_at(x, bb.num_layers)


def test_evaluate_with_a_feature_layer_records_it(tmp_path):
    from sslbench.run import evaluate, recipe_info

    recipe = _tiny_recipe(tmp_path, feature_layer=2, knn={"k": 5})
    cfg = load_recipe(recipe)
    (rec,) = evaluate(cfg, recipe_info(recipe), "random_init", None, protocols=["knn"],
                      quiet=True)
    assert rec["protocol_settings"]["feature_layer"] == 2
    # LP-FT's head is the final-layer probe: skipped, not run on the wrong features
    assert evaluate(cfg, recipe_info(recipe), "random_init", None, protocols=["lpft"],
                    quiet=True) == []
    cfg.eval.feature_layer = None
    (last,) = evaluate(cfg, recipe_info(recipe), "random_init", None, protocols=["knn"],
                       quiet=True)
    assert "feature_layer" not in last["protocol_settings"]
    assert f"__knn__seed0__ev0__layer2__{rec['identity_hash'][:10]}.json" in \
        record_path("lb/results", rec).name
    assert record_path("lb/results", rec).is_file() and record_path("lb/results", last).is_file()


# -- hyperparameter grids: a choice at the edge is flagged ---------------------------------------

def _lr(grid, chosen, accs):
    return {"lr_grid": grid, "chosen_lr": chosen,
            "chosen_val_acc_by_lr": {f"{g:g}": a for g, a in zip(grid, accs)}}


def test_grid_edge_flags_a_strict_best_at_either_end():
    from sslbench.eval import grid_edge

    note = grid_edge(_lr([1e-3, 3e-3, 1e-2], 1e-2, [0.5, 0.8, 0.9]))
    assert note == "lr 0.01 is the largest of lr_grid [0.001, 0.003, 0.01]: extend the grid upwards"
    lin = {"c_grid": [100.0, 0.01, 1.0], "chosen_C": 0.01,
           "chosen_val_acc_by_C": {"0.01": 0.7, "1": 0.6, "100": 0.5}}
    assert grid_edge(lin) == ("C 0.01 is the smallest of c_grid [0.01, 1, 100]: extend the grid "
                              "downwards")


def test_grid_edge_is_silent_inside_the_grid_on_ties_and_single_values():
    from sslbench.eval import grid_edge

    assert grid_edge(_lr([1e-3, 3e-3, 1e-2], 3e-3, [0.5, 0.9, 0.8])) is None  # interior
    assert grid_edge(_lr([1e-3, 3e-3], 1e-3, [0.7, 0.7])) is None  # tie: grid not binding
    assert grid_edge(_lr([1e-3], 1e-3, [0.7])) is None
    assert grid_edge({"k": 200}) is None  # k-NN: nothing chosen
