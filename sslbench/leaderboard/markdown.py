"""The board as Markdown (``LEADERBOARD.md``): one section per dataset, tables of aggregated
rows with best and tied cells marked, each followed by a table of paired differences (top-1 vs
random init and vs the column's best, the minimal detectable difference), and the helpers that
make record text safe in Markdown."""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from html import escape as _escape_html
from collections.abc import Callable
from typing import Any

from .aggregation import (
    CLAIM_DELTA, PRIMARY_METRIC, RANDOM_INIT, canonical, flops_per_image, is_baseline, paired,
    pretrain_flops, pretrain_seconds, protocol_sort_key,
)
from .formatting import (
    VERDICT_MARKS, ci_text, cost_legend, diff_text, eval_sets_text, flops, paired_legend,
    pairs_text, points,
)

_MISSING = "–"
_Ranked = list[tuple[tuple[str, str, str], dict[str, dict[str, Any]]]]
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


def _metrics(protocol: str, with_ood: set[str]) -> tuple[str, ...]:
    """The metrics shown for ``protocol``: top-1, and OOD top-1 where any row has it."""
    return (PRIMARY_METRIC, "ood_acc") if protocol in with_ood else (PRIMARY_METRIC,)


def _column_marks(table: _Ranked, protocols: list[str],
                  with_ood: set[str]) -> dict[tuple[int, str], str]:
    """(table row, protocol + metric) -> "best" | "tie", per column of a table, from the rows'
    ``best`` and ``vs_best`` (:func:`.aggregation.add_paired`: a table column is one comparison
    group); a column with one value has no marks."""
    marks: dict[tuple[int, str], str] = {}
    for p in protocols:
        for metric in _metrics(p, with_ood):
            column = {i: by_protocol[p] for i, (_, by_protocol) in enumerate(table)
                      if metric in by_protocol.get(p, {}).get("metrics", {})}
            if len(column) < 2:
                continue
            for i, row in column.items():
                if (row.get("best") or {}).get(metric):
                    marks[(i, p + metric)] = "best"
                elif ((row.get("vs_best") or {}).get(metric) or {}).get("tie"):
                    marks[(i, p + metric)] = "tie"
    return marks


def _ranked(rows: list[dict[str, Any]], protocols: list[str]) -> _Ranked:
    """(method, backbone, recipe) -> protocol -> row, baselines first, then by linear top-1
    (the first protocol's without linear), best first."""
    cells: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        cells[(r["method"], r["backbone"], r["recipe"])][r["protocol"]] = r
    sort_protocol = "linear" if "linear" in protocols else protocols[0]

    def order(item: tuple[tuple[str, str, str], dict[str, dict[str, Any]]]) -> tuple:
        (method, backbone, recipe), by_protocol = item
        acc = by_protocol.get(sort_protocol, {}).get("metrics", {}).get(PRIMARY_METRIC)
        return (not is_baseline(method), acc is None, -acc["mean"] if acc else 0.0,
                method, backbone, recipe)

    return sorted(cells.items(), key=order)


def _header(protocols: list[str], with_ood: set[str]) -> list[str]:
    header = ["Method", "Backbone", "Recipe"]
    for p in protocols:
        header.append(f"{p} top-1 (%)")
        if p in with_ood:
            header.append(f"{p} OOD (%)")
    header += ["Seeds", "Pretrain (s)", "Pretrain FLOP", "FLOP / image"]
    return ["| " + " | ".join(md_cell(h) for h in header) + " |",
            "|" + "|".join([":---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]


def _table(rows: list[dict[str, Any]]) -> list[str]:
    protocols = sorted({r["protocol"] for r in rows}, key=protocol_sort_key)
    with_ood = {p for p in protocols
                if any("ood_acc" in r["metrics"] for r in rows if r["protocol"] == p)}
    ranked = _ranked(rows, protocols)
    marks = _column_marks(ranked, protocols, with_ood)
    lines = _header(protocols, with_ood)
    for i, ((method, backbone, recipe), by_protocol) in enumerate(ranked):
        row = [md_cell(method), md_cell(backbone), md_cell(recipe)]  # then numbers and marks
        for p in protocols:
            metrics = by_protocol.get(p, {}).get("metrics", {})
            for metric in _metrics(p, with_ood):
                text = _pct(metrics.get(metric))
                mark = marks.get((i, p + metric))
                row.append(f"**{text}**" if mark == "best" else
                           f"{text} ≈" if mark == "tie" else text)
        present = [by_protocol[p] for p in protocols if p in by_protocol]
        ns = [str(g["n"]) for g in present]
        row.append(ns[0] if len(set(ns)) == 1 else " / ".join(ns))
        row += _pretrain_cells(present)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _pretrain_cells(present: list[dict[str, Any]]) -> list[str]:
    """Mean pretraining wall time (s), total FLOPs and FLOPs per image of one table row, each
    from the first protocol's row that knows it (the protocols share the pretraining)."""
    def first(value: Callable[[dict[str, Any]], float | None]) -> float | None:
        return next((v for g in present if (v := value(g)) is not None), None)

    wall = first(pretrain_seconds)
    return [_MISSING if wall is None else f"{wall:.1f}", flops(first(pretrain_flops)),
            flops(first(flops_per_image))]


# --------------------------------------------------------------------------- paired table


def _with_pairs(text: str, diff: dict[str, Any], row: dict[str, Any]) -> str:
    """``text`` plus the number of pairs when the row has more seeds than it shares."""
    seeds = row["metrics"][PRIMARY_METRIC]["n"]
    return text if diff["n"] == seeds else f"{text} ({pairs_text(diff['n'])})"


def _random_cell(row: dict[str, Any]) -> str:
    """Δ top-1 vs random init: ``+12.3 ± 4.5 ✓`` (the reference row says so)."""
    if row["method"] == RANDOM_INIT:
        return "reference"
    diff = paired(row, "vs_random")
    if diff is None:
        return _MISSING
    if diff["n"] == 0:
        return "no shared seeds"
    mark = VERDICT_MARKS.get(diff["verdict"])
    return _with_pairs(diff_text(diff) + (f" {mark}" if mark else ""), diff, row)


def _best_cell(row: dict[str, Any]) -> str:
    """Δ top-1 vs the column's best row: ``-1.3 ± 8.7 ≈``; ``unpaired`` on the fallback."""
    if (row.get("best") or {}).get(PRIMARY_METRIC):
        return "best"
    diff = paired(row, "vs_best")
    if diff is None:
        return _MISSING
    text = diff_text(diff) + ("" if diff["paired"] else " unpaired")
    text += " ≈" if diff["tie"] else ""
    return _with_pairs(text, diff, row) if diff["paired"] else text


def _paired_table(rows: list[dict[str, Any]]) -> list[str]:
    """Every row of a view, per protocol: Δ top-1 vs random init, its MDD and the seeds a
    :data:`.aggregation.CLAIM_DELTA` claim needs, and Δ vs the column's best; no table when
    nothing in the view is paired."""
    if not any(paired(r, "vs_random") or (paired(r, "vs_best") or {}).get("paired")
               for r in rows):
        return []
    protocols = sorted({r["protocol"] for r in rows}, key=protocol_sort_key)
    header = ["Protocol", "Method", "Backbone", "Recipe", "Δ vs random (pts)", "MDD (pts)",
              f"Seeds for {points(CLAIM_DELTA)} pts", "Δ vs best (pts)"]
    lines = ["", "**Paired differences**, top-1 in points (see the legend at the top):", "",
             "| " + " | ".join(md_cell(h) for h in header) + " |",
             "|" + "|".join([":---"] * 4 + ["---:"] * (len(header) - 4)) + "|"]
    for p in protocols:
        for key, by_protocol in _ranked(rows, protocols):
            row = by_protocol.get(p)
            if row is None or PRIMARY_METRIC not in row["metrics"]:
                continue
            power = paired(row, "mdd")
            cells = [md_cell(c) for c in (p, *key)] + [md_cell(c) for c in (
                _random_cell(row), _MISSING if power is None else f"{100 * power['mdd']:.1f}",
                _MISSING if power is None else power["seeds_for_delta"], _best_cell(row))]
            lines.append("| " + " | ".join(cells) + " |")
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


def _row_names(rows: list[dict[str, Any]]) -> str:
    """``method · backbone · recipe`` of each row, as Markdown text."""
    return ", ".join(md_text(" · ".join(r[k] for k in ("method", "backbone", "recipe")))
                     for r in rows)


def _eval_sets_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The footer line with a dataset's evaluation-set sizes (images / independent groups, what
    the test-set standard errors resample): one text when every row that records them agrees,
    else each variant with its rows; rows without sizes are counted. No line when none has."""
    users: dict[str, list[dict[str, Any]]] = defaultdict(list)
    sets: dict[str, dict[str, Any]] = {}
    for r in rows:
        for s in r.get("eval_sets") or []:
            users[canonical(s)].append(r)
            sets[canonical(s)] = s
    if not sets:
        return []
    unknown = sum(not r.get("eval_sets") for r in rows)
    note = f" (not recorded for {unknown} row{'' if unknown == 1 else 's'})" if unknown else ""
    if len(sets) == 1:
        (only,) = sets.values()
        return [f"- Evaluation sets: {md_text(eval_sets_text(only))}{note}"]
    variants = "; ".join(f"{md_text(eval_sets_text(sets[k]))} for {_row_names(users[k])}"
                         for k in sorted(sets))
    return [f"- Evaluation sets differ between rows: {variants}{note}"]


def render_markdown(rows: list[dict[str, Any]]) -> str:
    """Render aggregated rows as the LEADERBOARD.md document."""
    out = [
        "# sslbench leaderboard",
        "",
        "Generated by `sslbench leaderboard` from the result records in `results/` beside "
        "this file — do not edit by hand.",
        "",
        "Accuracies are in percent, averaged over seeds. `±` is the half-width of the 95% "
        "t-interval over seeds (Student t, n−1 degrees of freedom); a bare number is a single "
        f"seed; `{_MISSING}` means not measured. Baselines are listed first, then methods by "
        "linear-probe top-1. In each column the best mean is **bold** and `≈` marks a row that "
        "the seeds do not separate from it (a tie, decided on paired differences: see below). "
        "*Seeds* is the number of (seed, eval seed) runs per protocol; "
        "*Pretrain (s)* the mean pretraining wall time.",
        "",
        md_text(paired_legend()),
        "",
        md_text(cost_legend()),
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
            out += _paired_table(view)
            out += _footer(view)
        out += _eval_sets_lines(by_dataset[dataset])
    if reported:
        out += ["", "## Reported in papers (not measured here)", "",
                "| Dataset | Protocol | Method | Backbone | top-1 (%) | Source |",
                "|:---|:---|:---|:---|---:|:---|"]
        for r in reported:
            cells = [r["dataset"], r["protocol"], r["method"], r["backbone"],
                     _pct(r["metrics"].get("acc")), "; ".join(r.get("sources") or []) or "?"]
            out.append("| " + " | ".join(md_cell(c) for c in cells) + " |")
    return "\n".join(out) + "\n"

