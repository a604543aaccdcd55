"""Render the leaderboard as ONE self-contained static HTML page.

Everything is inline: CSS and JS from ``static/`` next to this file, plots as SVG from
:mod:`.plots`, table data for the sort/filter script in a ``<script type="application/json">``
block. The page loads nothing from anywhere (a Content-Security-Policy with ``default-src 'none'``
and hashes of the inline style and script enforces it in the browser).

Safety: every string that comes from a record (or a plugin's method name) goes through
:func:`.formatting.esc` (``html.escape(quote=True)``), in HTML, SVG text and attributes alike; the
JSON for the script is :func:`script_json` (``<``, ``>``, ``&`` written as ``\\u003c``...).

Rows come from :func:`.aggregation.aggregate` (mean over seeds, 95% t-interval, paired
differences). Measured rows and rows reported in papers (``kind: reported``) get separate tables
and are never compared. Within one (dataset, protocol, settings) the row with the highest mean
top-1 is *best*; every other row whose paired 95% interval of the difference to the best row
contains 0 is marked *tie*, and a row that shares fewer than two (seed, eval seed) pairs with
the best ties when its 95% CI overlaps the best row's (a single-seed row counts as the point
interval at its mean): :func:`.aggregation.mark_ties`. Measured rows also show their paired
difference to the random-init row and its minimal detectable difference (MDD), and their mean
pretraining wall time, FLOPs per run and FLOPs per image; the provenance panel adds the mean
test-set standard error and the evaluation-set sizes.
"""
from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from ..utils import atomic_write_text
from .aggregation import (
    RANDOM_INIT, canonical, finite, flops_per_image, label_fraction, load_rows, mark_ties,
    paired, pretrain_flops, pretrain_seconds, protocol_sort_key, ranked, top1,
    without_fraction,
)
from .formatting import (
    VERDICT_MARKS, cost_legend, diff_text, esc, eval_sets_text, flops, fraction_text,
    paired_legend, pairs_text, points, se_text, seconds, short,
)
from .plots import plots_section

REPORTED_TITLE = "Reported in papers (not measured here)"


# --------------------------------------------------------------------------- page helpers


def script_json(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&``."""
    text = json.dumps(obj, sort_keys=True, default=str, allow_nan=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def _static(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# --------------------------------------------------------------------------- row views


def _settings_variants(rows: list[dict[str, Any]]) -> dict[int, str]:
    """Short text telling apart rows of one (dataset, protocol) that use different settings."""
    by_protocol: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_protocol[(row["dataset"], row["protocol"])].append(i)
    out: dict[int, str] = {}
    for members in by_protocol.values():
        settings = [without_fraction(rows[i]["protocol_settings"]) for i in members]
        if len({canonical(s) for s in settings}) < 2:
            continue
        keys = sorted({k for s in settings for k in s})
        differing = [k for k in keys
                     if len({canonical(s.get(k)) for s in settings}) > 1]
        for i, s in zip(members, settings):
            out[i] = ", ".join(f"{k}={json.dumps(s.get(k), default=str)}" for k in differing)
    return out


# --------------------------------------------------------------------------- tables


def _metric_cell(summary: dict[str, Any] | None, cls: str) -> str:
    if summary is None:
        return f'<td class="num {cls} na">–</td>'
    ci = "" if summary["ci95"] is None else (
        f' <span class="ci">± {100 * summary["ci95"]:.1f}</span>')
    return f'<td class="num {cls}">{100 * summary["mean"]:.1f}{ci}</td>'


def _name(row: dict[str, Any]) -> str:
    return f"{row['method']} · {row['backbone']} · {row['recipe']}"


def _random_text(diff: dict[str, Any]) -> str:
    """A difference to random init in words (for a title and the provenance panel)."""
    if diff["n"] == 0:
        return f"no (seed, eval seed) pair shared with {_name(diff['against'])}"
    return (f"{diff_text(diff)} points over {pairs_text(diff['n'])} ({diff['verdict']}) "
            f"against {_name(diff['against'])}")


def _best_text(diff: dict[str, Any]) -> str:
    """A difference to the best row in words: paired, or the unpaired fallback."""
    if diff["paired"]:
        return (f"paired difference {diff_text(diff)} points over {pairs_text(diff['n'])} "
                f"(95% interval {'contains' if diff['tie'] else 'excludes'} 0)")
    return (f"{diff_text(diff)} points, unpaired (fewer than two shared seed pairs): the 95% "
            f"CIs {'overlap' if diff['tie'] else 'do not overlap'}")


def _random_cell(row: dict[str, Any]) -> str:
    """Δ top-1 vs random init (points, paired 95% half-width, ✓/✗ when it separates)."""
    if row["method"] == RANDOM_INIT:
        return '<td class="num delta na">reference</td>'
    diff = paired(row, "vs_random")
    if diff is None or diff["n"] == 0:
        title = "" if diff is None else f' title="{esc(_random_text(diff))}"'
        return f'<td class="num delta na"{title}>–</td>'
    mean, *half = diff_text(diff).split(" ± ")
    ci = f' <span class="ci">± {half[0]}</span>' if half else ""
    mark = VERDICT_MARKS.get(diff["verdict"])
    return (f'<td class="num acc delta" title="{esc(_random_text(diff))}">{esc(mean)}{ci}'
            f'{" " + mark if mark else ""}</td>')


def _mdd_cell(row: dict[str, Any]) -> str:
    """The MDD vs random init in points; its title says how many seeds a claim needs."""
    power = paired(row, "mdd")
    if power is None:
        return '<td class="num mdd na">–</td>'
    return (f'<td class="num mdd" title="{esc(_power_text(power))}">'
            f'{100 * power["mdd"]:.1f}</td>')


def _power_text(power: dict[str, Any]) -> str:
    """The MDD entry in words: the seeds a :data:`.aggregation.CLAIM_DELTA` claim needs."""
    return (f"MDD {100 * power['mdd']:.1f} points with {pairs_text(power['n'])} (sd of the "
            f"differences {100 * power['sd']:.1f} points); {power['seeds_for_delta']} pairs "
            f"would detect {points(power['delta'])} points")


def _paired_items(row: dict[str, Any]) -> list[tuple[str, str]]:
    """Provenance entries of the paired statistics on top-1 (none for a reported row)."""
    items = []
    for label, field, text in (("vs random init", "vs_random", _random_text),
                               ("power", "mdd", _power_text), ("vs best", "vs_best", _best_text)):
        entry = paired(row, field)
        if entry is not None:
            items.append((label, esc(text(entry))))
    return items


def _dl(items: Iterable[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _codes(values: Iterable[Any], limit: int | None = None) -> str:
    vals = [str(v) for v in values]
    if not vals:
        return '<span class="muted">unknown</span>'
    return ", ".join(f'<code title="{esc(v)}">{esc(v[:limit] if limit else v)}</code>'
                     for v in vals)


def _cost_items(row: dict[str, Any]) -> list[tuple[str, str]]:
    """Provenance entries of the pretraining FLOPs, the test-set standard errors and the
    evaluation-set sizes (each only when the row has it)."""
    items = []
    if pretrain_flops(row) is not None or flops_per_image(row) is not None:
        items.append(("pretrain compute", esc(f"{flops(pretrain_flops(row))} per run, "
                                              f"{flops(flops_per_image(row))} per image (mean)")))
    if row.get("mean_se"):
        items.append(("test-set SE", esc(f"{se_text(row['mean_se'])} (mean bootstrap "
                                         f"standard error over each set's groups)")))
    if row.get("eval_sets"):
        items.append(("eval sets", esc("; ".join(eval_sets_text(s) for s in row["eval_sets"]))))
    return items


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
        ("pretrain time", esc(seconds(pretrain_seconds(row)))
         + (" (mean)" if pretrain_seconds(row) is not None else "")),
        *_cost_items(row),
        ("eval time", esc(seconds(finite(row.get("eval_wall_time_s"))))
         + (" (mean)" if finite(row.get("eval_wall_time_s")) is not None else "")),
        ("records", esc(f'{row.get("n_records", row["n"])} file(s), {row["n"]} '
                        f'(seed, eval seed) pair(s)')),
        ("seeds", esc(", ".join(f"{s}/{e}" for s, e in row["seeds"]))),
        *_paired_items(row),
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
    cols += [("Top-1 (%)", "acc", "num", "num"), ("OOD (%)", "ood", "num", "num")]
    if not reported:
        cols += [("Δ vs random (pts)", "d_random", "num", "num"),
                 ("MDD (pts)", "mdd", "num", "num")]
    cols.append(("Seeds", "n", "num", "num"))
    if reported:
        cols.append(("Source", "source", "text", ""))
    else:
        cols += [("Pretrain", "pretrain", "num", "num"),
                 ("Pretrain FLOP", "flops", "num", "num"),
                 ("FLOP / image", "flops_img", "num", "num")]
    cols += [("vs best", None, "", ""), ("Provenance", None, "", "")]
    return cols


def _head(cols: list[tuple[str, str | None, str, str]]) -> str:
    """The header cells; a column with a JSON key sorts on it."""
    head = []
    for label, key, kind, cls in cols:
        if key is None:
            head.append(f'<th scope="col" data-label="{esc(label)}">{esc(label)}</th>')
        else:
            head.append(f'<th scope="col" class="{cls}" data-label="{esc(label)}" '
                        f'data-key="{key}" data-type="{kind}">'
                        f'<button type="button" class="sort">{esc(label)}</button></th>')
    return "".join(head)


def _badge(row: dict[str, Any], mark: tuple[str, int] | None,
           all_rows: list[dict[str, Any]]) -> str:
    """The *best* / *tie* badge; a tie's title gives the difference to the best row."""
    if mark is None:
        return ""
    if mark[0] == "best":
        return '<span class="badge best" title="highest mean top-1 here">best</span>'
    diff = paired(row, "vs_best")
    title = f"tied with the best row: {_name(all_rows[mark[1]])}"
    if diff is not None:
        title += "; " + _best_text(diff)
    return f'<span class="badge tie" title="{esc(title)}">tie</span>'


def _body_row(i: int, row: dict[str, Any], badge: str, variant: str | None, reported: bool,
              show_lf: bool) -> str:
    """One body row of a table (its provenance row follows it, see :func:`_table`)."""
    protocol = esc(row["protocol"])
    if variant:
        protocol += f' <span class="tag">{esc(short(variant, 40))}</span>'
    method = esc(row["method"])
    if row.get("baseline"):
        method += ' <span class="badge base" title="reference baseline">baseline</span>'
    cells = [f'<td>{esc(row["dataset"])}</td>', f'<td class="protocol">{protocol}</td>']
    if show_lf:
        cells.append(f'<td class="num">{esc(fraction_text(label_fraction(row)))}</td>')
    cells += [f'<td class="method">{method}</td>', f'<td>{esc(row["backbone"])}</td>']
    if not reported:
        cells.append(f'<td>{esc(row["recipe"])}</td>')
    cells += [_metric_cell(top1(row), "acc"), _metric_cell(top1(row, "ood_acc"), "ood")]
    if not reported:
        cells += [_random_cell(row), _mdd_cell(row)]
    cells.append(f'<td class="num">{row["n"]}</td>')
    if reported:
        cells.append(f'<td class="source">{esc("; ".join(row.get("sources") or []))}</td>')
    else:
        cells += [f'<td class="num">{esc(text)}</td>' for text in (
            seconds(pretrain_seconds(row)), flops(pretrain_flops(row)),
            flops(flops_per_image(row)))]
    n = row.get("n_records", row["n"])
    toggle = (f'<button type="button" class="prov-toggle" aria-expanded="false" '
              f'aria-controls="prov-{i}" title="recipe, commits, devices, times">'
              f'{n} record{"s" if n != 1 else ""}</button>')
    cells += [f"<td>{badge}</td>", f'<td class="prov">{toggle}</td>']
    cls = ' class="baseline"' if row.get("baseline") else ""
    return f'<tr data-row="{i}"{cls}>' + "".join(cells) + "</tr>"


def _table(table_id: str, ids: list[int], marks: dict[int, tuple[str, int]],
           variants: dict[int, str], all_rows: list[dict[str, Any]], reported: bool,
           show_lf: bool) -> str:
    cols = _columns(reported, show_lf)
    body = []
    for i in ids:
        row = all_rows[i]
        badge = _badge(row, marks.get(i), all_rows)
        body.append(_body_row(i, row, badge, variants.get(i), reported, show_lf))
        # provenance: a full-width row under its row, opened by the toggle (see board.js)
        body.append(f'<tr class="prov-row" id="prov-{i}" data-prov="{i}" hidden>'
                    f'<td colspan="{len(cols)}">{_provenance(row)}</td></tr>')
    body.append(f'<tr class="empty" hidden><td colspan="{len(cols)}">No rows match the '
                f"filters.</td></tr>")
    caption = "Reported results" if reported else "Measured results"
    return (f'<div class="table-wrap"><table class="board" id="{table_id}">'
            f'<caption hidden>{caption}</caption><thead><tr>{_head(cols)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _filters(rows: list[dict[str, Any]]) -> str:
    specs = [("dataset", "Dataset", sorted({r["dataset"] for r in rows})),
             ("protocol", "Protocol",
              sorted({r["protocol"] for r in rows}, key=protocol_sort_key)),
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
        acc, ood = top1(row), top1(row, "ood_acc")
        out.append({
            "kind": row.get("kind", "measured"), "dataset": row["dataset"],
            "protocol": row["protocol"], "method": row["method"], "backbone": row["backbone"],
            "recipe": row["recipe"], "lf": fraction_text(label_fraction(row)),
            "lf_value": label_fraction(row), "acc": acc["mean"] if acc else None,
            "ood": ood["mean"] if ood else None, "n": row["n"],
            "pretrain": pretrain_seconds(row), "flops": pretrain_flops(row),
            "flops_img": flops_per_image(row),
            "d_random": (paired(row, "vs_random") or {}).get("mean"),
            "mdd": (paired(row, "mdd") or {}).get("mdd"),
            "source": "; ".join(row.get("sources") or []),
        })
    return out


# --------------------------------------------------------------------------- page


def render_html(rows: list[dict[str, Any]], title: str = "sslbench leaderboard") -> str:
    """Render aggregated rows (from :func:`.aggregation.aggregate`) as one self-contained page."""
    rows = ranked(rows)
    marks = mark_ties(rows)
    variants = _settings_variants(rows)
    measured = [i for i, r in enumerate(rows) if r.get("kind", "measured") != "reported"]
    reported = [i for i, r in enumerate(rows) if r.get("kind") == "reported"]
    show_lf = any(label_fraction(r) != 1.0 for r in rows)  # hidden while every row used all labels

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
        "the result records in <code>results/</code> beside this file — do not edit by hand."
        + (f" Newest result: {esc(newest[:10])}." if newest else "") + "</p>",
        '<div class="stats">' + "".join(f'<span class="stat"><b>{n}</b>{esc(label)}</span>'
                                        for n, label in stats) + "</div></header>",
        '<p class="small muted">Top-1 accuracies in percent, averaged over seeds; '
        "<b>±</b> is the half-width of the 95% Student-t interval over seeds (none for a "
        'single seed). <span class="badge best">best</span> marks the highest mean within a '
        'dataset, protocol and settings; <span class="badge tie">tie</span> marks rows the '
        "seeds do not separate from it (paired test, see below). Click a column header to "
        "sort; open <i>Provenance</i> for recipe, commits, devices, times, pretraining FLOPs, "
        "test-set standard errors and the paired differences in words.</p>",
        f'<p class="small muted">{esc(paired_legend())}</p>',
        f'<p class="small muted">{esc(cost_legend())}</p>',
        "<h2>Results measured with sslbench</h2>",
        _filters(rows),
    ]
    if measured:
        parts.append(_table("measured", measured, marks, variants, rows, False, show_lf))
    else:
        parts.append('<p class="note">No results yet. Run <code>sslbench run RECIPE</code> to '
                     "add some.</p>")
    parts.append(f'<section class="reported"><h2>{esc(REPORTED_TITLE)}</h2>')
    parts.append('<p class="small muted">Figures copied from papers (<code>kind: reported</code> '
                 "records, each with its source). Their setups differ from ours, so they are "
                 "never ranked against measured rows; ties here compare reported rows only.</p>")
    if reported:
        parts.append(_table("reported", reported, marks, variants, rows, True, show_lf))
    else:
        parts.append('<p class="note">No reported results.</p>')
    parts.append("</section>")
    parts.append("<h2>Plots</h2>")
    parts.append('<p class="small muted">Measured rows only, one panel per dataset and '
                 "protocol. Hover a bar or point for its exact numbers.</p>")
    parts.append(plots_section(rows))
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
    return render_html(load_rows(results_dir))


def write_html(leaderboard_dir: str | Path) -> Path:
    """Render ``<leaderboard_dir>/results`` into ``<leaderboard_dir>/index.html`` atomically."""
    leaderboard_dir = Path(leaderboard_dir)
    return atomic_write_text(leaderboard_dir / "index.html",
                             render_html_dir(leaderboard_dir / "results"))
