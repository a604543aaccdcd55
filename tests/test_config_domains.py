"""Every value is checked against its domain when the recipe loads (issue 11): one line naming
the key, the bad value and the allowed values, before any data is read."""
from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import REPO, write_recipe
from sslbench.cli import main
from sslbench.config import RunConfig, checked, domain_problems, domain_rules, to_yaml
from sslbench.recipe import load_recipe
from sslbench.errors import UserError
from sslbench.ssl import METHODS, SSLMethod, get_method, list_methods, register_method


def _error(recipe: Path, overrides: list[str]) -> str:
    with pytest.raises(UserError) as e:
        load_recipe(recipe, overrides)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# (override, text the one-line message must contain besides "command line: <override key>=")
ISSUE_CASES = [
    ("train.max_steps=0", "must be a positive integer (or null to use train.epochs)"),
    ("train.max_steps=-5", "train.max_steps=-5 must be a positive integer"),
    ("train.batch_size=-4", "train.batch_size=-4 must be a positive integer"),
    ("train.batch_size=0", "must be a positive integer; e.g. train.batch_size=256"),
    ("optim.lr=0", "must be a positive number"),
    ("optim.lr=-0.1", "optim.lr=-0.1 must be a positive number"),
    ("train.precision=fp8", "must be one of auto, fp32, bf16, fp16"),
    ("eval.knn.k=0", "eval.knn.k=0 must be a positive integer"),
    ("data.image_size=0", "data.image_size=0 must be a positive integer"),
    ("eval.protocols=[linaer]", "did you mean 'linear'"),
]

RULE_CASES = [
    # counts
    ("train.epochs=0", "positive number"),
    ("train.checkpoint_every=0", "positive integer"),
    ("train.log_every=-1", "positive integer"),
    ("train.threads=0", "positive integer (or null"),
    ("eval.batch_size=0", "positive integer"),
    ("eval.linear.max_iter=0", "positive integer"),
    ("eval.linear_sgd.epochs=0", "positive integer"),
    ("eval.linear_sgd.batch_size=0", "positive integer"),
    ("eval.finetune.steps=0", "positive integer"),
    ("eval.finetune.batch_size=-2", "positive integer"),
    ("eval.lpft.steps=0", "positive integer"),
    ("eval.supervised.batch_size=0", "positive integer"),
    ("data.renders_per_train_glyph=0", "positive integer"),
    ("data.renders_per_test_glyph=0", "positive integer"),
    ("backbone.patch_size=0", "positive integer"),
    # non-negative
    ("data.num_workers=-1", "non-negative integer"),
    ("train.seed=-1", "non-negative integer"),
    ("eval.seeds=[0, -1]", "non-negative integer; got -1"),
    ("eval.feature_layer=-1", "non-negative integer"),
    ("optim.min_lr=-0.001", "non-negative number"),
    ("optim.weight_decay=-0.1", "non-negative number"),
    ("optim.weight_decay_end=-1", "non-negative number"),
    ("optim.warmup_epochs=-1", "non-negative number"),
    ("eval.linear_sgd.weight_decay=-1", "non-negative number"),
    ("eval.finetune.min_lr=-1", "non-negative number"),
    # probabilities and fractions
    ("eval.linear.val_fraction=0", "in (0, 1)"),
    ("eval.linear.val_fraction=1", "in (0, 1)"),
    ("eval.label_fractions=[0.5, 0]", "in (0, 1]"),
    ("eval.label_fractions=[1.5]", "in (0, 1]"),
    ("eval.label_fractions=[]", "non-empty list"),
    ("eval.linear_sgd.warmup_fraction=1.5", "in [0, 1]"),
    ("eval.finetune.warmup_fraction=-0.1", "in [0, 1]"),
    ("eval.finetune.flip_p=2", "in [0, 1]"),
    ("eval.finetune.label_smoothing=1", "in [0, 1)"),
    ("eval.finetune.layer_decay=0", "in (0, 1] (or null"),
    ("backbone.drop_path_rate=1", "in [0, 1)"),
    # learning rates and grids
    ("optim.lr=.inf", "positive number"),
    ("optim.lr=.nan", "positive number"),
    ("eval.linear_sgd.lr_grid=[0.1, -1]", "each a positive number; got -1"),
    ("eval.finetune.lr_grid=[]", "non-empty list"),
    ("eval.lpft.lr_grid=[0]", "positive number"),
    ("eval.supervised.lr_grid=[-0.001]", "positive number"),
    ("eval.linear.c_grid=[]", "non-empty list"),
    ("eval.linear.c_grid=[0.1, 0]", "each a positive number; got 0"),
    ("eval.knn.temperature=0", "positive number"),
    ("optim.trust_coefficient=0", "positive number"),
    ("eval.seeds=[]", "non-empty list"),
    # momentum and betas
    ("optim.momentum=1", "in [0, 1)"),
    ("eval.linear_sgd.momentum=-0.1", "in [0, 1)"),
    ("optim.betas=[0.9, 1.0]", "a list of 2 items, each a number in [0, 1)"),
    ("optim.betas=[0.9]", "a list of 2 items"),
    # crop scales (inherited by lpft / supervised from finetune)
    ("eval.finetune.crop_scale=[0.5, 0.2]", "0 < a <= b <= 1"),
    ("eval.lpft.crop_scale=[0, 1]", "0 < a <= b <= 1"),
    ("eval.supervised.crop_scale=[0.2, 1.5]", "0 < a <= b <= 1"),
    # closed sets
    ("train.device=gpu", "one of auto, cpu, cuda"),
    ("optim.name=adam", "did you mean 'adamw'"),
    ("optim.lr_scaling=lin", "one of linear, sqrt, none"),
    ("eval.finetune.optimizer=lars", "one of adamw, sgd"),
    ("eval.protocols=[]", "non-empty list"),
    ("eval.protocols=[knn, finetun]", "did you mean 'finetune'"),
    ("eval.baselines=[raw_pixel]", "did you mean 'raw_pixels'"),
    ("eval.baselines=['timm:']", "timm:NAME"),
    ("data.name=cifar11", "did you mean 'cifar10'"),
    ("data.std=[0.2, 0, 0.2]", "positive number"),
]


@pytest.mark.parametrize("override, needle", ISSUE_CASES + RULE_CASES,
                         ids=[c[0] for c in ISSUE_CASES + RULE_CASES])
def test_bad_value_names_key_value_and_domain(tiny_recipe, override, needle):
    msg = _error(tiny_recipe, [override])
    key = override.split("=", 1)[0]
    assert msg.startswith(f"command line: {key}="), msg
    assert " must be " in msg and needle in msg, msg


def test_issue_messages_exactly():
    assert _error(None, ["train.max_steps=-5"]) == (
        "command line: train.max_steps=-5 must be a positive integer (or null to use "
        "train.epochs)")
    assert _error(None, ["eval.protocols=[linaer]"]) == (
        "command line: eval.protocols=[linaer] must be a non-empty list, each one of linear, "
        "knn, linear_sgd, finetune, lpft; got linaer (did you mean 'linear'?)")


def test_unprintable_value_stays_on_one_line(tiny_recipe):
    msg = _error(tiny_recipe, ['train.precision="fp\\n8"'])  # YAML: a real newline
    assert "train.precision='fp\\n8' must be one of" in msg


def test_ood_set_kind_and_severity(tiny_recipe):
    msg = _error(tiny_recipe, ["data.ood_sets=[{name: a, kind: stl11}]"])
    assert msg.startswith("command line: data.ood_sets[0].kind=stl11 must be one of stl10,")
    assert "did you mean 'stl10'" in msg
    assert "data.ood_sets[1].severity=6" in _error(
        tiny_recipe, ["data.ood_sets=[{name: a}, {name: b, kind: cifar10_c, severity: 6}]"])


def test_vit_patch_size_must_divide_image_size(tiny_recipe):
    msg = _error(tiny_recipe, ["backbone.name=test_vit", "backbone.patch_size=5"])
    assert msg.startswith("command line: backbone.patch_size=5:")
    assert "not divisible by the ViT patch size" in msg
    msg = _error(tiny_recipe, ["backbone.name=test_vit", "backbone.patch_size=8",
                               "data.image_size=36"])
    assert "image size 36" in msg
    load_recipe(tiny_recipe, ["backbone.name=test_vit", "backbone.patch_size=8"])


def test_bad_value_in_recipe_file_names_the_file(tmp_path):
    p = write_recipe(tmp_path / "bad.yaml", {"train": {"batch_size": 0}})
    assert _error(p, []).startswith(f"{p}: train.batch_size=0 must be a positive integer")
    # a later source that fixes the value wins; one that breaks it is named
    load_recipe(p, ["train.batch_size=8"])
    p = write_recipe(tmp_path / "ok.yaml")
    assert _error(p, ["optim.lr=-1"]).startswith("command line: optim.lr=-1")


# one bad method value per method: (method, override, needle)
METHOD_CASES = [
    ("simclr", "method.temperature=0", "positive number"),
    ("simclr", "method.crop_scale=[0.5, 0.1]", "0 < a <= b <= 1"),
    ("greedy", "method.objective=nt_xnet", "did you mean 'nt_xent'"),
    ("greedy", "method.num_stages=0", "positive integer"),
    ("greedy", "method.temperature=-1", "positive number"),  # inherited from SimCLR
    ("moco_v2", "method.queue_size=0", "positive integer"),
    ("moco_v2", "method.momentum=1.5", "in [0, 1]"),
    ("moco_v2", "method.jitter=[0.4, 0.4, 0.4, 0.9]", "hue <= 0.5"),
    ("moco_v3", "method.momentum_end=-0.1", "in [0, 1]"),
    ("moco_v3", "method.solarize_p2=1.2", "in [0, 1]"),
    ("dino", "method.num_local_crops=-1", "non-negative integer"),
    ("dino", "method.teacher_temp=0", "positive number"),
    ("dino", "method.global_blur_p=[0.5]", "a list of 2 items"),
    ("dino", "method.local_crop_scale=[0.4, 0.05]", "0 < a <= b <= 1"),
    ("mae", "method.mask_ratio=1.0", "in (0, 1)"),
    ("mae", "method.mask_ratio=0", "in (0, 1)"),
    ("mae", "method.decoder_depth=0", "positive integer"),
    ("rotation", "method.crop=rcc", "did you mean 'rrc'"),
    ("rotation", "method.crop_padding=-1", "non-negative integer"),
    ("context", "method.pairs=centre", "did you mean 'center'"),
    ("context", "method.pixelate_p=1.5", "in [0, 1]"),
    ("context", "method.patch=0", "positive integer (or null"),
]


@pytest.mark.parametrize("method, override, needle", METHOD_CASES,
                         ids=[f"{m}:{o}" for m, o, _ in METHOD_CASES])
def test_bad_method_value(method, override, needle):
    load_recipe(None, [f"method.name={method}"])  # the method's defaults are fine
    msg = _error(None, [f"method.name={method}", override])
    key = override.split("=", 1)[0]
    assert msg.startswith(f"command line: {key}="), msg
    assert " must be " in msg and needle in msg, msg


def test_every_builtin_method_has_a_case_and_rules():
    # plugin files loaded by other tests register through the same decorator: go by module
    builtin = {n for n in list_methods() if METHODS.origin(n) == "built-in"
               and get_method(n).__module__.startswith("sslbench.ssl.")}
    assert builtin <= {m for m, _, _ in METHOD_CASES}
    for name in builtin:
        assert domain_rules(get_method(name).Config), name


def test_example_plugin_rules():
    try:
        importlib.metadata.distribution("sslbench-barlowtwins")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the example plugin is not installed (pip install -e examples/plugin_method)")
    recipe = REPO / "examples" / "plugin_method" / "recipes" / "embedded.yaml"
    load_recipe(recipe)
    msg = _error(recipe, ["method.proj_dim=0"])
    assert msg.startswith("command line: method.proj_dim=0 must be a positive integer")


def test_plugin_without_rules_still_loads():
    @dataclasses.dataclass
    class Config:
        width: int = 8
        scale: float = -1.0  # no domain declared: anything of the right type goes

    class NoRules(SSLMethod):
        pass

    NoRules.Config = Config
    register_method("domain_probe_norules")(NoRules)
    try:
        cfg = load_recipe(None, ["method.name=domain_probe_norules", "method.width=-3"])
        assert cfg.method.width == -3 and cfg.method.scale == -1.0
    finally:
        METHODS.unregister("domain_probe_norules")


def test_plugin_rules_through_checked():
    from sslbench.config import POS_INT

    @dataclasses.dataclass
    class Config:
        width: int = checked(POS_INT, 8)

    class WithRules(SSLMethod):
        pass

    WithRules.Config = Config
    register_method("domain_probe_rules")(WithRules)
    try:
        assert load_recipe(None, ["method.name=domain_probe_rules"]).method.width == 8
        assert _error(None, ["method.name=domain_probe_rules", "method.width=0"]) == (
            "command line: method.width=0 must be a positive integer; e.g. method.width=8")
    finally:
        METHODS.unregister("domain_probe_rules")


def test_defaults_are_in_domain():
    assert list(domain_problems(OmegaConf.structured(RunConfig), RunConfig)) == []
    for name in list_methods():
        cls = get_method(name).Config
        assert list(domain_problems(OmegaConf.structured(cls), cls)) == [], name
    load_recipe(None)


def test_saved_config_loads_again(tiny_recipe, tmp_path):
    cfg = load_recipe(tiny_recipe, ["train.max_steps=3"])
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(cfg))
    assert load_recipe(saved) == cfg


def test_unknown_protocol_is_refused_before_anything_runs(tiny_recipe, capsys):
    assert main(["run", str(tiny_recipe), "--out", "r", "eval.protocols=[linaer]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "eval.protocols=[linaer]" in err and "did you mean 'linear'" in err
    assert not Path("r").exists()
