"""``create_backbone``: build a :class:`~.timm_backbone.Backbone` from a ``BackboneConfig`` with
``timm.create_model``.

32 px variants are switched on by ``backbone.small_input``: ResNets get the stem of
:mod:`.small_input`; ViTs get ``img_size`` = data.image_size, ``patch_size`` 4 (8×8 = 64 tokens at
32 px) and ``dynamic_img_size=True`` so multi-crop views of other sizes interpolate the position
embedding (docs/methods.md#32-px-backbones).
"""
from __future__ import annotations

from typing import Any

import timm
from omegaconf import OmegaConf

from ..config import patch_size_problem
from ..errors import UserError, did_you_mean
from .small_input import adapt_small_input
from .timm_backbone import Backbone
from .weights import load_weights


def _timm_kwargs(cfg: Any, image_size: int, family_hint: str) -> dict[str, Any]:
    extra = getattr(cfg, "kwargs", None) or {}
    if OmegaConf.is_config(extra):
        extra = OmegaConf.to_container(extra, resolve=True)
    kwargs: dict[str, Any] = {"num_classes": 0, **extra}
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = float(cfg.drop_path_rate)
    if family_hint == "vit":
        patch = cfg.patch_size or (4 if cfg.small_input else None)
        kwargs.update(img_size=image_size, dynamic_img_size=True)
        if patch:
            problem = patch_size_problem(image_size, patch)
            if problem:
                raise UserError(problem)
            kwargs["patch_size"] = patch
    elif cfg.patch_size is not None:
        raise UserError(f"backbone.patch_size is only for ViTs, not '{cfg.name}'; remove it")
    return kwargs


def _family_hint(name: str) -> str:
    try:
        cls_name = timm.models.get_pretrained_cfg_value(name, "architecture") or name
    except Exception:  # noqa: BLE001 - best effort
        cls_name = name
    base = name.split(".")[0]
    entry = timm.models._registry._model_entrypoints.get(base)  # noqa: SLF001
    module = getattr(entry, "__module__", "") if entry else ""
    if module.endswith("vision_transformer"):
        return "vit"
    if module.endswith(".resnet"):
        return "resnet"
    return "vit" if str(cls_name).startswith("vit") else "other"


def create_backbone(cfg: Any, image_size: int) -> Backbone:
    """Build the backbone of ``cfg`` (a ``BackboneConfig``) for ``image_size`` px inputs."""
    name = cfg.name
    if not timm.is_model(name):
        known = timm.list_models(name[:3] + "*") or timm.list_models()
        raise UserError(f"unknown backbone '{name}'{did_you_mean(name, known)}"
                        f"; use a timm model name (e.g. resnet18, vit_tiny_patch16_224)")
    family = _family_hint(name)
    kwargs = _timm_kwargs(cfg, image_size, family)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise UserError(f"backbone '{name}' rejected its arguments ({e}); check backbone.kwargs "
                        f"/ backbone.patch_size") from None
    if family == "resnet" and cfg.small_input:
        adapt_small_input(model)
    bb = Backbone(model, name, kwargs, bool(cfg.small_input))
    if cfg.checkpoint:
        load_weights(bb, cfg.checkpoint)
    return bb
