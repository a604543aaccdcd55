"""Shared fixtures. Every test runs in its own temporary working directory with W&B offline,
so nothing is written into the repository's leaderboard/ or runs/."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from sslbench.ssl import DataSpec

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    # never the network: the HF hub (timm weights, datasets) offline, on an empty cache
    from huggingface_hub import constants  # reads its environment at import

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    yield


TINY = {
    "method": {"name": "simclr", "proj_hidden_dim": 64, "proj_dim": 32, "temperature": 0.2},
    "backbone": {"name": "test_resnet", "small_input": False},
    # the embedded benchmark's earlier, smaller design: fast tests (the default holds 10,788
    # test and 10,788 OOD images)
    "data": {"name": "embedded", "renders_per_train_glyph": 4, "renders_per_test_glyph": 2,
             "test_glyph_fraction": 0.25},
    "optim": {"name": "sgd", "lr": 0.1},
    "train": {"batch_size": 64, "max_steps": 6, "checkpoint_every": 3, "log_every": 2},
    "eval": {"protocols": ["linear", "knn"], "baselines": ["raw_pixels", "random_init"],
             "linear": {"c_grid": [0.1, 1.0], "max_iter": 30}, "knn": {"k": 20}},
    "logging": {"wandb": False},
}


def write_recipe(path: Path, overrides: dict | None = None) -> Path:
    """Write TINY (deep-updated with ``overrides``) to ``path``."""
    import copy

    cfg = copy.deepcopy(TINY)

    def merge(a: dict, b: dict) -> None:
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                merge(a[k], v)
            else:
                a[k] = v

    merge(cfg, overrides or {})
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny_recipe(tmp_path) -> Path:
    return write_recipe(tmp_path / "tiny.yaml")


# -- tiny methods: the test_ssl invariant tests ------------------------------------------------

TINY_DATA = DataSpec(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def build_tiny_backbone(family: str = "resnet", **kw: Any) -> Any:
    """The tiny timm backbone of ``family`` for 32 px images: ``test_resnet`` with the stock
    stem, ``test_vit`` with 4 px patches; ``kw`` sets other ``BackboneConfig`` fields."""
    from omegaconf import OmegaConf

    from sslbench.backbones import create_backbone
    from sslbench.config import BackboneConfig
    from sslbench.conformance import TINY_BACKBONES

    cfg = BackboneConfig(**{"name": TINY_BACKBONES[family], "small_input": family == "vit", **kw})
    return create_backbone(OmegaConf.structured(cfg), TINY_DATA.image_size)


def build_tiny_method(cls: type, family: str = "resnet", seed: int = 0,
                      backbone_kw: dict | None = None, **config: Any) -> Any:
    """``cls`` on :func:`build_tiny_backbone` with :data:`TINY_DATA`, built after
    ``torch.manual_seed(seed)``; ``config`` fills ``cls.Config``. A plain function, so that the
    workers of multi-process tests can call it; tests use the ``tiny_method`` fixture."""
    torch.manual_seed(seed)
    backbone = build_tiny_backbone(family, **(backbone_kw or {}))
    return cls(backbone, cls.Config(**config), TINY_DATA)


@pytest.fixture
def tiny_method(request):
    """``tiny_method(family=FAMILY, seed=0, backbone_kw=None, **config)``: the test module's
    ``METHOD`` from :func:`build_tiny_method`, its config the module's ``SMALL`` (CPU-sized
    settings, optional) updated with ``config``; ``FAMILY`` (optional) is the default family."""
    module = request.module
    small = getattr(module, "SMALL", {})

    def make(family: str = getattr(module, "FAMILY", "resnet"), seed: int = 0,
             backbone_kw: dict | None = None, **config: Any) -> Any:
        return build_tiny_method(module.METHOD, family, seed, backbone_kw, **{**small, **config})

    return make


def make_record(**overrides: Any) -> dict[str, Any]:
    """A valid leaderboard record (schema v1); ``overrides`` replace top-level fields."""
    rec: dict[str, Any] = {
        "schema_version": 1, "kind": "measured", "method": "simclr", "backbone": "resnet18",
        "backbone_family": "resnet", "dataset": "embedded", "protocol": "linear",
        "protocol_settings": {"solver": "lbfgs", "C": 0.1}, "seed": 0, "eval_seed": 0,
        "metrics": {"acc": 0.6, "ood_acc": 0.4},
        "recipe": {"path": "recipes/quickstart.yaml", "sha256": "abcdef012345",
                   "name": "quickstart"},
        "run_id": "run-0", "config": {},
        "provenance": {"git_commit": "0123456789abcdef", "git_dirty": False, "device": "cpu"},
        "pretrain": {"steps": 10, "wall_time_s": 50.0}, "wall_time_s": 1.0,
        "created": "2026-01-01T00:00:00+00:00",
    }
    rec.update(overrides)
    return rec


def make_record_v2(config: dict[str, Any] | None = None, suite: str | None = "embedded",
                   **fields: Any) -> dict[str, Any]:
    """A schema v2 record: :func:`make_record` plus identity, identity_hash and suite."""
    from sslbench.identity import identity_hash, record_identity

    rec = make_record(config=config if config is not None else {"optim": {"lr": 0.1}}, **fields)
    identity = record_identity(rec, {"name": rec["dataset"], "fingerprint": "0" * 16},
                               rec["config"])
    rec.update(schema_version=2, identity=identity, identity_hash=identity_hash(identity),
               suite=suite)
    return rec
