"""``sslbench export RUN_DIR OUT_DIR``: a run as a timm / Hugging Face Hub model folder.

The runs are built without training: a tiny backbone from ``create_backbone`` with perturbed
weights and BatchNorm statistics, saved with ``save_backbone`` next to the ``config.yaml`` and
``run.json`` that ``run._pretrain`` writes. Loading goes through timm's own ``local-dir:``
source (offline), and must give the features sslbench's ``load_backbone`` gives.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import yaml

from conftest import make_record_v2, write_recipe
from sslbench.backbones import create_backbone, load_backbone, save_backbone
from sslbench.cli import main
from sslbench.config import to_dict, to_yaml
from sslbench.errors import UserError
from sslbench.export import EXPORT_FILES, SMALL_INPUT_ARG, export_run, load_export
from sslbench.identity import config_hash
from sslbench.recipe import load_recipe
from sslbench.run import recipe_info
from sslbench.utils import provenance

try:  # timm >= 1.0.16 reads "local-dir:" model folders
    from timm.models._hub import load_model_config_from_path  # noqa: F401
    HAS_LOCAL_DIR = True
except ImportError:
    HAS_LOCAL_DIR = False
needs_local_dir = pytest.mark.skipif(not HAS_LOCAL_DIR, reason="timm without local-dir:")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Nothing here may reach the Hugging Face Hub."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def make_run(name: str, backbone: dict, status: str = "done") -> Path:
    """A finished run ``runs/<name>`` of the tiny recipe with ``backbone``, written the way
    ``run._pretrain`` writes one (no training: perturbed random weights)."""
    recipe_path = write_recipe(Path(f"{name}.yaml"), {"backbone": backbone})
    cfg = load_recipe(recipe_path)
    run_dir = Path("runs") / name
    run_dir.mkdir(parents=True)
    torch.manual_seed(0)
    bb = create_backbone(cfg.backbone, cfg.data.image_size)
    with torch.no_grad():  # not the init: weights and BatchNorm statistics all move
        for key, v in bb.model.state_dict().items():
            if v.is_floating_point():
                v.add_(0.05 * torch.randn_like(v))
                if key.endswith("running_var"):
                    v.abs_()
    save_backbone(bb, run_dir / "backbone.safetensors")
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    resolved = to_dict(cfg)
    info = {"run_id": name, "recipe": recipe_info(recipe_path), "status": status,
            "world_size": 1, "provenance": provenance(torch.device("cpu")), "config": resolved,
            "config_sha256": config_hash(resolved),
            "pretrain": {"steps": 2, "images_seen": 128, "wall_time_s": 1.5}}
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


def _reference(run_dir: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sslbench's own (pooled, unpooled) features of the run's backbone."""
    bb = load_backbone(run_dir / "backbone.safetensors").eval()
    with torch.no_grad():
        return bb(x), bb.forward_features(x)


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_layout_config_and_card():
    run_dir = make_run("r", {"name": "test_resnet", "small_input": False})
    out = export_run(run_dir, "out")
    assert sorted(p.name for p in Path("out").iterdir()) == sorted(EXPORT_FILES)
    config = json.loads(Path("out/config.json").read_text())
    assert config == out["config"] and out["timm_loads"]
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 0
    assert config["num_features"] == 96 and config["global_pool"] == "avg"
    assert config["model_args"] == {}  # no head, no drop rates, the stock stem
    pcfg = config["pretrained_cfg"]
    assert pcfg["input_size"] == [3, 32, 32] and pcfg["crop_pct"] == 1.0
    assert pcfg["mean"] == [0.5] * 3 and pcfg["std"] == [0.25] * 3
    assert pcfg["interpolation"] == "bilinear" and pcfg["first_conv"] == "conv1.0"
    assert config["sslbench"]["run_id"] == "r" and config["sslbench"]["method"] == "simclr"
    card = Path("out/README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "timm" and "simclr" in meta["tags"]
    assert "license" not in meta  # unknown: the card says so instead
    for needle in ("simclr", "r.yaml", "| seed | 0 |", "license: not stated",
                   'timm.create_model("local-dir:', "No records of this run"):
        assert needle in card, needle
    from safetensors.torch import load_file
    weights = load_file("out/model.safetensors")
    assert weights.keys() == load_file(str(run_dir / "backbone.safetensors")).keys()
    assert not [k for k in weights if k.startswith("fc.")]


@needs_local_dir
@pytest.mark.parametrize("name, backbone", [
    ("resnet", {"name": "test_resnet", "small_input": False}),
    ("vit", {"name": "test_vit", "small_input": True}),  # 32 px: patch 4, 8x8 tokens
])
def test_timm_local_dir_gives_sslbench_features(name, backbone):
    run_dir = make_run(name, backbone)
    export_run(run_dir, "out")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pooled, unpooled = _reference(run_dir, x)
    model = timm.create_model(f"local-dir:{Path('out').resolve()}", pretrained=True).eval()
    if name == "vit":
        assert model.patch_embed.patch_size == (4, 4)
    with torch.no_grad():
        assert torch.equal(model(x), pooled)
        assert torch.equal(model.forward_features(x), unpooled)
        assert torch.equal(load_export("out")(x), pooled)


@needs_local_dir
def test_32px_resnet_stem_refused_by_timm_loaded_by_sslbench():
    """timm cannot build the 32 px stem: the export makes timm refuse it (instead of loading
    the weights into a stride-2 stem: test_resnet's deep stem has the same shapes and would
    load silently) and load_export rebuilds it exactly."""
    run_dir = make_run("small", {"name": "test_resnet", "small_input": True})
    out = export_run(run_dir, "out")
    assert not out["timm_loads"]
    config = json.loads(Path("out/config.json").read_text())
    assert SMALL_INPUT_ARG in config["model_args"] and config["sslbench"]["small_input_stem"]
    with pytest.raises(TypeError, match=SMALL_INPUT_ARG):
        timm.create_model(f"local-dir:{Path('out').resolve()}", pretrained=True)
    x = torch.randn(2, 3, 32, 32)
    pooled, _ = _reference(run_dir, x)
    with torch.no_grad():
        assert torch.equal(load_export("out")(x), pooled)
    # why the marker is needed: without it timm loads the weights silently, into the wrong stem
    del config["model_args"][SMALL_INPUT_ARG]
    Path("out/config.json").write_text(json.dumps(config))
    wrong = timm.create_model(f"local-dir:{Path('out').resolve()}", pretrained=True).eval()
    with torch.no_grad():
        assert wrong(x).shape == pooled.shape and not torch.allclose(wrong(x), pooled)
    card = Path("out/README.md").read_text()
    assert "32 px ResNet stem" in card and "model.conv1[0].stride = (1, 1)" in card


def test_32px_plain_stem_card_rebuilds_it():
    """The card's by-hand recipe for a plain stem (3x3 conv replacing the 7x7) gives the
    backbone's features."""
    run_dir = make_run("plain", {"name": "resnet18", "small_input": True})
    export_run(run_dir, "out")
    card = Path("out/README.md").read_text()
    code = card.split("```python\n")[1].split("```")[0].replace('"model.safetensors"',
                                                                 '"out/model.safetensors"')
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - the card's own snippet
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(scope["model"](x), _reference(run_dir, x)[0])


def test_card_lists_this_runs_board_numbers():
    run_dir = make_run("r", {"name": "test_resnet", "small_input": False})
    cfg = to_dict(load_recipe(run_dir / "config.yaml"))
    results = Path("board/results/embedded")
    results.mkdir(parents=True)

    def record(fname: str, config: dict, run_id: str = "r", **fields) -> None:
        rec = make_record_v2(config=config, run_id=run_id, backbone="test_resnet", **fields)
        (results / fname).write_text(json.dumps(rec))

    record("a.json", cfg, metrics={"acc": 0.8, "ood_acc": 0.5})
    record("b.json", cfg, eval_seed=1, metrics={"acc": 0.9, "ood_acc": 0.6})
    record("c.json", {**cfg, "eval": {**cfg["eval"], "batch_size": 7}}, protocol="knn",
           metrics={"acc": 0.7})  # eval.* may differ: still this run
    record("d.json", {**cfg, "train": {**cfg["train"], "max_steps": 99}},
           metrics={"acc": 0.11})  # same name, another pretraining
    record("e.json", cfg, run_id="other", metrics={"acc": 0.22})
    assert export_run(run_dir, "out", board="board")["rows"] == 2
    card = Path("out/README.md").read_text()
    assert "| embedded | linear | 100% | final | 2 | 85.0 ± " in card
    assert "| embedded | knn | 100% | final | 1 | 70.0 | – |" in card
    assert "11.0" not in card and "22.0" not in card


def test_refusals_write_nothing():
    with pytest.raises(UserError, match="run directory not found"):
        export_run("runs/none", "out")
    with pytest.raises(UserError, match="not a run directory"):
        Path("empty").mkdir()
        export_run("empty", "out")
    run_dir = make_run("busy", {"name": "test_resnet", "small_input": False}, status="running")
    with pytest.raises(UserError, match="has not finished pretraining"):
        export_run(run_dir, "out")
    assert not Path("out").exists()
    run_dir = make_run("r", {"name": "test_resnet", "small_input": False})
    with pytest.raises(UserError, match="is the run directory"):
        export_run(run_dir, run_dir, force=True)
    Path("out").mkdir()
    (Path("out") / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="--force"):
        export_run(run_dir, "out")
    assert [p.name for p in Path("out").iterdir()] == ["notes.txt"]
    export_run(run_dir, "out", force=True)  # overwrites the export files, keeps the others
    assert sorted(p.name for p in Path("out").iterdir()) == sorted([*EXPORT_FILES, "notes.txt"])
    Path("file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        export_run(run_dir, "file")


def test_cli(capsys):
    run_dir = make_run("r", {"name": "test_resnet", "small_input": False})
    assert main(["export", str(run_dir), "out"]) == 0
    assert "local-dir:out" in capsys.readouterr().out
    assert main(["export", str(run_dir), "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sslbench: error: ") and "--force" in err
    assert main(["export", str(run_dir), "out", "--force", "-q"]) == 0
    assert capsys.readouterr().out == ""
