"""Shared fixtures. Every test runs in its own temporary working directory with W&B offline,
so nothing is written into the repository's leaderboard/ or runs/."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield


TINY = {
    "method": {"name": "simclr", "proj_hidden_dim": 64, "proj_dim": 32, "temperature": 0.2},
    "backbone": {"name": "test_resnet", "small_input": False},
    "data": {"name": "embedded"},
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
