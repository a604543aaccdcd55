"""Render the leaderboard as ONE self-contained static HTML page.

Everything is inline: CSS and JS from ``static/`` next to this file, plots as SVG drawn here,
table data for the sort/filter script in a ``<script type="application/json">`` block. The page
loads nothing from anywhere (a Content-Security-Policy with ``default-src 'none'`` and hashes of
the inline style and script enforces it in the browser).

Safety: every string that comes from a record (or a plugin's method name) goes through
:func:`esc` (``html.escape(quote=True)``), in HTML, SVG text and attributes alike; the JSON for
the script is :func:`script_json` (``<``, ``>``, ``&`` written as ``\\u003c``...).

Rows come from :func:`render.aggregate` (mean over seeds, 95% t-interval). Measured rows and
rows reported in papers (``kind: reported``) get separate tables and are never compared.
Within one (dataset, protocol, label fraction) the row with the highest mean top-1 is *best*;
every other row whose 95% CI overlaps the best row's CI is marked *tie* (a single-seed row
counts as the point interval at its mean).
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from ..utils import atomic_write_text
from .render import _canonical, _protocol_sort_key, aggregate, best_and_ties, interval
from .store import load_records

PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#9D755D",
           "#EECA3B", "#FF9DA6", "#79706E")
ID_COLOR, OOD_COLOR = "#4C78A8", "#E45756"
REPORTED_TITLE = "Reported in papers (not measured here)"
_FONT = 'system-ui, -apple-system, &quot;Segoe UI&quot;, Roboto, Arial, sans-serif'


# --------------------------------------------------------------------------- escaping helpers


def esc(value: Any) -> str:
    """HTML-escape anything (quotes included) for text or attribute context."""
    return html.escape(str(value), quote=True)


def script_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&``."""
    text = json.dumps(obj, sort_keys=True, default=str, allow_nan=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- row views


def label_fraction(row: dict[str, Any]) -> float:
    """``protocol_settings.label_fraction`` (default 1.0: all labels)."""
    value = (row.get("protocol_settings") or {}).get("label_fraction", 1.0)
    try:
        return float(value)
    except (TypeError, ValueError):
        return 1.0


def fraction_text(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when missing, not a number, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _pretrain_s(row: dict[str, Any]) -> float | None:
    return _finite(row.get("pretrain_wall_time_s"))


def _acc(row: dict[str, Any], metric: str = "acc") -> dict[str, Any] | None:
    summary = row["metrics"].get(metric)
    if summary is None or not math.isfinite(summary["mean"]):
        return None
    return summary


def _tie_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("kind", "measured"), row["dataset"], row["protocol"], label_fraction(row))


def mark_ties(rows: list[dict[str, Any]]) -> dict[int, tuple[str, int]]:
    """Per row index: ``("best", i)`` or ``("tie", i_best)``; rows not listed are neither.

    Rows are compared only within the same kind (measured / reported), dataset, protocol and
    label fraction, on top-1 (``acc``). A row ties when its 95% CI overlaps the best row's.
    """
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if _acc(row) is not None:
            groups[_tie_key(row)].append(i)
    marks: dict[int, tuple[str, int]] = {}
    for members in groups.values():
        best, ties = best_and_ties({i: _acc(rows[i]) for i in members})
        marks[best] = ("best", best)
        marks.update({i: ("tie", best) for i in ties})
    return marks


def _settings_variants(rows: list[dict[str, Any]]) -> dict[int, str]:
    """Short text telling apart rows of one (dataset, protocol) that use different settings."""
    by_protocol: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_protocol[(row["dataset"], row["protocol"])].append(i)
    out: dict[int, str] = {}
    for members in by_protocol.values():
        settings = [{k: v for k, v in rows[i]["protocol_settings"].items()
                     if k != "label_fraction"} for i in members]
        if len({_canonical(s) for s in settings}) < 2:
            continue
        keys = sorted({k for s in settings for k in s})
        differing = [k for k in keys
                     if len({_canonical(s.get(k)) for s in settings}) > 1]
        for i, s in zip(members, settings):
            out[i] = ", ".join(f"{k}={json.dumps(s.get(k), default=str)}" for k in differing)
    return out


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leaderboard order: dataset, protocol, label fraction, then top-1 best first."""
    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        acc = _acc(row)
        return (row["dataset"], _protocol_sort_key(row["protocol"]), -label_fraction(row),
                acc is None, -(acc["mean"] if acc else 0.0), row["method"], row["backbone"],
                row["recipe"], _canonical(row["protocol_settings"]))
    return sorted(rows, key=key)


# --------------------------------------------------------------------------- tables


def _metric_cell(summary: dict[str, Any] | None, cls: str) -> str:
    if summary is None:
        return f'<td class="num {cls} na">–</td>'
    ci = "" if summary["ci95"] is None else (
        f' <span class="ci">± {100 * summary["ci95"]:.1f}</span>')
    return f'<td class="num {cls}">{100 * summary["mean"]:.1f}{ci}</td>'


def _dl(items: Iterable[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _codes(values: Iterable[Any], limit: int | None = None) -> str:
    vals = [str(v) for v in values]
    if not vals:
        return '<span class="muted">unknown</span>'
    return ", ".join(f'<code title="{esc(v)}">{esc(v[:limit] if limit else v)}</code>'
                     for v in vals)


def _provenance(row: dict[str, Any]) -> str:
    settings = {k: v for k, v in row["protocol_settings"].items()}
    chosen = {k: v for k, v in (row.get("chosen_settings") or {}).items()
              if all(not isinstance(x, (dict, list)) for x in v)}
    items = []
    if row.get("kind") == "reported":
        items.append(("source", esc("; ".join(row.get("sources") or []) or "unknown")))
    items += [
        ("recipe", f'<code>{esc(row["recipe"])}</code>'
         + (f' · <code>{esc(row["recipe_path"])}</code>' if row.get("recipe_path") else "")),
        ("recipe sha256", _codes(row.get("recipe_sha256") or [])),
        ("commit" + ("s" if len(row.get("git_commits") or []) > 1 else ""),
         _codes(row.get("git_commits") or [], 12)
         + (' <span class="badge tie">uncommitted changes</span>' if row.get("git_dirty")
            else "")),
        ("device" + ("s" if len(row.get("devices") or []) > 1 else ""),
         esc(", ".join(row.get("devices") or [])) or '<span class="muted">unknown</span>'),
        ("pretrain time", esc(_seconds(_pretrain_s(row)))
         + (" (mean)" if _pretrain_s(row) is not None else "")),
        ("eval time", esc(_seconds(_finite(row.get("eval_wall_time_s"))))
         + (" (mean)" if _finite(row.get("eval_wall_time_s")) is not None else "")),
        ("records", esc(f'{row.get("n_records", row["n"])} file(s), {row["n"]} '
                        f'(seed, eval seed) pair(s)')),
        ("seeds", esc(", ".join(f"{s}/{e}" for s, e in row["seeds"]))),
    ]
    if row.get("run_ids"):
        items.append(("runs", _codes(row["run_ids"])))
    items.append(("settings", esc(", ".join(
        f"{k}={json.dumps(v, default=str)}" for k, v in sorted(settings.items())) or "defaults")))
    if chosen:
        items.append(("chosen", esc("; ".join(
            f"{k}: {', '.join(json.dumps(x, default=str) for x in v)}"
            for k, v in sorted(chosen.items())))))
    items.append(("newest record", esc(row.get("created", ""))))
    return f'<div class="prov-panel">{_dl(items)}</div>'


def _columns(reported: bool, show_lf: bool) -> list[tuple[str, str | None, str, str]]:
    """(label, JSON key to sort on, sort type, css class)."""
    cols = [("Dataset", "dataset", "text", ""), ("Protocol", "protocol", "text", "")]
    if show_lf:
        cols.append(("Labels", "lf_value", "num", "num"))
    cols += [("Method", "method", "text", ""), ("Backbone", "backbone", "text", "")]
    if not reported:
        cols.append(("Recipe", "recipe", "text", ""))
    cols += [("Top-1 (%)", "acc", "num", "num"), ("OOD (%)", "ood", "num", "num"),
             ("Seeds", "n", "num", "num")]
    if reported:
        cols.append(("Source", "source", "text", ""))
    else:
        cols.append(("Pretrain", "pretrain", "num", "num"))
    cols += [("vs best", None, "", ""), ("Provenance", None, "", "")]
    return cols


def _table(table_id: str, rows: list[dict[str, Any]], ids: list[int], marks: dict,
           variants: dict[int, str], all_rows: list[dict[str, Any]], reported: bool,
           show_lf: bool) -> str:
    cols = _columns(reported, show_lf)
    head = []
    for label, key, kind, cls in cols:
        if key is None:
            head.append(f'<th scope="col" data-label="{esc(label)}">{esc(label)}</th>')
        else:
            head.append(f'<th scope="col" class="{cls}" data-label="{esc(label)}" '
                        f'data-key="{key}" data-type="{kind}">'
                        f'<button type="button" class="sort">{esc(label)}</button></th>')
    body = []
    for i in ids:
        row = all_rows[i]
        tie = marks.get(i)
        badge = ""
        if tie and tie[0] == "best":
            badge = '<span class="badge best" title="highest mean top-1 here">best</span>'
        elif tie:
            b = all_rows[tie[1]]
            lo, hi = interval(_acc(b))
            title = (f"95% CI overlaps the best row's: {b['method']} · {b['backbone']} · "
                     f"{b['recipe']} ({100 * lo:.1f}–{100 * hi:.1f}%)")
            badge = f'<span class="badge tie" title="{esc(title)}">tie</span>'
        protocol = esc(row["protocol"])
        if i in variants:
            protocol += f' <span class="tag">{esc(_short(variants[i], 40))}</span>'
        method = esc(row["method"])
        if row.get("baseline"):
            method += ' <span class="badge base" title="reference baseline">baseline</span>'
        cells = [f'<td>{esc(row["dataset"])}</td>', f"<td>{protocol}</td>"]
        if show_lf:
            cells.append(f'<td class="num">{esc(fraction_text(label_fraction(row)))}</td>')
        cells += [f'<td class="method">{method}</td>', f'<td>{esc(row["backbone"])}</td>']
        if not reported:
            cells.append(f'<td>{esc(row["recipe"])}</td>')
        cells += [_metric_cell(_acc(row), "acc"), _metric_cell(_acc(row, "ood_acc"), "ood"),
                  f'<td class="num">{row["n"]}</td>']
        if reported:
            cells.append(f'<td class="source">{esc("; ".join(row.get("sources") or []))}</td>')
        else:
            cells.append(f'<td class="num">{esc(_seconds(_pretrain_s(row)))}</td>')
        n = row.get("n_records", row["n"])
        toggle = (f'<button type="button" class="prov-toggle" aria-expanded="false" '
                  f'aria-controls="prov-{i}" title="recipe, commits, devices, times">'
                  f'{n} record{"s" if n != 1 else ""}</button>')
        cells += [f"<td>{badge}</td>", f'<td class="prov">{toggle}</td>']
        cls = ' class="baseline"' if row.get("baseline") else ""
        body.append(f'<tr data-row="{i}"{cls}>' + "".join(cells) + "</tr>")
        # provenance: a full-width row under its row, opened by the toggle (see board.js)
        body.append(f'<tr class="prov-row" id="prov-{i}" data-prov="{i}" hidden>'
                    f'<td colspan="{len(cols)}">{_provenance(row)}</td></tr>')
    body.append(f'<tr class="empty" hidden><td colspan="{len(cols)}">No rows match the '
                f"filters.</td></tr>")
    caption = "Reported results" if reported else "Measured results"
    return (f'<div class="table-wrap"><table class="board" id="{table_id}">'
            f'<caption hidden>{caption}</caption><thead><tr>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _filters(rows: list[dict[str, Any]]) -> str:
    specs = [("dataset", "Dataset", sorted({r["dataset"] for r in rows})),
             ("protocol", "Protocol",
              sorted({r["protocol"] for r in rows}, key=_protocol_sort_key)),
             ("backbone", "Backbone", sorted({r["backbone"] for r in rows})),
             ("lf", "Label fraction",
              [fraction_text(f) for f in sorted({label_fraction(r) for r in rows}, reverse=True)])]
    out = []
    for key, label, values in specs:
        options = ['<option value="">All</option>'] + [
            f'<option value="{esc(v)}">{esc(v)}</option>' for v in values]
        out.append(f'<label>{esc(label)}<select data-filter="{key}" id="filter-{key}">'
                   f'{"".join(options)}</select></label>')
    out.append('<button type="button" class="reset" id="filter-reset">Reset</button>')
    out.append('<span class="count" id="filter-count" aria-live="polite"></span>')
    return f'<div class="filters" role="search">{"".join(out)}</div>'


def _js_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        acc, ood = _acc(row), _acc(row, "ood_acc")
        out.append({
            "kind": row.get("kind", "measured"), "dataset": row["dataset"],
            "protocol": row["protocol"], "method": row["method"], "backbone": row["backbone"],
            "recipe": row["recipe"], "lf": fraction_text(label_fraction(row)),
            "lf_value": label_fraction(row), "acc": acc["mean"] if acc else None,
            "ood": ood["mean"] if ood else None, "n": row["n"],
            "pretrain": _pretrain_s(row),
            "source": "; ".join(row.get("sources") or []),
        })
    return out


# --------------------------------------------------------------------------- SVG plots


def _num(x: float) -> str:
    return f"{x:.1f}"


def _text(x: float, y: float, text: str, anchor: str = "start", size: int = 11,
          fill: str = "#1f2328", weight: str = "normal", title: str | None = None) -> str:
    tip = f"<title>{esc(title)}</title>" if title else ""
    return (f'<text x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}" font-size="{size}" '
            f'fill="{fill}" font-weight="{weight}" dy="0.35em">{tip}{esc(text)}</text>')


def _svg(width: int, height: float, body: list[str], label: str) -> str:
    return (f'<svg viewBox="0 0 {width} {_num(height)}" '
            f'role="img" aria-label="{esc(label)}" font-family="{_FONT}">'
            + "".join(body) + "</svg>")


def _x_axis(x0: float, width: float, top: float, bottom: float, title: str,
            ticks: list[tuple[float, str]]) -> list[str]:
    out = []
    for pos, label in ticks:
        x = x0 + pos * width
        out.append(f'<line x1="{_num(x)}" y1="{_num(top)}" x2="{_num(x)}" y2="{_num(bottom)}" '
                   f'stroke="#e5e8eb" stroke-width="1"/>')
        out.append(_text(x, bottom + 10, label, "middle", 10, "#59636e"))
    out.append(f'<line x1="{_num(x0)}" y1="{_num(bottom)}" x2="{_num(x0 + width)}" '
               f'y2="{_num(bottom)}" stroke="#afb8c1" stroke-width="1"/>')
    out.append(_text(x0 + width / 2, bottom + 26, title, "middle", 11, "#59636e"))
    return out


def _legend(items: list[tuple[str, str]], x0: float, y: float,
            max_x: float) -> tuple[list[str], float]:
    out, x = [], x0
    for color, label in items:
        label = _short(label, 28)
        w = 18 + 6.6 * len(label) + 14
        if x + w > max_x and x > x0:
            x, y = x0, y + 18
        out.append(f'<rect x="{_num(x)}" y="{_num(y - 5)}" width="11" height="11" rx="2" '
                   f'fill="{color}"/>')
        out.append(_text(x + 16, y + 0.5, label, size=11))
        x += w
    return out, y + 18


def _pct_ticks() -> list[tuple[float, str]]:
    return [(v / 100, str(v)) for v in range(0, 101, 20)]


def _clamp(v: float) -> float:
    return min(1.0, max(0.0, v))


def _whisker(x1: float, x2: float, y: float, color: str = "#1f2328") -> str:
    return (f'<line x1="{_num(x1)}" y1="{_num(y)}" x2="{_num(x2)}" y2="{_num(y)}" '
            f'stroke="{color}" stroke-width="1.3"/>'
            f'<line x1="{_num(x1)}" y1="{_num(y - 4)}" x2="{_num(x1)}" y2="{_num(y + 4)}" '
            f'stroke="{color}" stroke-width="1.3"/>'
            f'<line x1="{_num(x2)}" y1="{_num(y - 4)}" x2="{_num(x2)}" y2="{_num(y + 4)}" '
            f'stroke="{color}" stroke-width="1.3"/>')


def _ci_text(summary: dict[str, Any]) -> str:
    mean = f"{100 * summary['mean']:.1f}"
    return mean if summary["ci95"] is None else f"{mean} ± {100 * summary['ci95']:.1f}"


def _row_name(row: dict[str, Any]) -> str:
    return f"{row['method']} · {row['backbone']} · {row['recipe']}"


def bar_plot(rows: list[dict[str, Any]], colors: dict[str, str], label: str) -> str:
    """Grouped horizontal bars: one group per method, one bar per backbone, CI whiskers."""
    W, label_w, right = 680, 170, 96
    x0, width = label_w + 12, W - label_w - 12 - right
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    methods = sorted(by_method, key=lambda m: (-max(_acc(r)["mean"] for r in by_method[m]), m))
    backbones = sorted({r["backbone"] for r in rows})
    legend, y = _legend([(colors[b], b) for b in backbones], x0, 12, W - 8)
    top = y + 4
    bar_h, gap, group_gap = 15, 4, 14
    body: list[str] = []
    y = top + 6
    for method in methods:
        group = sorted(by_method[method], key=lambda r: (r["backbone"], r["recipe"]))
        h = len(group) * bar_h + (len(group) - 1) * gap
        body.append(_text(label_w, y + h / 2, _short(method, 24), "end", 12, weight="600",
                          title=method))
        dup = len({r["backbone"] for r in group}) < len(group)
        for row in group:
            acc = _acc(row)
            cy = y + bar_h / 2
            xm = x0 + _clamp(acc["mean"]) * width
            tip = f"{_row_name(row)}: {_ci_text(acc)} % (n={row['n']})"
            body.append(f'<rect x="{_num(x0)}" y="{_num(y)}" width="{_num(xm - x0)}" '
                        f'height="{bar_h}" rx="2" fill="{colors[row["backbone"]]}" '
                        f'fill-opacity="0.9"><title>{esc(tip)}</title></rect>')
            end = xm
            if acc["ci95"] is not None:
                lo, hi = interval(acc)
                xl, xh = x0 + _clamp(lo) * width, x0 + _clamp(hi) * width
                body.append(_whisker(xl, xh, cy))
                end = max(end, xh)
            text = _ci_text(acc) + (f"  ({_short(row['recipe'], 14)})" if dup else "")
            body.append(_text(end + 5, cy, text, size=10.5, fill="#3d444d"))
            y += bar_h + gap
        y += group_gap - gap
    bottom = y
    axis = _x_axis(x0, width, top, bottom, "top-1 accuracy (%)", _pct_ticks())
    return _svg(W, bottom + 36, legend + axis + body, label)


def ood_plot(rows: list[dict[str, Any]], label: str) -> str:
    """Dumbbell plot: in-distribution vs OOD top-1 per method (× backbone), with CIs."""
    W, label_w, right = 680, 220, 64
    x0, width = label_w + 12, W - label_w - 12 - right
    legend, y = _legend([(ID_COLOR, "in-distribution test"), (OOD_COLOR, "OOD test")],
                        x0, 12, W - 8)
    legend.append(_text(W - 6, 12, "OOD − ID", "end", 10.5, "#59636e", "600"))
    top = y + 4
    step = 24
    body: list[str] = []
    ordered = sorted(rows, key=lambda r: (-_acc(r)["mean"], r["method"], r["backbone"]))
    names = [f"{r['method']} · {r['backbone']}" for r in ordered]
    dup = len(set(names)) < len(names)
    y = top + 14
    for row, name in zip(ordered, names):
        if dup:
            name += f" · {row['recipe']}"
        idm, ood = _acc(row), _acc(row, "ood_acc")
        xi, xo = x0 + _clamp(idm["mean"]) * width, x0 + _clamp(ood["mean"]) * width
        body.append(_text(label_w, y, _short(name, 34), "end", 11.5, title=name))
        body.append(f'<line x1="{_num(xo)}" y1="{_num(y)}" x2="{_num(xi)}" y2="{_num(y)}" '
                    f'stroke="#c9d1d9" stroke-width="4" stroke-linecap="round"/>')
        for summary, color, hollow in ((ood, OOD_COLOR, True), (idm, ID_COLOR, False)):
            if summary["ci95"] is not None:
                lo, hi = interval(summary)
                body.append(_whisker(x0 + _clamp(lo) * width, x0 + _clamp(hi) * width, y,
                                     color))
            cx = x0 + _clamp(summary["mean"]) * width
            fill = "#ffffff" if hollow else color
            kind = "OOD" if hollow else "ID"
            tip = f"{name} — {kind}: {_ci_text(summary)} % (n={row['n']})"
            body.append(f'<circle cx="{_num(cx)}" cy="{_num(y)}" r="5" fill="{fill}" '
                        f'stroke="{color}" stroke-width="2"><title>{esc(tip)}</title></circle>')
        gap = 100 * (ood["mean"] - idm["mean"])
        body.append(_text(W - 6, y, f"{gap:+.1f}", "end", 10.5, "#59636e",
                          title="OOD minus ID (points)"))
        y += step
    bottom = y - step / 2 + 4
    axis = _x_axis(x0, width, top, bottom, "top-1 accuracy (%)", _pct_ticks())
    return _svg(W, bottom + 36, legend + axis + body, label)


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


def cost_plot(rows: list[dict[str, Any]], colors: dict[str, str], label: str) -> str:
    """Scatter: top-1 vs mean pretraining wall time (log axis when it spans > 10×)."""
    W, H, x0, right = 680, 300, 56, 130
    legend, top = _legend([(colors[b], b) for b in sorted({r["backbone"] for r in rows})],
                          x0, 12, W - 8)
    top += 8
    width, bottom = W - x0 - right, H - 44
    pos, ticks, log = _time_scale([_pretrain_s(r) for r in rows])
    body = _x_axis(x0, width, top, bottom,
                   "mean pretraining wall time" + (" (log scale)" if log else ""), ticks)
    accs = [_acc(r) for r in rows]
    lo_a = min(interval(a)[0] for a in accs)
    hi_a = max(interval(a)[1] for a in accs)
    a_min = max(0.0, math.floor((lo_a - 0.02) * 10) / 10)
    a_max = min(1.0, math.ceil((hi_a + 0.02) * 10) / 10)
    if a_max - a_min < 0.2:
        a_min, a_max = max(0.0, a_max - 0.2), max(a_max, 0.2)
    yp = lambda v: bottom - (v - a_min) / (a_max - a_min) * (bottom - top)  # noqa: E731
    steps = int(round((a_max - a_min) / 0.1))
    for k in range(steps + 1):
        v = a_min + k * (a_max - a_min) / steps
        body.append(f'<line x1="{x0}" y1="{_num(yp(v))}" x2="{x0 + width}" y2="{_num(yp(v))}" '
                    f'stroke="#eef1f4" stroke-width="1"/>')
        body.append(_text(x0 - 6, yp(v), f"{100 * v:.0f}", "end", 10, "#59636e"))
    mid = _num((top + bottom) / 2)
    body.append(f'<text x="14" y="{mid}" font-size="11" fill="#59636e" text-anchor="middle" '
                f'transform="rotate(-90 14 {mid})">top-1 (%)</text>')
    points, labels = [], []
    placed: list[tuple[float, float, float]] = []  # (x1, x2, y) of labels already placed
    for row, acc in sorted(zip(rows, accs), key=lambda p: -p[1]["mean"]):
        cx, cy = x0 + pos(_pretrain_s(row)) * width, yp(acc["mean"])
        color = colors[row["backbone"]]
        if acc["ci95"] is not None:
            lo, hi = interval(acc)
            y1, y2 = yp(max(lo, a_min)), yp(min(hi, a_max))
            points.append(f'<line x1="{_num(cx)}" y1="{_num(y1)}" x2="{_num(cx)}" '
                          f'y2="{_num(y2)}" stroke="{color}" stroke-width="1.4"/>')
        tip = (f"{_row_name(row)}: {_ci_text(acc)} % after "
               f"{_seconds(_pretrain_s(row))} pretraining (n={row['n']})")
        points.append(f'<circle cx="{_num(cx)}" cy="{_num(cy)}" r="5.5" fill="{color}" '
                      f'stroke="#ffffff" stroke-width="1.5"><title>{esc(tip)}</title></circle>')
        text = _short(row["method"], 22)
        x1, x2, ly = cx + 9, cx + 9 + 6.4 * len(text), cy
        while any(a < x2 and x1 < b and abs(ly - y) < 12 for a, b, y in placed):
            ly += 12  # nudge down until it no longer overlaps a placed label
        placed.append((x1, x2, ly))
        if ly != cy:
            labels.append(f'<line x1="{_num(cx + 4)}" y1="{_num(cy + 2)}" x2="{_num(x1 - 1)}" '
                          f'y2="{_num(ly)}" stroke="#afb8c1" stroke-width="0.8"/>')
        labels.append(_text(x1, ly, text, size=11, title=_row_name(row)))
    return _svg(W, max(H, max(y for _, _, y in placed) + 50), legend + body + points + labels,
                label)


def _plots(rows: list[dict[str, Any]], colors: dict[str, str]) -> str:
    measured = [r for r in rows if r.get("kind", "measured") != "reported" and _acc(r)]
    if not measured:
        return '<p class="muted">No measured results to plot yet.</p>'
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in measured:
        settings = {k: v for k, v in r["protocol_settings"].items() if k != "label_fraction"}
        groups[(r["dataset"], r["protocol"], label_fraction(r), _canonical(settings))].append(r)
    n_variants: dict[tuple[str, str, float], int] = defaultdict(int)
    for d, p, f, _ in groups:
        n_variants[(d, p, f)] += 1
    any_cost = any(_pretrain_s(r) is not None for r in measured)
    out: list[str] = []
    if not any_cost:
        out.append('<p class="note">No accuracy-vs-cost plot: no record has a pretraining wall '
                   "time yet (<code>pretrain.wall_time_s</code>).</p>")
    keys = sorted(groups, key=lambda k: (k[0], _protocol_sort_key(k[1]), -k[2], k[3]))
    dataset = None
    variant_no: dict[tuple[str, str, float], int] = defaultdict(int)
    for key in keys:
        d, p, f, settings = key
        if d != dataset:
            out.append(f"<h3>{esc(d)}</h3>")
            dataset = d
        title = p + (f" · {fraction_text(f)} labels" if f != 1.0 else "")
        if n_variants[(d, p, f)] > 1:
            variant_no[(d, p, f)] += 1
            title += f" · settings variant {variant_no[(d, p, f)]}"
        group = groups[key]
        where = f"{d} · {title}"
        figs = [
            f"<figure>{bar_plot(group, colors, f'Top-1 per method and backbone, {where}')}"
            f"<figcaption><b>Top-1 per method × backbone</b> — {esc(where)}. Bars: mean over "
            f"seeds; whiskers: 95% CI.</figcaption></figure>"]
        with_ood = [r for r in group if _acc(r, "ood_acc")]
        if with_ood:
            figs.append(
                f"<figure>{ood_plot(with_ood, f'ID vs OOD top-1, {where}')}"
                f"<figcaption><b>In-distribution vs OOD top-1</b> — {esc(where)}. Filled: ID "
                f"test, hollow: OOD test; whiskers: 95% CI.</figcaption></figure>")
        with_cost = [r for r in group if _pretrain_s(r) is not None]
        if with_cost:
            figs.append(
                f"<figure>{cost_plot(with_cost, colors, f'Top-1 vs pretraining cost, {where}')}"
                f"<figcaption><b>Top-1 vs pretraining cost</b> — {esc(where)}. Only rows with "
                f"a recorded pretraining time (baselines have none); whiskers: 95% CI."
                f"</figcaption></figure>")
        out.append(f"<h4>{esc(title)}</h4><div class=\"plots\">{''.join(figs)}</div>")
    return "".join(out)


# --------------------------------------------------------------------------- page


def render_html(rows: list[dict[str, Any]], title: str = "sslbench leaderboard") -> str:
    """Render aggregated rows (from :func:`render.aggregate`) as one self-contained page."""
    rows = _order(rows)
    marks = mark_ties(rows)
    variants = _settings_variants(rows)
    measured = [i for i, r in enumerate(rows) if r.get("kind", "measured") != "reported"]
    reported = [i for i, r in enumerate(rows) if r.get("kind") == "reported"]
    show_lf = any(label_fraction(r) != 1.0 for r in rows)  # hidden while every row used all labels
    backbones = sorted({r["backbone"] for r in rows})
    colors = {b: PALETTE[i % len(PALETTE)] for i, b in enumerate(backbones)}

    css, js = _static("board.css"), _static("board.js")
    csp = ("default-src 'none'; base-uri 'none'; form-action 'none'; img-src data:; "
           f"style-src {_csp_hash(css)}; script-src {_csp_hash(js)}")
    n_records = sum(r.get("n_records", r["n"]) for r in rows)
    datasets = sorted({r["dataset"] for r in rows})
    newest = max((str(r.get("created", "")) for r in rows), default="")
    stats = [(n, f"{what}{'' if n == 1 else 's'}") for n, what in [
        (len(measured), "measured row"), (len(reported), "reported row"),
        (n_records, "record"), (len(datasets), "dataset")]]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="sslbench leaderboard --format html">',
        '<link rel="icon" href="data:,">',
        f"<title>{esc(title)}</title>",
        f"<style>{css}</style></head><body><main>",
        f'<header class="page"><h1>{esc(title)}</h1>',
        '<p class="muted">Generated by <code>sslbench leaderboard --format html</code> from '
        "<code>leaderboard/results</code> — do not edit by hand."
        + (f" Newest result: {esc(newest[:10])}." if newest else "") + "</p>",
        '<div class="stats">' + "".join(f'<span class="stat"><b>{n}</b>{esc(label)}</span>'
                                        for n, label in stats) + "</div></header>",
        '<p class="small muted">Top-1 accuracies in percent, averaged over seeds; '
        "<b>±</b> is the half-width of the 95% Student-t interval over seeds (none for a "
        'single seed). <span class="badge best">best</span> marks the highest mean within a '
        'dataset, protocol and label fraction; <span class="badge tie">tie</span> marks rows '
        "whose 95% CI overlaps the best row's (a single seed counts as a point). Click a column "
        "header to sort; open <i>Provenance</i> for recipe, commits, devices and times.</p>",
        "<h2>Results measured with sslbench</h2>",
        _filters(rows),
    ]
    if measured:
        parts.append(_table("measured", rows, measured, marks, variants, rows, False, show_lf))
    else:
        parts.append('<p class="note">No results yet. Run <code>sslbench run RECIPE</code> to '
                     "add some.</p>")
    parts.append(f'<section class="reported"><h2>{esc(REPORTED_TITLE)}</h2>')
    parts.append('<p class="small muted">Figures copied from papers (<code>kind: reported</code> '
                 "records, each with its source). Their setups differ from ours, so they are "
                 "never ranked against measured rows; ties here compare reported rows only.</p>")
    if reported:
        parts.append(_table("reported", rows, reported, marks, variants, rows, True, show_lf))
    else:
        parts.append('<p class="note">No reported results.</p>')
    parts.append("</section>")
    parts.append("<h2>Plots</h2>")
    parts.append('<p class="small muted">Measured rows only, one panel per dataset and '
                 "protocol. Hover a bar or point for its exact numbers.</p>")
    parts.append(_plots(rows, colors))
    parts.append('<footer>sslbench · one JSON record per (run, protocol, seed) under '
                 "<code>leaderboard/results</code>; this page is static and loads nothing "
                 "from the network.</footer></main>")
    parts.append('<script type="application/json" id="board-data">'
                 + script_json({"rows": _js_rows(rows)}) + "</script>")
    parts.append(f"<script>{js}</script></body></html>")
    return "\n".join(parts) + "\n"


def render_html_dir(results_dir: str | Path) -> str:
    """Load, aggregate and render the records under ``results_dir`` as an HTML page (a file
    that is not a valid record is skipped with a one-line warning on stderr)."""
    return render_html(aggregate(load_records(results_dir, skip_bad=True)))


def write_html(leaderboard_dir: str | Path) -> Path:
    """Render ``<leaderboard_dir>/results`` into ``<leaderboard_dir>/index.html`` atomically."""
    leaderboard_dir = Path(leaderboard_dir)
    return atomic_write_text(leaderboard_dir / "index.html",
                             render_html_dir(leaderboard_dir / "results"))
