"""Kept for plugins written against earlier versions: the view helpers live in
:mod:`sslbench.views` (shared by pretraining and evaluation)."""
from __future__ import annotations

from ..views import Normalize, simclr_view, to_float

__all__ = ["Normalize", "simclr_view", "to_float"]
