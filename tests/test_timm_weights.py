"""``--backbone timm:NAME`` baselines evaluate timm's own pretrained weights, read through
``timm.create_model(NAME, pretrained=True)``; ``backbone.checkpoint`` overrides them.

Offline throughout: ``HF_HUB_OFFLINE`` is set and the Hugging Face cache is a temporary
directory into which a test places tiny weights in the Hub's cache layout, where timm finds
them as it finds downloaded weights. huggingface_hub reads its environment at import, so the
fixture patches its constants as well as the environment.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from conftest import write_recipe
from sslbench.cli import main
from sslbench.errors import UserError
from sslbench.eval.features import file_hash
from sslbench.eval.kinds import build_subject
from sslbench.recipe import load_recipe

RESNET_HUB_ID = "timm/test_resnet.r160_in1k"  # timm's default weights of test_resnet
VIT_HUB_ID = "timm/test_vit.r160_in1k"


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline; torch.hub's cache moved aside too."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    for var, value in (("HF_HOME", tmp_path / "hf"), ("HF_HUB_CACHE", cache),
                       ("HUGGINGFACE_HUB_CACHE", cache), ("HF_HUB_OFFLINE", "1"),
                       ("TORCH_HOME", tmp_path / "torch")):
        monkeypatch.setenv(var, str(value))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def place_in_cache(cache: Path, repo_id: str, state: dict[str, torch.Tensor]) -> Path:
    """Write ``state`` as ``repo_id``'s model.safetensors in the Hub cache layout
    (``models--OWNER--NAME/{refs/main, snapshots/<commit>/}``); returns the file."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def timm_state(name: str, seed: int = 3) -> dict[str, torch.Tensor]:
    """A state dict of timm's ``name`` with its 1000-class head, as the Hub files have."""
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False).state_dict()


def _cfg(tmp_path: Path, *overrides: str, backbone: dict | None = None):
    recipe = write_recipe(tmp_path / "tiny.yaml", {"backbone": backbone} if backbone else None)
    return load_recipe(recipe, list(overrides))


def test_timm_weights_from_the_cache(hf_cache, tmp_path):
    state = timm_state("test_resnet")
    path = place_in_cache(hf_cache, RESNET_HUB_ID, state)
    subject = build_subject(_cfg(tmp_path), "timm:test_resnet")
    loaded = subject.backbone.model.state_dict()
    assert loaded.keys() == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    assert subject.pretrain == {"weights": f"hf-hub:{RESNET_HUB_ID}",
                                "weights_sha256": file_hash(path), "timm": timm.__version__}


def test_timm_weights_with_the_32px_variants(hf_cache, tmp_path):
    """A deep ResNet stem keeps its pretrained convs (the first loses its stride); a ViT gets
    patch 4 at 32 px from timm's own resampling of the pretrained patch embedding."""
    state = timm_state("test_resnet")
    place_in_cache(hf_cache, RESNET_HUB_ID, state)
    bb = build_subject(_cfg(tmp_path, backbone={"small_input": True}),
                       "timm:test_resnet").backbone
    assert bb.model.conv1[0].stride == (1, 1)
    assert torch.equal(bb.model.conv1[0].weight, state["conv1.0.weight"])
    vit = timm_state("test_vit")
    place_in_cache(hf_cache, VIT_HUB_ID, vit)
    bb = build_subject(_cfg(tmp_path, backbone={"small_input": True}), "timm:test_vit").backbone
    assert bb.patch_size == 4 and torch.equal(bb.model.cls_token, vit["cls_token"])


def test_missing_weights_one_line_naming_the_fixes(tmp_path, capsys):
    with pytest.raises(UserError) as e:
        build_subject(_cfg(tmp_path), "timm:test_resnet")
    msg = str(e.value)
    assert "\n" not in msg and RESNET_HUB_ID in msg
    assert "connect once" in msg and "backbone.checkpoint=PATH" in msg
    write_recipe(Path("tiny.yaml"))
    assert main(["eval", "tiny.yaml", "--backbone", "timm:test_resnet", "--protocol", "knn",
                 "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sslbench: error: ") and "connect once" in err
    assert not Path("runs").exists()  # no record written


def test_plain_stem_with_small_input_refused_before_any_download(tmp_path):
    with pytest.raises(UserError, match="backbone.small_input=false"):
        build_subject(_cfg(tmp_path, backbone={"name": "resnet18", "small_input": True}),
                      "timm:resnet18")


def test_checkpoint_overrides_timm_weights(tmp_path):
    """backbone.checkpoint still wins, and the (empty, offline) cache is never asked."""
    state = timm_state("test_resnet", seed=5)
    save_file(state, str(tmp_path / "w.safetensors"))
    subject = build_subject(_cfg(tmp_path, f"backbone.checkpoint={tmp_path / 'w.safetensors'}"),
                            "timm:test_resnet")
    assert torch.equal(subject.backbone.model.conv1[0].weight, state["conv1.0.weight"])
    assert subject.pretrain == {"checkpoint": "w.safetensors",
                                "checkpoint_sha256": file_hash(tmp_path / "w.safetensors")}


def test_cli_eval_records_the_weights(hf_cache):
    path = place_in_cache(hf_cache, RESNET_HUB_ID, timm_state("test_resnet"))
    write_recipe(Path("tiny.yaml"))
    assert main(["eval", "tiny.yaml", "--backbone", "timm:test_resnet", "--protocol", "knn",
                 "-q"]) == 0
    results = Path("runs/leaderboard/results")
    (record,) = [json.loads(p.read_text()) for p in results.rglob("*.json")]
    assert record["method"] == "timm:test_resnet" and record["backbone"] == "test_resnet"
    assert record["pretrain"]["weights"] == f"hf-hub:{RESNET_HUB_ID}"
    assert record["pretrain"]["weights_sha256"] == file_hash(path)
