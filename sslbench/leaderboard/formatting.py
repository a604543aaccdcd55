"""Text shared by the board's renderers and plots: HTML escaping and number formats."""
from __future__ import annotations

import html
from typing import Any


def esc(value: Any) -> str:
    """HTML-escape anything (quotes included) for text or attribute context."""
    return html.escape(str(value), quote=True)


def short(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the last one an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fraction_text(fraction: float) -> str:
    """A label fraction in percent: ``0.1`` -> ``10%``."""
    return f"{100 * fraction:g}%"


def seconds(value: float | None) -> str:
    """A duration in s, min or h; ``–`` when unknown."""
    if value is None:
        return "–"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def ci_text(summary: dict[str, Any]) -> str:
    """A metric summary in percent: ``mean ± ci95`` (the bare mean for a single seed)."""
    mean = f"{100 * summary['mean']:.1f}"
    return mean if summary["ci95"] is None else f"{mean} ± {100 * summary['ci95']:.1f}"
