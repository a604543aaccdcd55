"""Backbones: thin wrappers over ``timm.create_model`` (never forks of timm code).

- :mod:`.timm_backbone`: :class:`Backbone` (``forward`` = pooled ``h``, never a projection) and
  :func:`family_of`;
- :mod:`.create`: :func:`create_backbone` from a ``BackboneConfig``, with the 32 px variants
  switched on by ``backbone.small_input`` (docs/methods.md#32-px-backbones);
- :mod:`.small_input`: :func:`adapt_small_input`, the 32 px ResNet stem;
- :mod:`.weights`: ``backbone.safetensors`` (:func:`save_backbone`, :func:`load_backbone`) and
  :func:`load_weights` for timm-format weight files.
"""
from __future__ import annotations

from .create import create_backbone
from .small_input import adapt_small_input
from .timm_backbone import Backbone, family_of
from .weights import load_backbone, load_weights, save_backbone

__all__ = ["Backbone", "adapt_small_input", "create_backbone", "family_of", "load_backbone",
           "load_weights", "save_backbone"]
