"""SSL methods. Built-ins register on import; plugins via the ``sslbench.methods`` entry points.

This package is ``sslbench.ssl`` — never put ``sslbench/`` itself on ``sys.path`` (it would
shadow Python's ``ssl``).
"""
from __future__ import annotations

from .base import METHODS, DataSpec, SSLMethod, StepInfo, register_method
# importing a method module registers it
from . import context, dino, greedy, mae, moco_v2, moco_v3, rotation, simclr  # noqa: F401


def get_method(name: str) -> type[SSLMethod]:
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()


__all__ = ["METHODS", "DataSpec", "SSLMethod", "StepInfo", "register_method", "get_method",
           "list_methods"]
