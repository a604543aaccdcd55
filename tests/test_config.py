"""Recipe validation: strict keys and types, nearest-key hints, dotted overrides."""
from __future__ import annotations

import pytest

from conftest import REPO, write_recipe
from sslbench.config import parse_overrides
from sslbench.recipe import load_recipe
from sslbench.errors import UserError


def test_quickstart_recipe_loads_with_method_defaults():
    cfg = load_recipe(REPO / "recipes" / "quickstart.yaml")
    assert cfg.method.name == "simclr"
    assert cfg.method.proj_dim == 128
    assert cfg.method.color_strength == 0.5  # a default filled from SimCLR.Config
    assert cfg.data.name == "embedded"


def test_overrides_are_typed_and_nested(tiny_recipe):
    cfg = load_recipe(tiny_recipe, ["train.max_steps=9", "method.temperature=0.7",
                                    "eval.seeds=[0,1,2]", "backbone.kwargs={drop_rate: 0.1}"])
    assert cfg.train.max_steps == 9 and cfg.method.temperature == 0.7
    assert list(cfg.eval.seeds) == [0, 1, 2]
    assert cfg.backbone.kwargs.drop_rate == 0.1


def test_parse_overrides_values():
    ov = parse_overrides(["a.b=1", "c=hello", "d=[1, 2]", "e=null"])
    assert ov.a.b == 1 and ov.c == "hello" and list(ov.d) == [1, 2] and ov.e is None


@pytest.mark.parametrize("overrides, needle", [
    (["train.batchsize=3"], "did you mean 'train.batch_size'"),
    (["optim.lrr=0.1"], "did you mean 'optim.lr'"),
    (["method.temprature=0.1"], "did you mean 'method.temperature'"),
    (["trian.epochs=1"], "did you mean 'train'"),
    (["train.max_steps=abc"], "max_steps"),
    (["method.proj_dim=[1,2]"], "proj_dim"),
    (["method.name=simclrr"], "did you mean 'simclr'"),
    (["nokeyvalue"], "key=value"),
])
def test_bad_overrides_give_one_line_errors(tiny_recipe, overrides, needle):
    with pytest.raises(UserError) as e:
        load_recipe(tiny_recipe, overrides)
    msg = str(e.value)
    assert needle in msg
    assert "\n" not in msg


def test_typo_in_recipe_file_names_the_file(tmp_path):
    p = write_recipe(tmp_path / "bad.yaml", {"optim": {"weight_decya": 0.1}})
    with pytest.raises(UserError, match=r"bad.yaml.*unknown key 'optim.weight_decya'.*weight_decay"):
        load_recipe(p)


def test_missing_recipe_and_plugin(tmp_path):
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")
    p = write_recipe(tmp_path / "r.yaml", {"plugins": [str(tmp_path / "missing_plugin.py")]})
    with pytest.raises(UserError, match="plugin file not found"):
        load_recipe(p)
