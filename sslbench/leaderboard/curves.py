"""Line and comparison figures of the board: pretraining loss curves (small multiples), top-1
against the label fraction, and linear probing vs fine-tuning vs LP-FT (ID and OOD).

Drawn as SVG text like :mod:`.plots` (whose primitives they share); every string from a record
goes through :func:`.formatting.esc`.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from .aggregation import (
    canonical, interval, label_fraction, top1, without_fraction,
)
from .formatting import ci_text, esc, fraction_text, short
from . import svg as draw

# the protocols that adapt a pretrained backbone to the labels, in the order they are compared
# (Kumar et al., ICLR 2022: fine-tuning can lose OOD accuracy that LP-FT keeps)
ADAPTATION_PROTOCOLS = ("linear", "finetune", "lpft")
_PROTOCOL_COLORS = {"linear": "#4C78A8", "finetune": "#F58518", "lpft": "#54A24B"}
_PROTOCOL_NAMES = {"linear": "linear probe", "finetune": "fine-tuning", "lpft": "LP-FT"}


def _subject(row: dict[str, Any]) -> tuple[str, str, str]:
    return (row["method"], row["backbone"], row["recipe"])


def _subject_names(subjects: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], str]:
    """``method · backbone``, with the recipe where two subjects would share that name."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for m, b, _ in subjects:
        counts[(m, b)] += 1
    return {s: f"{s[0]} · {s[1]}" + (f" · {s[2]}" if counts[s[:2]] > 1 else "")
            for s in subjects}


def _most_seeds(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Per subject, its row with the most seeds (ties: the newest)."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["n"], r["created"])):
        out[_subject(row)] = row
    return out


# --------------------------------------------------------------------------- loss curves

def _nice_step(span: float, target: int) -> float:
    """A 1-2-5 step that cuts ``span`` into about ``target`` intervals."""
    if span <= 0:
        return 1.0
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def _tick_text(v: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{v:.{decimals}f}"


def _curve_cell(curve: dict[str, Any], name: str, x0: float, y0: float, w: float,
                h: float) -> list[str]:
    """One small multiple at (x0, y0): title, y ticks, the min-max band over runs and the mean
    line, step axis."""
    steps, mean, lo, hi = curve["steps"], curve["mean"], curve["min"], curve["max"]
    out = [draw.text(x0, y0 + 8, short(name, 34), size=11.5, weight="600", title=name)]
    top, bottom, left = y0 + 24, y0 + h - 22, x0 + 38
    right = x0 + w - 8
    y_lo, y_hi = min(lo), max(hi)
    if y_hi - y_lo < 1e-9:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    ystep = _nice_step(y_hi - y_lo, 3)
    y_lo, y_hi = math.floor(y_lo / ystep) * ystep, math.ceil(y_hi / ystep) * ystep
    s_max = max(steps) or 1
    xp = lambda s: left + s / s_max * (right - left)  # noqa: E731
    yp = lambda v: bottom - (v - y_lo) / (y_hi - y_lo) * (bottom - top)  # noqa: E731
    k = 0
    while y_lo + k * ystep <= y_hi + 1e-9:
        v = y_lo + k * ystep
        out.append(f'<line x1="{draw.num(left)}" y1="{draw.num(yp(v))}" x2="{draw.num(right)}" '
                   f'y2="{draw.num(yp(v))}" stroke="#eef1f4" stroke-width="1"/>')
        out.append(draw.text(left - 4, yp(v), _tick_text(v, ystep), "end", 9.5, "#59636e"))
        k += 1
    out.append(f'<line x1="{draw.num(left)}" y1="{draw.num(bottom)}" x2="{draw.num(right)}" '
               f'y2="{draw.num(bottom)}" stroke="#afb8c1" stroke-width="1"/>')
    for s in (0, s_max):
        out.append(draw.text(xp(s), bottom + 9, f"{s:g}", "middle", 9.5, "#59636e"))
    out.append(draw.text((left + right) / 2, bottom + 9, "step", "middle", 9.5, "#59636e"))
    if curve["runs"] > 1:
        band = [f"{draw.num(xp(s))},{draw.num(yp(v))}" for s, v in zip(steps, hi)]
        band += [f"{draw.num(xp(s))},{draw.num(yp(v))}" for s, v in reversed(list(zip(steps, lo)))]
        out.append(f'<polygon points="{" ".join(band)}" fill="{draw.ID_COLOR}" fill-opacity="0.18" '
                   f'stroke="none"/>')
    line = " ".join(f"{draw.num(xp(s))},{draw.num(yp(v))}" for s, v in zip(steps, mean))
    tip = (f"{name}: loss {mean[0]:.3g} at step {steps[0]} -> {mean[-1]:.3g} at step "
           f"{steps[-1]} (mean of {curve['runs']} run{'s' if curve['runs'] != 1 else ''})")
    out.append(f'<polyline points="{line}" fill="none" stroke="{draw.ID_COLOR}" stroke-width="1.6">'
               f"<title>{esc(tip)}</title></polyline>")
    out.append(draw.text(right, top - 6, f"{mean[-1]:.3g}", "end", 10, "#3d444d",
                         title="final mean loss"))
    return out


def loss_plot(rows: list[dict[str, Any]], label: str, columns: int = 3) -> str | None:
    """Small multiples of the pretraining loss, one per subject (method, backbone, recipe) with
    a curve: the mean over its runs, a band from the lowest to the highest run. Each has its
    own y axis: losses of different methods are not on one scale. None when no row has one."""
    subjects = _most_seeds([r for r in rows if r.get("loss_curve")])
    if not subjects:
        return None
    names = _subject_names(list(subjects))
    order = sorted(subjects, key=lambda s: (s[1], s[0], s[2]))
    W, cell_h = 680, 150
    cell_w = W / columns
    body: list[str] = []
    for i, s in enumerate(order):
        r, c = divmod(i, columns)
        body += _curve_cell(subjects[s]["loss_curve"], names[s], c * cell_w + 4, r * cell_h + 6,
                            cell_w - 10, cell_h - 8)
    rows_n = math.ceil(len(order) / columns)
    return draw.doc(W, rows_n * cell_h + 6, body, label)


# --------------------------------------------------------------------------- label fractions

def fraction_series(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str],
                                                         list[dict[str, Any]]]:
    """Per subject, its rows ordered by label fraction, for subjects measured at >= 2
    fractions (the rows of one protocol and settings)."""
    by: dict[tuple[str, str, str], dict[float, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        if top1(row):
            by[_subject(row)][label_fraction(row)] = row
    return {s: [f[k] for k in sorted(f)] for s, f in by.items() if len(f) >= 2}


def fraction_plot(rows: list[dict[str, Any]], label: str) -> str | None:
    """Top-1 (95% CI whiskers) against the label fraction (log axis), a line per subject with
    >= 2 fractions; None when no subject has two."""
    series = fraction_series(rows)
    if not series:
        return None
    names = _subject_names(list(series))
    order = sorted(series, key=lambda s: (-top1(series[s][-1])["mean"], s))
    colors = {s: draw.PALETTE[i % len(draw.PALETTE)] for i, s in enumerate(order)}
    W, x0, right = 680, 56, 24
    legend, top = draw.legend([(colors[s], names[s]) for s in order], x0, 12, W - 8)
    top += 8
    width, bottom = W - x0 - right, top + 220
    fractions = sorted({label_fraction(r) for s in order for r in series[s]})
    a, b = math.log10(fractions[0]), math.log10(fractions[-1])
    pad = max(0.08 * (b - a), 0.1)
    a, b = a - pad, b + pad
    pos = lambda f: (math.log10(f) - a) / (b - a)  # noqa: E731
    ticks, last = [], -1.0
    for f in fractions:
        if pos(f) - last >= 0.06:
            ticks.append((pos(f), fraction_text(f)))
            last = pos(f)
    accs = [top1(r) for s in order for r in series[s]]
    yp, _, body = draw.acc_axis(accs, x0, width, top, bottom)
    body += draw.x_axis(x0, width, top, bottom, "labelled training images (log scale)", ticks)
    for s in order:
        pts = [(x0 + pos(label_fraction(r)) * width, r) for r in series[s]]
        color = colors[s]
        line = " ".join(f"{draw.num(x)},{draw.num(yp(top1(r)['mean']))}" for x, r in pts)
        body.append(f'<polyline points="{line}" fill="none" stroke="{color}" '
                    f'stroke-width="1.8"/>')
        for x, r in pts:
            acc = top1(r)
            if acc["ci95"] is not None:
                lo, hi = interval(acc)
                body.append(f'<line x1="{draw.num(x)}" y1="{draw.num(yp(max(lo, 0)))}" '
                            f'x2="{draw.num(x)}" y2="{draw.num(yp(min(hi, 1)))}" '
                            f'stroke="{color}" stroke-width="1.2"/>')
            tip = (f"{names[s]} with {fraction_text(label_fraction(r))} of the labels: "
                   f"{ci_text(acc)} % (n={r['n']})")
            body.append(f'<circle cx="{draw.num(x)}" cy="{draw.num(yp(acc["mean"]))}" r="4" '
                        f'fill="{color}" stroke="#ffffff" stroke-width="1.2">'
                        f"<title>{esc(tip)}</title></circle>")
    return draw.doc(W, bottom + 36, legend + body, label)


# --------------------------------------------------------------------------- LP vs FT vs LP-FT

def protocol_rows(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str],
                                                      dict[str, dict[str, Any]]]:
    """Per subject, its full-label row of each adaptation protocol (the one with most seeds),
    for subjects measured with >= 2 of :data:`ADAPTATION_PROTOCOLS`."""
    by: dict[tuple[str, str, str], dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list))
    for row in rows:
        if row["protocol"] in ADAPTATION_PROTOCOLS and label_fraction(row) == 1.0 and top1(row):
            by[_subject(row)][row["protocol"]].append(row)
    out = {}
    for s, per in by.items():
        if len(per) >= 2:
            out[s] = {p: max(rs, key=lambda r: (r["n"], r["created"])) for p, rs in per.items()}
    return out


def protocol_plot(rows: list[dict[str, Any]], label: str) -> str | None:
    """Grouped bars per subject: top-1 of linear probing, fine-tuning and LP-FT (bars, 95% CI
    whiskers) and their OOD top-1 (hollow marks); None when no subject has two protocols."""
    subjects = protocol_rows(rows)
    if not subjects:
        return None
    names = _subject_names(list(subjects))
    order = sorted(subjects, key=lambda s: (-max(top1(r)["mean"] for r in subjects[s].values()),
                                            s))
    W, label_w, right = 680, 170, 140  # right: room for "94.4 ± 0.3 · OOD 88.7"
    x0, width = label_w + 12, W - label_w - 12 - right
    present = [p for p in ADAPTATION_PROTOCOLS if any(p in subjects[s] for s in order)]
    legend, y = draw.legend([(_PROTOCOL_COLORS[p], _PROTOCOL_NAMES[p]) for p in present], x0, 12,
                            W - 8)
    legend.append(f'<circle cx="{draw.num(W - 150)}" cy="{draw.num(12)}" r="4.5" fill="#ffffff" '
                  f'stroke="#1f2328" stroke-width="1.6"/>')
    legend.append(draw.text(W - 141, 12, "OOD top-1", size=11))
    top = y + 4
    bar_h, gap, group_gap = 15, 4, 14
    body: list[str] = []
    y = top + 6
    for s in order:
        per = subjects[s]
        protos = [p for p in ADAPTATION_PROTOCOLS if p in per]
        h = len(protos) * bar_h + (len(protos) - 1) * gap
        body.append(draw.text(label_w, y + h / 2, short(names[s], 26), "end", 12, weight="600",
                              title=names[s]))
        for p in protos:
            row, acc, color = per[p], top1(per[p]), _PROTOCOL_COLORS[p]
            cy = y + bar_h / 2
            tip = f"{names[s]} — {_PROTOCOL_NAMES[p]}: {ci_text(acc)} % (n={row['n']})"
            parts, end = draw.ci_bar(x0, width, y, bar_h, acc, color, tip)
            body += parts
            text = ci_text(acc)
            ood = top1(row, "ood_acc")
            if ood:
                xo = x0 + draw.clamp(ood["mean"]) * width
                body.append(f'<circle cx="{draw.num(xo)}" cy="{draw.num(cy)}" r="4.5" '
                            f'fill="#ffffff" stroke="#1f2328" stroke-width="1.6"><title>'
                            f'{esc(f"{names[s]} — {_PROTOCOL_NAMES[p]}, OOD: {ci_text(ood)} %")}'
                            f"</title></circle>")
                end = max(end, xo + 5)
                text += f" · OOD {100 * ood['mean']:.1f}"
            body.append(draw.text(end + 5, cy, text, size=10.5, fill="#3d444d"))
            y += bar_h + gap
        y += group_gap - gap
    axis = draw.x_axis(x0, width, top, y, "top-1 accuracy (%)", draw.pct_ticks())
    return draw.doc(W, y + 36, legend + axis + body, label)


def settings_label(settings: dict[str, Any], siblings: list[dict[str, Any]]) -> str:
    """The settings that tell ``settings`` apart from ``siblings`` (the others of its dataset,
    protocol and label fraction), as ``key=value`` pairs; empty when nothing differs."""
    every = [without_fraction(s) for s in siblings]
    mine = without_fraction(settings)
    keys = sorted({k for s in every + [mine] for k in s})
    differing = [k for k in keys if len({canonical(s.get(k)) for s in every + [mine]}) > 1]
    return ", ".join(f"{k}={canonical(mine.get(k)) if k in mine else '–'}" for k in differing)
