"""SVG drawing primitives of the board's figures (:mod:`.plots`, :mod:`.curves`): numbers,
text, the document, axes, legends, whiskers. Every string drawn goes through
:func:`.formatting.esc`, in text and attributes alike."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .aggregation import interval
from .formatting import esc, short

PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#9D755D",
           "#EECA3B", "#FF9DA6", "#79706E")
ID_COLOR, OOD_COLOR = "#4C78A8", "#E45756"
FONT = 'system-ui, -apple-system, &quot;Segoe UI&quot;, Roboto, Arial, sans-serif'


def num(x: float) -> str:
    return f"{x:.1f}"


def text(x: float, y: float, content: str, anchor: str = "start", size: int = 11,
         fill: str = "#1f2328", weight: str = "normal", title: str | None = None) -> str:
    """``content`` as an SVG text element (escaped), with an optional tooltip ``title``."""
    tip = f"<title>{esc(title)}</title>" if title else ""
    return (f'<text x="{num(x)}" y="{num(y)}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{fill}" font-weight="{weight}" dy="0.35em">{tip}{esc(content)}</text>')


def doc(width: int, height: float, body: list[str], label: str) -> str:
    return (f'<svg viewBox="0 0 {width} {num(height)}" '
            f'role="img" aria-label="{esc(label)}" font-family="{FONT}">'
            + "".join(body) + "</svg>")


def x_axis(x0: float, width: float, top: float, bottom: float, title: str,
           ticks: list[tuple[float, str]]) -> list[str]:
    out = []
    for pos, label in ticks:
        x = x0 + pos * width
        out.append(f'<line x1="{num(x)}" y1="{num(top)}" x2="{num(x)}" y2="{num(bottom)}" '
                   f'stroke="#e5e8eb" stroke-width="1"/>')
        # 13 px down: clear of the lowest tick label of a y axis ending at ``bottom``
        out.append(text(x, bottom + 13, label, "middle", 10, "#59636e"))
    out.append(f'<line x1="{num(x0)}" y1="{num(bottom)}" x2="{num(x0 + width)}" '
               f'y2="{num(bottom)}" stroke="#afb8c1" stroke-width="1"/>')
    out.append(text(x0 + width / 2, bottom + 28, title, "middle", 11, "#59636e"))
    return out


def legend(items: list[tuple[str, str]], x0: float, y: float,
           max_x: float) -> tuple[list[str], float]:
    out, x = [], x0
    for color, label in items:
        label = short(label, 28)
        w = 18 + 6.6 * len(label) + 14
        if x + w > max_x and x > x0:
            x, y = x0, y + 18
        out.append(f'<rect x="{num(x)}" y="{num(y - 5)}" width="11" height="11" rx="2" '
                   f'fill="{color}"/>')
        out.append(text(x + 16, y + 0.5, label, size=11))
        x += w
    return out, y + 18


def pct_ticks() -> list[tuple[float, str]]:
    return [(v / 100, str(v)) for v in range(0, 101, 20)]


def clamp(v: float) -> float:
    return min(1.0, max(0.0, v))


def whisker(x1: float, x2: float, y: float, color: str = "#1f2328") -> str:
    return (f'<line x1="{num(x1)}" y1="{num(y)}" x2="{num(x2)}" y2="{num(y)}" '
            f'stroke="{color}" stroke-width="1.3"/>'
            f'<line x1="{num(x1)}" y1="{num(y - 4)}" x2="{num(x1)}" y2="{num(y + 4)}" '
            f'stroke="{color}" stroke-width="1.3"/>'
            f'<line x1="{num(x2)}" y1="{num(y - 4)}" x2="{num(x2)}" y2="{num(y + 4)}" '
            f'stroke="{color}" stroke-width="1.3"/>')


def ci_bar(x0: float, width: float, y: float, height: float, summary: dict[str, Any],
           color: str, tip: str) -> tuple[list[str], float]:
    """A horizontal bar from ``x0`` to the metric's mean (a fraction of ``width``) with its 95%
    CI whisker and tooltip ``tip``; returns its parts and the x where a value label may start."""
    xm = x0 + clamp(summary["mean"]) * width
    parts = [f'<rect x="{num(x0)}" y="{num(y)}" width="{num(xm - x0)}" height="{height}" rx="2" '
             f'fill="{color}" fill-opacity="0.9"><title>{esc(tip)}</title></rect>']
    end = xm
    if summary["ci95"] is not None:
        lo, hi = interval(summary)
        xh = x0 + clamp(hi) * width
        parts.append(whisker(x0 + clamp(lo) * width, xh, y + height / 2))
        end = max(end, xh)
    return parts, end


def acc_axis(accs: list[dict[str, Any]], x0: float, width: float, top: float,
             bottom: float) -> tuple[Callable[[float], float], tuple[float, float], list[str]]:
    """The top-1 axis of a scatter: position function (fraction -> y), the shown range and
    its grid lines, tick labels and title."""
    lo_a = min(interval(a)[0] for a in accs)
    hi_a = max(interval(a)[1] for a in accs)
    a_min = max(0.0, math.floor((lo_a - 0.02) * 10) / 10)
    a_max = min(1.0, math.ceil((hi_a + 0.02) * 10) / 10)
    if a_max - a_min < 0.2:
        a_min, a_max = max(0.0, a_max - 0.2), max(a_max, 0.2)
    yp = lambda v: bottom - (v - a_min) / (a_max - a_min) * (bottom - top)  # noqa: E731
    body = []
    steps = int(round((a_max - a_min) / 0.1))
    for k in range(steps + 1):
        v = a_min + k * (a_max - a_min) / steps
        body.append(f'<line x1="{x0}" y1="{num(yp(v))}" x2="{x0 + width}" y2="{num(yp(v))}" '
                    f'stroke="#eef1f4" stroke-width="1"/>')
        body.append(text(x0 - 6, yp(v), f"{100 * v:.0f}", "end", 10, "#59636e"))
    mid = num((top + bottom) / 2)
    body.append(f'<text x="14" y="{mid}" font-size="11" fill="#59636e" text-anchor="middle" '
                f'transform="rotate(-90 14 {mid})">top-1 (%)</text>')
    return yp, (a_min, a_max), body
