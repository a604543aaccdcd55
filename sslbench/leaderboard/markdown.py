"""The board as Markdown (``LEADERBOARD.md``): one section per dataset, tables of aggregated
rows with best and tied cells marked, and the helpers that make record text safe in Markdown."""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from html import escape as _escape_html
from typing import Any

from .aggregation import best_and_ties, canonical, is_baseline, protocol_sort_key
from .formatting import ci_text

_MISSING = "–"
_MD_SPECIAL = re.compile(r"([\\`*\[\]|~])")
# ``_`` starts or ends emphasis only at a word boundary (``raw_pixels`` is safe as it is)
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_text(text: Any) -> str:
    """Arbitrary text as one line of plain Markdown: no raw HTML (``&``, ``<``, ``>`` become
    entities) and no Markdown syntax (backslash, backtick, ``*``, ``_``, ``[``, ``]``, ``|``,
    ``~`` are backslash-escaped), so it shows as written and cannot break a table."""
    s = _escape_html(" ".join(str(text).split()), quote=False)
    return _MD_UNDERSCORE.sub(r"\\_", _MD_SPECIAL.sub(r"\\\1", s))


def md_cell(text: Any) -> str:
    """Make arbitrary text safe inside a markdown table cell."""
    return md_text(text) or " "


def md_inline(text: Any) -> str:
    """One-line inline code span for free text outside tables (no backticks, no raw HTML)."""
    s = _escape_html(" ".join(str(text).split()).replace("`", "'"), quote=False)
    return f"`{s}`"


def _pct(summary: dict[str, Any] | None) -> str:
    return _MISSING if summary is None else ci_text(summary)


def _primary_settings(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per protocol, the settings used by most groups (ties: canonical order)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        counts[r["protocol"]][canonical(r["protocol_settings"])] += 1
    return {p: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            for p, c in counts.items()}


def _views(rows: list[dict[str, Any]]) -> list[tuple[str | None, list[dict[str, Any]]]]:
    """Split one dataset's groups into tables with one settings variant per protocol.

    The first table holds each protocol's most common settings; every other settings
    variant gets its own table with only that protocol's columns.
    """
    primary = _primary_settings(rows)
    main = [r for r in rows if canonical(r["protocol_settings"]) == primary[r["protocol"]]]
    views: list[tuple[str | None, list[dict[str, Any]]]] = [(None, main)]
    extra: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        key = canonical(r["protocol_settings"])
        if key != primary[r["protocol"]]:
            extra[(r["protocol"], key)].append(r)
    for protocol, key in sorted(extra, key=lambda pk: (protocol_sort_key(pk[0]), pk[1])):
        views.append((f"{protocol}, other settings", extra[(protocol, key)]))
    return views


def _settings_text(settings: dict[str, Any]) -> str:
    if not settings:
        return "defaults"
    return ", ".join(f"{md_text(k)} = {md_inline(json.dumps(v, default=str))}"
                     for k, v in sorted(settings.items()))


def _column_marks(table: list[dict[str, dict[str, Any]]], protocols: list[str],
                  with_ood: set[str]) -> dict[tuple[int, str], str]:
    """(table row, protocol + metric) -> "best" | "tie", per column of a table whose rows map
    protocol -> aggregated row; a column with one value has no marks."""
    marks: dict[tuple[int, str], str] = {}
    for p in protocols:
        for metric in ("acc", "ood_acc") if p in with_ood else ("acc",):
            column = {i: by_protocol[p]["metrics"][metric]
                      for i, by_protocol in enumerate(table)
                      if metric in by_protocol.get(p, {}).get("metrics", {})}
            if len(column) > 1:
                best, ties = best_and_ties(column)
                marks[(best, p + metric)] = "best"
                marks.update({(i, p + metric): "tie" for i in ties})
    return marks


def _table(rows: list[dict[str, Any]]) -> list[str]:
    protocols = sorted({r["protocol"] for r in rows}, key=protocol_sort_key)
    with_ood = {p for p in protocols
                if any("ood_acc" in r["metrics"] for r in rows if r["protocol"] == p)}
    cells: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        cells[(r["method"], r["backbone"], r["recipe"])][r["protocol"]] = r
    sort_protocol = "linear" if "linear" in protocols else protocols[0]

    def order(item: tuple[tuple[str, str, str], dict[str, dict[str, Any]]]) -> tuple:
        (method, backbone, recipe), by_protocol = item
        acc = by_protocol.get(sort_protocol, {}).get("metrics", {}).get("acc")
        return (not is_baseline(method), acc is None, -acc["mean"] if acc else 0.0,
                method, backbone, recipe)

    header = ["Method", "Backbone", "Recipe"]
    for p in protocols:
        header.append(f"{p} top-1 (%)")
        if p in with_ood:
            header.append(f"{p} OOD (%)")
    header += ["Seeds", "Pretrain (s)"]
    lines = ["| " + " | ".join(md_cell(h) for h in header) + " |",
             "|" + "|".join([":---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    ranked = sorted(cells.items(), key=order)
    marks = _column_marks([by_protocol for _, by_protocol in ranked], protocols, with_ood)
    for i, ((method, backbone, recipe), by_protocol) in enumerate(ranked):
        row = [md_cell(method), md_cell(backbone), md_cell(recipe)]  # then numbers and marks
        for p in protocols:
            metrics = by_protocol.get(p, {}).get("metrics", {})
            for metric in ("acc", "ood_acc") if p in with_ood else ("acc",):
                text = _pct(metrics.get(metric))
                mark = marks.get((i, p + metric))
                row.append(f"**{text}**" if mark == "best" else
                           f"{text} ≈" if mark == "tie" else text)
        present = [by_protocol[p] for p in protocols if p in by_protocol]
        ns = [str(g["n"]) for g in present]
        row.append(ns[0] if len(set(ns)) == 1 else " / ".join(ns))
        wall = next((g["pretrain_wall_time_s"] for g in present
                     if g["pretrain_wall_time_s"] is not None), None)
        row.append(_MISSING if wall is None else f"{wall:.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _footer(rows: list[dict[str, Any]]) -> list[str]:
    protocols = sorted({r["protocol"] for r in rows}, key=protocol_sort_key)
    lines = [""]
    for p in protocols:
        settings = next(r["protocol_settings"] for r in rows if r["protocol"] == p)
        lines.append(f"- {md_inline(p)} settings: {_settings_text(settings)}")
    commits = sorted({c for r in rows for c in r["git_commits"]})
    text = ", ".join(md_inline(c[:12]) for c in commits) if commits else "unknown"
    if any(r["git_dirty"] for r in rows):
        text += " (some with uncommitted changes)"
    lines.append(f"- Commits: {text}")
    devices = sorted({d for r in rows for d in r["devices"]})
    if devices:
        lines.append(f"- Devices: {', '.join(md_inline(d) for d in devices)}")
    for r in rows:
        if len(r["recipe_sha256"]) > 1:
            what = " / ".join(md_inline(r[k]) for k in ("method", "recipe", "protocol"))
            lines.append(f"- Note: {what} mixes {len(r['recipe_sha256'])} versions of its recipe")
    return lines


def render_markdown(rows: list[dict[str, Any]]) -> str:
    """Render aggregated rows as the LEADERBOARD.md document."""
    out = [
        "# sslbench leaderboard",
        "",
        "Generated by `sslbench leaderboard` from leaderboard/results — do not edit by hand.",
        "",
        "Accuracies are in percent, averaged over seeds. `±` is the half-width of the 95% "
        "t-interval over seeds (Student t, n−1 degrees of freedom); a bare number is a single "
        f"seed; `{_MISSING}` means not measured. Baselines are listed first, then methods by "
        "linear-probe top-1. In each column the best mean is **bold** and `≈` marks a row whose "
        "95% interval overlaps the best one's (a tie: the seeds do not separate them). "
        "*Seeds* is the number of (seed, eval seed) runs per protocol; "
        "*Pretrain (s)* the mean pretraining wall time.",
    ]
    reported = [r for r in rows if r.get("kind") == "reported"]
    rows = [r for r in rows if r.get("kind") != "reported"]
    if not rows:
        out += ["", "No results yet."]
    by_dataset: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_dataset[r["dataset"]].append(r)
    for dataset in sorted(by_dataset):
        out += ["", f"## {md_text(dataset)}"]
        for title, view in _views(by_dataset[dataset]):
            out.append("")
            if title:
                out += [f"### {md_text(title)}", ""]
            out += _table(view)
            out += _footer(view)
    if reported:
        out += ["", "## Reported in papers (not measured here)", "",
                "| Dataset | Protocol | Method | Backbone | top-1 (%) | Source |",
                "|:---|:---|:---|:---|---:|:---|"]
        for r in reported:
            cells = [r["dataset"], r["protocol"], r["method"], r["backbone"],
                     _pct(r["metrics"].get("acc")), "; ".join(r.get("sources") or []) or "?"]
            out.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    return "\n".join(out) + "\n"

