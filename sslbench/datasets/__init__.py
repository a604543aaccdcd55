"""Data sources -> named splits of (uint8 image, label). See ``base.py`` for the contract.

This package is ``sslbench.datasets`` — never importable as top-level ``datasets`` (that name
belongs to HuggingFace).
"""
from __future__ import annotations

from typing import Any

from ..errors import UserError
from .base import ImageDataset, SubsetImageDataset, TensorImageDataset, resize_uint8
from .sources import SOURCES, load_configured


_LAST: tuple[str, dict[str, ImageDataset]] | None = None


def load_splits(cfg: Any) -> dict[str, ImageDataset]:
    """All splits of the dataset described by ``cfg`` (a ``DataConfig``).

    The last result is memoised: ``sslbench run`` asks for the same data when it pretrains,
    evaluates the run and evaluates each baseline, and should read it from disk once.
    """
    global _LAST
    import json

    from omegaconf import OmegaConf

    key = json.dumps(OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg)
                     else vars(cfg), sort_keys=True, default=str)
    if _LAST is None or _LAST[0] != key:
        _LAST = (key, _load_splits(cfg))
    return dict(_LAST[1])


def _load_splits(cfg: Any) -> dict[str, ImageDataset]:
    if cfg.name == "embedded":
        from .embedded import build_embedded

        return dict(build_embedded(cfg))
    if cfg.name not in SOURCES:
        from ..errors import did_you_mean

        raise UserError(f"unknown dataset source data.name='{cfg.name}'"
                        f"{did_you_mean(cfg.name, SOURCES)}")
    return load_configured(cfg)  # data.path (or its default), downloading when data.download


def get_split(splits: dict[str, ImageDataset], name: str, what: str) -> ImageDataset:
    if name not in splits:
        from ..errors import did_you_mean

        raise UserError(f"dataset has no split '{name}' for {what}"
                        f"{did_you_mean(name, splits)}")
    if what != "pretraining" and getattr(splits[name], "pretrain_only", False):
        raise UserError(f"split '{name}' has no labels (pretraining only) and cannot be used for "
                        f"{what}; set data.train_split=train (and data.test_split=test) and "
                        f"pretrain on it with data.pretrain_split={name}")
    return splits[name]


__all__ = ["ImageDataset", "TensorImageDataset", "SubsetImageDataset", "resize_uint8",
           "load_splits", "get_split", "SOURCES"]
