"""SVG plots of the board, drawn as text: bars per method and backbone, ID vs OOD top-1,
paired differences to random init, top-1 vs pretraining cost (wall time and FLOPs, side by
side), and the section of the page that holds them.

Every string from a record goes through :func:`.formatting.esc`, in SVG text and attributes alike.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from .aggregation import (
    canonical, flops_per_image, interval, label_fraction, paired, pretrain_flops,
    pretrain_seconds, protocol_sort_key, top1, without_fraction,
)
from .formatting import (
    VERDICT_MARKS, ci_text, diff_text, esc, flops, fraction_text, seconds, short,
)
from . import svg as draw


def _row_name(row: dict[str, Any]) -> str:
    return f"{row['method']} · {row['backbone']} · {row['recipe']}"


def bar_plot(rows: list[dict[str, Any]], colors: dict[str, str], label: str) -> str:
    """Grouped horizontal bars: one group per method, one bar per backbone, CI whiskers."""
    W, label_w, right = 680, 170, 96
    x0, width = label_w + 12, W - label_w - 12 - right
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    methods = sorted(by_method, key=lambda m: (-max(top1(r)["mean"] for r in by_method[m]), m))
    backbones = sorted({r["backbone"] for r in rows})
    legend, y = draw.legend([(colors[b], b) for b in backbones], x0, 12, W - 8)
    top = y + 4
    bar_h, gap, group_gap = 15, 4, 14
    body: list[str] = []
    y = top + 6
    for method in methods:
        group = sorted(by_method[method], key=lambda r: (r["backbone"], r["recipe"]))
        h = len(group) * bar_h + (len(group) - 1) * gap
        body.append(draw.text(label_w, y + h / 2, short(method, 24), "end", 12, weight="600",
                              title=method))
        dup = len({r["backbone"] for r in group}) < len(group)
        for row in group:
            acc = top1(row)
            cy = y + bar_h / 2
            tip = f"{_row_name(row)}: {ci_text(acc)} % (n={row['n']})"
            parts, end = draw.ci_bar(x0, width, y, bar_h, acc, colors[row["backbone"]], tip)
            body += parts
            text = ci_text(acc) + (f"  ({short(row['recipe'], 14)})" if dup else "")
            body.append(draw.text(end + 5, cy, text, size=10.5, fill="#3d444d"))
            y += bar_h + gap
        y += group_gap - gap
    bottom = y
    axis = draw.x_axis(x0, width, top, bottom, "top-1 accuracy (%)", draw.pct_ticks())
    return draw.doc(W, bottom + 36, legend + axis + body, label)


def ood_plot(rows: list[dict[str, Any]], label: str) -> str:
    """Dumbbell plot: in-distribution vs OOD top-1 per method (× backbone), with CIs."""
    W, label_w, right = 680, 220, 64
    x0, width = label_w + 12, W - label_w - 12 - right
    legend, y = draw.legend([(draw.ID_COLOR, "in-distribution test"), (draw.OOD_COLOR, "OOD test")],
                            x0, 12, W - 8)
    legend.append(draw.text(W - 6, 12, "OOD − ID", "end", 10.5, "#59636e", "600"))
    top = y + 4
    step = 24
    body: list[str] = []
    ordered = sorted(rows, key=lambda r: (-top1(r)["mean"], r["method"], r["backbone"]))
    names = [f"{r['method']} · {r['backbone']}" for r in ordered]
    dup = len(set(names)) < len(names)
    y = top + 14
    for row, name in zip(ordered, names):
        if dup:
            name += f" · {row['recipe']}"
        idm, ood = top1(row), top1(row, "ood_acc")
        xi, xo = x0 + draw.clamp(idm["mean"]) * width, x0 + draw.clamp(ood["mean"]) * width
        body.append(draw.text(label_w, y, short(name, 34), "end", 11.5, title=name))
        body.append(f'<line x1="{draw.num(xo)}" y1="{draw.num(y)}" x2="{draw.num(xi)}" '
                    f'y2="{draw.num(y)}" stroke="#c9d1d9" stroke-width="4" '
                    f'stroke-linecap="round"/>')
        for summary, color, hollow in ((ood, draw.OOD_COLOR, True), (idm, draw.ID_COLOR, False)):
            if summary["ci95"] is not None:
                lo, hi = interval(summary)
                body.append(draw.whisker(x0 + draw.clamp(lo) * width,
                                         x0 + draw.clamp(hi) * width, y, color))
            cx = x0 + draw.clamp(summary["mean"]) * width
            fill = "#ffffff" if hollow else color
            kind = "OOD" if hollow else "ID"
            tip = f"{name} — {kind}: {ci_text(summary)} % (n={row['n']})"
            body.append(f'<circle cx="{draw.num(cx)}" cy="{draw.num(y)}" r="5" fill="{fill}" '
                        f'stroke="{color}" stroke-width="2"><title>{esc(tip)}</title></circle>')
        gap = 100 * (ood["mean"] - idm["mean"])
        body.append(draw.text(W - 6, y, f"{gap:+.1f}", "end", 10.5, "#59636e",
                              title="OOD minus ID (points)"))
        y += step
    bottom = y - step / 2 + 4
    axis = draw.x_axis(x0, width, top, bottom, "top-1 accuracy (%)", draw.pct_ticks())
    return draw.doc(W, bottom + 36, legend + axis + body, label)


def _diff_scale(diffs: list[dict[str, Any]]) -> tuple[float, list[tuple[float, str]]]:
    """Half-range (a fraction) of a symmetric axis around 0 that holds every interval, and
    its ticks in points."""
    ends = [abs(x) for d in diffs for x in (d["mean"], d["lo"], d["hi"]) if x is not None]
    pts = max(ends, default=0.0) * 100 * 1.05
    step = next((t for t in (1, 2, 5, 10, 20, 25, 50) if pts / t <= 3), 100)
    half = step * max(1, math.ceil(pts / step))
    return half / 100, [((v + half) / (2 * half), f"{v:+g}" if v else "0")
                        for v in range(-half, half + 1, step)]


def paired_plot(rows: list[dict[str, Any]], label: str) -> str:
    """Forest plot: each row's paired top-1 difference to its random-init row (points), with
    the paired 95% interval; the line at 0 is random init."""
    W, label_w, right = 680, 220, 110
    x0, width = label_w + 12, W - label_w - 12 - right
    ordered = sorted(rows, key=lambda r: (-paired(r, "vs_random")["mean"], r["method"],
                                          r["backbone"], r["recipe"]))
    half, ticks = _diff_scale([paired(r, "vs_random") for r in ordered])
    pos = lambda v: x0 + (v + half) / (2 * half) * width  # noqa: E731
    names = [f"{r['method']} · {r['backbone']}" for r in ordered]
    dup = len(set(names)) < len(names)
    top, step = 12, 24
    body: list[str] = []
    y = top + 14
    for row, name in zip(ordered, names):
        name += f" · {row['recipe']}" if dup else ""
        diff = paired(row, "vs_random")
        body.append(draw.text(label_w, y, short(name, 34), "end", 11.5, title=name))
        if diff["ci95"] is not None:
            body.append(draw.whisker(pos(diff["lo"]), pos(diff["hi"]), y))
        mark = VERDICT_MARKS.get(diff["verdict"], "")
        tip = f"{name} − random init: {diff_text(diff)} points (n={diff['n']} pairs)"
        body.append(f'<circle cx="{draw.num(pos(diff["mean"]))}" cy="{draw.num(y)}" r="5" '
                    f'fill="{draw.ID_COLOR}"><title>{esc(tip)}</title></circle>')
        body.append(draw.text(W - 6, y, f"{diff_text(diff)} {mark}".strip(), "end", 10.5,
                              "#59636e"))
        y += step
    bottom = y - step / 2 + 4
    zero = (f'<line x1="{draw.num(pos(0))}" y1="{draw.num(top)}" x2="{draw.num(pos(0))}" '
            f'y2="{draw.num(bottom)}" stroke="#59636e" stroke-width="1.2" stroke-dasharray="4 3"/>')
    axis = draw.x_axis(x0, width, top, bottom, "top-1 minus random init (points, paired)", ticks)
    return draw.doc(W, bottom + 36, axis + [zero] + body, label)


_TIME_TICKS = (1, 2, 5, 10, 15, 20, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200,
               10800, 21600, 43200, 86400, 172800, 432000, 864000, 2592000)


def _tick_time(t: float) -> str:
    if t < 60:
        return f"{t:g} s"
    if t < 3600:
        return f"{t / 60:g} min"
    if t < 86400:
        return f"{t / 3600:g} h"
    return f"{t / 86400:g} d"


def _time_scale(times: list[float]) -> tuple[Any, list[tuple[float, str]], bool]:
    """Position function (seconds -> [0, 1]), ticks and whether the axis is logarithmic."""
    lo, hi = min(times), max(times)
    if lo > 0 and hi / lo > 10:
        a, b = math.log10(lo / 1.6), math.log10(hi * 1.6)
        pos = lambda t: (math.log10(t) - a) / (b - a)  # noqa: E731
        ticks: list[tuple[float, str]] = []
        for t in _TIME_TICKS:
            if 0 <= pos(t) <= 1 and (not ticks or pos(t) - ticks[-1][0] >= 0.14):
                ticks.append((pos(t), _tick_time(t)))
        return pos, ticks, True
    hi = hi if hi > 0 else 1.0
    step = next((t for t in _TIME_TICKS if hi * 1.1 / t <= 6), _TIME_TICKS[-1])
    top = step * math.ceil(hi * 1.1 / step)
    pos = lambda t: t / top  # noqa: E731
    # one unit along a linear axis: 0 s, 15 s, ..., 75 s rather than ..., 1 min, 1.25 min
    unit, name = next(((u, n) for u, n, limit in ((1, "s", 180), (60, "min", 10800),
                                                  (3600, "h", 259200)) if top < limit),
                      (86400, "d"))
    return pos, [(k * step / top, f"{k * step / unit:g} {name}")
                 for k in range(int(round(top / step)) + 1)], False


# (x position in [0, 1], tick labels) of a cost axis, and its title
_Axis = tuple[Callable[[float], float], list[tuple[float, str]], str]
# px a point's label moves down per overlap: more than the height of an 11 px line of text
_LABEL_STEP = 14


def _text_width(text: str, size: float = 11) -> float:
    """A generous width estimate of ``text`` in a sans-serif font of ``size`` px (wide letters
    counted wider), so that labels placed apart by it do not touch when drawn."""
    return size / 11 * (sum(9.6 if ch in "mwMW@%" else 6.4 for ch in text) + 2)


def _label(row: dict[str, Any], cx: float, cy: float, max_x: float, top: float,
           bottom: float, placed: list[tuple[float, float, float]]) -> list[str]:
    """A point's label (its method, short): right of the point, or left of it where it would
    leave the plot, at the nearest height (the point's, then one step down, one up, two down,
    ...) where it covers nothing in ``placed`` (points, tick labels and the labels placed so
    far; it joins them) and stays between ``top`` and ``bottom``; a leader line when moved."""
    text = short(row["method"], 22)
    w = _text_width(text)
    right = cx + 9 + w <= max_x
    x1 = cx + 9 if right else cx - 9 - w
    x2 = x1 + w
    free = lambda y: not any(a < x2 and x1 < b and abs(y - py) < _LABEL_STEP  # noqa: E731
                             for a, b, py in placed)
    heights = [cy + k * _LABEL_STEP * sign for k in range(60) for sign in (1, -1)][1:]
    inside = [y for y in heights if top + 6 <= y <= bottom - 6]
    ly = next((y for y in inside if free(y)), next(y for y in heights if free(y)))
    placed.append((x1, x2, ly))
    out = []
    if ly != cy:
        end = x1 - 1 if right else x2 + 1
        out.append(f'<line x1="{draw.num(cx + (4 if right else -4))}" y1="{draw.num(cy + 2)}" '
                   f'x2="{draw.num(end)}" y2="{draw.num(ly)}" stroke="#afb8c1" '
                   f'stroke-width="0.8"/>')
    out.append(draw.text(x1, ly, text, size=11, title=_row_name(row)))
    return out


def _scatter(rows: list[dict[str, Any]], xs: list[float], axis: _Axis, colors: dict[str, str],
             tips: list[str], label: str) -> str:
    """Top-1 (95% CI whiskers) of each row against a pretraining cost ``xs`` placed by
    ``axis``; points coloured per backbone and labelled with their method (:func:`_label`);
    ``tips`` is each point's tooltip."""
    W, H, x0, right = 680, 300, 56, 130
    legend, top = draw.legend([(colors[b], b) for b in sorted({r["backbone"] for r in rows})],
                              x0, 12, W - 8)
    top += 8
    width, bottom = W - x0 - right, H - 44
    pos, ticks, title = axis
    accs = [top1(r) for r in rows]
    yp, (a_min, a_max), body = draw.acc_axis(accs, x0, width, top, bottom)
    body += draw.x_axis(x0, width, top, bottom, title, ticks)
    ordered = sorted(zip(rows, accs, xs, tips), key=lambda p: -p[1]["mean"])
    spots = [(x0 + pos(x) * width, yp(acc["mean"])) for _, acc, x, _ in ordered]
    # (x1, x2, y) of what a label must not cover: every point, then each label placed
    placed = [(cx - 5.5, cx + 5.5, cy) for cx, cy in spots]
    placed += [(x0 + p * width - _text_width(t, 10) / 2, x0 + p * width + _text_width(t, 10) / 2,
                bottom + 13) for p, t in ticks]
    points, labels = [], []
    for (row, acc, _, tip), (cx, cy) in zip(ordered, spots):
        color = colors[row["backbone"]]
        if acc["ci95"] is not None:
            lo, hi = interval(acc)
            points.append(f'<line x1="{draw.num(cx)}" y1="{draw.num(yp(max(lo, a_min)))}" '
                          f'x2="{draw.num(cx)}" y2="{draw.num(yp(min(hi, a_max)))}" '
                          f'stroke="{color}" stroke-width="1.4"/>')
        points.append(f'<circle cx="{draw.num(cx)}" cy="{draw.num(cy)}" r="5.5" fill="{color}" '
                      f'stroke="#ffffff" stroke-width="1.5"><title>{esc(tip)}</title></circle>')
        labels += _label(row, cx, cy, W - 4, top, bottom, placed)
    return draw.doc(W, max(H, max(y for _, _, y in placed) + 50), legend + body + points + labels,
                    label)


def cost_plot(rows: list[dict[str, Any]], colors: dict[str, str], label: str) -> str:
    """Scatter: top-1 vs mean pretraining wall time (log axis when it spans > 10×)."""
    times = [pretrain_seconds(r) for r in rows]
    pos, ticks, log = _time_scale(times)
    axis = (pos, ticks, "mean pretraining wall time" + (" (log scale)" if log else ""))
    tips = [f"{_row_name(r)}: {ci_text(top1(r))} % after {seconds(t)} pretraining (n={r['n']})"
            for r, t in zip(rows, times)]
    return _scatter(rows, times, axis, colors, tips, label)


def _flops_scale(values: list[float]) -> tuple[Callable[[float], float],
                                               list[tuple[float, str]]]:
    """Log position function (FLOPs -> [0, 1], positive values) over at least one decade, and
    ticks at 1, 2 and 5 times the powers of ten in range, at least 0.14 apart."""
    a, b = math.log10(min(values) / 1.6), math.log10(max(values) * 1.6)
    if b - a < 1:  # a decade holds at least two of the 1-2-5 ticks
        a, b = (a + b - 1) / 2, (a + b + 1) / 2
    pos = lambda v: (math.log10(v) - a) / (b - a)  # noqa: E731
    ticks: list[tuple[float, str]] = []
    decades = range(math.floor(a), math.ceil(b) + 1)
    for t in sorted(m * 10.0 ** k for k in decades for m in (1, 2, 5)):
        if 0 <= pos(t) <= 1 and (not ticks or pos(t) - ticks[-1][0] >= 0.14):
            ticks.append((pos(t), flops(t)))
    return pos, ticks


def flops_plot(rows: list[dict[str, Any]], colors: dict[str, str], label: str) -> str:
    """Scatter: top-1 vs mean total pretraining FLOPs per run (log axis; positive FLOPs)."""
    values = [pretrain_flops(r) for r in rows]
    pos, ticks = _flops_scale(values)
    axis = (pos, ticks, "mean total pretraining FLOPs per run (log scale)")
    tips = [f"{_row_name(r)}: {ci_text(top1(r))} % after {flops(v)} of pretraining "
            f"({flops(flops_per_image(r))} per image, n={r['n']})" for r, v in zip(rows, values)]
    return _scatter(rows, values, axis, colors, tips, label)


def backbone_colors(rows: list[dict[str, Any]]) -> dict[str, str]:
    """One palette colour per backbone, in backbone name order."""
    backbones = sorted({r["backbone"] for r in rows})
    return {b: draw.PALETTE[i % len(draw.PALETTE)] for i, b in enumerate(backbones)}


def _figures(group: list[dict[str, Any]], colors: dict[str, str], where: str) -> list[str]:
    """The figures of one panel: bars, and where the rows have them ID vs OOD and the paired
    differences to random init (the cost plots are :func:`_cost_figures`)."""
    figs = [
        f"<figure>{bar_plot(group, colors, f'Top-1 per method and backbone, {where}')}"
        f"<figcaption><b>Top-1 per method × backbone</b> — {esc(where)}. Bars: mean over "
        f"seeds; whiskers: 95% CI.</figcaption></figure>"]
    with_ood = [r for r in group if top1(r, "ood_acc")]
    if with_ood:
        figs.append(
            f"<figure>{ood_plot(with_ood, f'ID vs OOD top-1, {where}')}"
            f"<figcaption><b>In-distribution vs OOD top-1</b> — {esc(where)}. Filled: ID "
            f"test, hollow: OOD test; whiskers: 95% CI.</figcaption></figure>")
    with_pairs = [r for r in group if (paired(r, "vs_random") or {}).get("mean") is not None]
    if with_pairs:
        figs.append(
            f"<figure>{paired_plot(with_pairs, f'Top-1 minus random init, paired, {where}')}"
            f"<figcaption><b>Top-1 minus random init, paired over seeds</b> — {esc(where)}. "
            f"Dots: mean difference over the shared (seed, eval seed) pairs; whiskers: paired "
            f"95% interval; ✓ above 0, ✗ below.</figcaption></figure>")
    return figs


def _cost_figures(group: list[dict[str, Any]], colors: dict[str, str], where: str) -> list[str]:
    """Top-1 vs pretraining wall time and vs pretraining FLOPs, for the rows that record each
    (baselines record neither, records from before FLOPs were counted no FLOPs)."""
    figs = []
    with_time = [r for r in group if pretrain_seconds(r) is not None]
    if with_time:
        figs.append(
            f"<figure>{cost_plot(with_time, colors, f'Top-1 vs pretraining wall time, {where}')}"
            f"<figcaption><b>Top-1 vs pretraining cost: wall time</b> — {esc(where)}. Only rows "
            f"with a recorded pretraining time; whiskers: 95% CI. Wall time depends on the "
            f"machine and its load: compare it only between runs on one device."
            f"</figcaption></figure>")
    with_flops = [r for r in group if (pretrain_flops(r) or 0) > 0]
    if with_flops:
        figs.append(
            f"<figure>{flops_plot(with_flops, colors, f'Top-1 vs pretraining FLOPs, {where}')}"
            f"<figcaption><b>Top-1 vs pretraining cost: FLOPs</b> — {esc(where)}. Mean model "
            f"FLOPs of pretraining per run (forward and backward of every view, per image times "
            f"images seen), log scale; whiskers: 95% CI. FLOPs are comparable across machines, "
            f"wall time is not.</figcaption></figure>")
    return figs


def _missing_notes(measured: list[dict[str, Any]]) -> list[str]:
    """A note for each cost plot that no measured row can have."""
    out = []
    if not any(pretrain_seconds(r) is not None for r in measured):
        out.append('<p class="note">No accuracy-vs-cost plot: no record has a pretraining wall '
                   "time yet (<code>pretrain.wall_time_s</code>).</p>")
    if not any((pretrain_flops(r) or 0) > 0 for r in measured):
        out.append('<p class="note">No accuracy-vs-FLOPs plot: no record has pretraining FLOPs '
                   "yet (<code>pretrain.total_flops</code>; records written before FLOPs were "
                   "counted lack them).</p>")
    return out


def _panel(group: list[dict[str, Any]], colors: dict[str, str], where: str) -> str:
    """The figures of one panel in a grid, the two cost plots side by side in a grid of their
    own under it."""
    out = f"<div class=\"plots\">{''.join(_figures(group, colors, where))}</div>"
    cost = _cost_figures(group, colors, where)
    if cost:
        out += ('<p class="small muted">Pretraining cost: wall time (left) is only comparable '
                "between runs on the same machine; FLOPs (right) are comparable across "
                f"machines.</p><div class=\"plots\">{''.join(cost)}</div>")
    return out


def _dataset_figures(rows: list[dict[str, Any]], where: str) -> str:
    """A dataset's figures across protocols: pretraining loss curves and LP vs FT vs LP-FT."""
    from .curves import loss_plot, protocol_plot  # drawn with this module's primitives

    figs = []
    loss = loss_plot(rows, f"Pretraining loss per method and backbone, {where}")
    if loss:
        figs.append(
            f"<figure>{loss}<figcaption><b>Pretraining loss</b> — {esc(where)}. "
            f"Line: mean over the pretraining runs (seeds) at each logged step; band: lowest "
            f"to highest run. Each panel has its own y axis (losses of different methods are "
            f"not on one scale).</figcaption></figure>")
    proto = protocol_plot(rows, f"Linear probe vs fine-tuning vs LP-FT, {where}")
    if proto:
        figs.append(
            f"<figure>{proto}<figcaption><b>Linear probe vs fine-tuning vs LP-FT</b> — "
            f"{esc(where)}, all labels. Bars: in-distribution top-1 (mean over seeds, 95% CI "
            f"whiskers); hollow marks: OOD top-1. Per protocol the row with the most seeds."
            f"</figcaption></figure>")
    return f"<div class=\"plots\">{''.join(figs)}</div>" if figs else ""


def plots_section(rows: list[dict[str, Any]]) -> str:
    """The page's plots of the measured rows. Per dataset: the pretraining loss curves and the
    LP vs FT vs LP-FT comparison; then per protocol and settings the panel of its full-label rows
    (:func:`_panel`) and, where a subject was measured at >= 2 label fractions, top-1 against
    the fraction (which replaces the panels of the single fractions below 1). Colours per
    backbone over all ``rows``."""
    from .curves import fraction_plot, settings_label

    colors = backbone_colors(rows)
    measured = [r for r in rows if r.get("kind", "measured") != "reported" and top1(r)]
    if not measured:
        return '<p class="muted">No measured results to plot yet.</p>'
    # (dataset, protocol, settings without the fraction) -> label fraction -> rows
    families: dict[tuple[str, str, str], dict[float, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list))
    for r in measured:
        settings = canonical(without_fraction(r["protocol_settings"]))
        families[(r["dataset"], r["protocol"], settings)][label_fraction(r)].append(r)
    siblings: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for (d, p, _), by_fraction in families.items():
        for f, members in by_fraction.items():
            siblings[(d, p, f)].append(members[0]["protocol_settings"])

    def variant(d: str, p: str, f: float, members: list[dict[str, Any]]) -> str:
        """What tells this group's settings from the others of its protocol and fraction."""
        others = siblings[(d, p, f)]
        return settings_label(members[0]["protocol_settings"], others) if len(others) > 1 else ""

    out = _missing_notes(measured)
    dataset = None
    for key in sorted(families, key=lambda k: (k[0], protocol_sort_key(k[1]), k[2])):
        d, p, _ = key
        if d != dataset:
            out.append(f"<h3>{esc(d)}</h3>")
            out.append(_dataset_figures([r for r in measured if r["dataset"] == d], d))
            dataset = d
        by_fraction = families[key]
        fractions = sorted(by_fraction, reverse=True)
        first = variant(d, p, fractions[0], by_fraction[fractions[0]])
        where = f"{d} · {p}" + (f" · {first}" if first else "")
        curve = fraction_plot([r for rs in by_fraction.values() for r in rs],
                              f"Top-1 vs label fraction, {where}")
        if curve:
            out.append(f"<h4>{esc(p)} · label fractions{esc(f' · {first}' if first else '')}"
                       f'</h4><div class="plots"><figure>{curve}<figcaption><b>Top-1 vs label '
                       f"fraction</b> — {esc(where)}. Each line one method × backbone measured at "
                       f"two or more fractions of the labelled training set; whiskers: 95% CI. "
                       f"The full-label results are also in the panel below; the others only "
                       f"here and in the table.</figcaption></figure></div>")
        for f in fractions:
            if f != 1.0 and curve:
                continue
            v = variant(d, p, f, by_fraction[f])
            title = p + (f" · {fraction_text(f)} labels" if f != 1.0 else "")
            title += f" · {v}" if v else ""
            out.append(f"<h4>{esc(title)}</h4>"
                       f"{_panel(by_fraction[f], colors, f'{d} · {title}')}")
    return "".join(out)
