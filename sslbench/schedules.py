"""Schedules as pure functions of the global step (docs/methods.md#optimisers-and-schedules)."""
from __future__ import annotations

import math


def cosine_with_warmup(step: int, total: int, warmup: int, base: float, final: float = 0.0) -> float:
    """Linear warmup from 0 to ``base`` over ``warmup`` steps, then half-cycle cosine to ``final``.

    ``step`` is 0-based; the value at ``step == total`` is ``final``.
    """
    if warmup > 0 and step < warmup:
        return base * step / warmup
    if total <= warmup:
        return base
    t = min(1.0, (step - warmup) / (total - warmup))
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * t))


def cosine_momentum(step: int, total: int, base: float, final: float = 1.0) -> float:
    """EMA momentum ``m(k) = final - (final - base)(cos(pi k / K) + 1) / 2`` (BYOL / DINO)."""
    t = min(1.0, step / max(1, total))
    return final - (final - base) * (math.cos(math.pi * t) + 1.0) / 2.0


def scaled_lr(base_lr: float, global_batch: int, rule: str) -> float:
    """``linear``: base x B/256; ``sqrt``: base x sqrt(B) (SimCLR small batch); ``none``."""
    if rule == "linear":
        return base_lr * global_batch / 256.0
    if rule == "sqrt":
        return base_lr * math.sqrt(global_batch)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling rule '{rule}' (linear | sqrt | none)")
