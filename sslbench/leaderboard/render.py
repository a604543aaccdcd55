"""Aggregate result records over seeds and render the leaderboard (markdown, JSON, CSV)."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import re
from collections import Counter, defaultdict
from html import escape as _escape_html
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..utils import atomic_write_text
from .store import load_records

FORMATS = ("md", "json", "csv")
BASELINE_METHODS = ("raw_pixels", "random_init")
CSV_COLUMNS = ("dataset", "protocol", "method", "backbone", "recipe", "metric", "n", "mean",
               "std", "ci95", "seeds", "protocol_settings")
_PROTOCOL_ORDER = ("linear", "knn")
_MISSING = "–"


def is_baseline(method: str) -> bool:
    """Whether ``method`` is a reference baseline rather than an SSL method."""
    return (method in BASELINE_METHODS or method.startswith("timm:")
            or method.startswith("supervised"))


def _is_chosen_key(key: str) -> bool:
    """Values that differ per run by design: the chosen hyperparameters and their grid-edge
    note (``grid_edge``, set only when the choice sits at an end of its grid)."""
    return key in ("C", "grid_edge") or key.startswith("chosen_")


def comparable_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Protocol settings without the values chosen per run (``C``, ``chosen_*``, ``grid_edge``);
    a record written before label fractions existed used every label (``label_fraction`` 1)."""
    out = {k: v for k, v in settings.items() if not _is_chosen_key(k)}
    out["label_fraction"] = float(out.get("label_fraction", 1.0))
    return out


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def _protocol_sort_key(protocol: str) -> tuple[int, str]:
    if protocol in _PROTOCOL_ORDER:
        return (_PROTOCOL_ORDER.index(protocol), "")
    return (len(_PROTOCOL_ORDER), protocol)


def _sortable(value: Any) -> tuple[int, Any]:
    """Sort key that orders numbers numerically and everything else as text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    return (1, str(value))


def _created_key(created: Any) -> tuple[int, Any]:
    """Sort key for ``created``: parsed ISO timestamps (naive = UTC), unparsable ones first."""
    try:
        t = _dt.datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        return (0, str(created))
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return (1, t)


def ci95_halfwidth(values: list[float]) -> float | None:
    """Half-width of the 95% Student-t confidence interval of the mean (None when n < 2)."""
    n = len(values)
    if n < 2:
        return None
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * _std(values) / math.sqrt(n))


def interval(summary: dict[str, Any]) -> tuple[float, float]:
    """The 95% CI of a metric summary; a single seed (no CI) is the point at its mean."""
    half = summary["ci95"] or 0.0
    return summary["mean"] - half, summary["mean"] + half


def best_and_ties(summaries: dict[Any, dict[str, Any]]) -> tuple[Any, list[Any]]:
    """The key with the highest mean (first key on equal means) and the keys whose 95% CI
    overlaps the best one's: a ranking among those is not supported by the seeds."""
    keys = list(summaries)
    best = max(keys, key=lambda k: (summaries[k]["mean"], -keys.index(k)))
    b_lo, b_hi = interval(summaries[best])
    ties = [k for k in keys if k != best
            and interval(summaries[k])[0] <= b_hi and b_lo <= interval(summaries[k])[1]]
    return best, ties


def _std(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "mean": sum(values) / len(values), "std": _std(values),
            "ci95": ci95_halfwidth(values)}


def _group_key(rec: dict[str, Any]) -> tuple[str, ...]:
    return (rec["dataset"], rec["protocol"], rec["method"], rec["backbone"],
            str((rec.get("recipe") or {}).get("name") or "adhoc"),
            _canonical(comparable_settings(rec.get("protocol_settings") or {})),
            str(rec.get("kind") or "measured"))


def _dedupe_seeds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep one record per (seed, eval_seed): the newest by ``created`` (later file on ties)."""
    newest: dict[str, dict[str, Any]] = {}
    for rec in records:
        pair = _canonical([rec["seed"], rec["eval_seed"]])
        old = newest.get(pair)
        if old is None or _created_key(rec["created"]) >= _created_key(old["created"]):
            newest[pair] = rec
    return sorted(newest.values(),
                  key=lambda r: (_sortable(r["seed"]), _sortable(r["eval_seed"])))


def _row(records: list[dict[str, Any]]) -> dict[str, Any]:
    first = records[0]
    recipe = first.get("recipe") or {}
    by_metric: dict[str, list[float]] = defaultdict(list)
    chosen: dict[str, list[Any]] = defaultdict(list)
    for rec in records:
        for name, value in rec["metrics"].items():
            by_metric[name].append(float(value))
        for k, v in (rec.get("protocol_settings") or {}).items():
            if _is_chosen_key(k):
                chosen[k].append(v)
    pretrain = [float(r["pretrain"]["wall_time_s"]) for r in records
                if isinstance(r.get("pretrain"), dict)
                and isinstance(r["pretrain"].get("wall_time_s"), (int, float))]
    provs = [r.get("provenance") or {} for r in records]
    eval_times = [float(r["wall_time_s"]) for r in records
                  if isinstance(r.get("wall_time_s"), (int, float))]
    newest = max(records, key=lambda r: _created_key(r["created"]))
    families = sorted({str(r.get("backbone_family")) for r in records})
    return {
        "kind": str(first.get("kind") or "measured"),
        "sources": sorted({str(r["source"]) for r in records if r.get("source")}),
        "dataset": first["dataset"],
        "protocol": first["protocol"],
        "method": first["method"],
        "backbone": first["backbone"],
        "backbone_family": families[0] if len(families) == 1 else families,
        "recipe": str(recipe.get("name") or "adhoc"),
        "recipe_path": (newest.get("recipe") or {}).get("path"),
        "recipe_sha256": sorted({str(r["recipe"].get("sha256")) for r in records
                                 if (r.get("recipe") or {}).get("sha256")}),
        "protocol_settings": comparable_settings(first.get("protocol_settings") or {}),
        "chosen_settings": dict(chosen),
        "baseline": is_baseline(first["method"]),
        "n": len(records),
        "seeds": [[r["seed"], r["eval_seed"]] for r in records],
        "metrics": {name: _summary(vals) for name, vals in sorted(by_metric.items())},
        "pretrain_wall_time_s": sum(pretrain) / len(pretrain) if pretrain else None,
        "eval_wall_time_s": sum(eval_times) / len(eval_times) if eval_times else None,
        "run_ids": sorted({str(r["run_id"]) for r in records if r.get("run_id")}),
        "git_commits": sorted({str(p["git_commit"]) for p in provs if p.get("git_commit")}),
        "git_dirty": any(bool(p.get("git_dirty")) for p in provs),
        "devices": sorted({str(p["device"]) for p in provs if p.get("device")}),
        "created": newest["created"],
    }


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group records over seeds and summarise every metric.

    Records are grouped by (dataset, protocol, method, backbone, recipe name, protocol settings
    without per-run choices such as ``C``, kind: measured results never mix with figures
    reported in papers). Within a group each (seed, eval_seed) pair counts
    once (the newest record wins). Each metric gets n, mean, sample std (ddof=1) and the 95%
    t-interval half-width (None for n=1).

    Args:
        records: validated result records.

    Returns:
        One dict per group, sorted by dataset, protocol, baseline-first, method, backbone,
        recipe and settings.
    """
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        groups[_group_key(rec)].append(rec)
    rows = []
    for recs in groups.values():
        row = _row(_dedupe_seeds(recs))
        row["n_records"] = len(recs)  # before de-duplication of (seed, eval_seed) pairs
        rows.append(row)
    rows.sort(key=lambda r: (r["dataset"], _protocol_sort_key(r["protocol"]), not r["baseline"],
                             r["method"], r["backbone"], r["recipe"],
                             _canonical(r["protocol_settings"])))
    return rows


# --------------------------------------------------------------------------- markdown


_MD_SPECIAL = re.compile(r"([\\`*\[\]|~])")
# ``_`` starts or ends emphasis only at a word boundary (``raw_pixels`` is safe as it is)
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def _text(text: Any) -> str:
    """Arbitrary text as one line of plain Markdown: no raw HTML (``&``, ``<``, ``>`` become
    entities) and no Markdown syntax (backslash, backtick, ``*``, ``_``, ``[``, ``]``, ``|``,
    ``~`` are backslash-escaped), so it shows as written and cannot break a table."""
    s = _escape_html(" ".join(str(text).split()), quote=False)
    return _MD_UNDERSCORE.sub(r"\\_", _MD_SPECIAL.sub(r"\\\1", s))


def _cell(text: Any) -> str:
    """Make arbitrary text safe inside a markdown table cell."""
    return _text(text) or " "


def _inline(text: Any) -> str:
    """One-line inline code span for free text outside tables (no backticks, no raw HTML)."""
    s = _escape_html(" ".join(str(text).split()).replace("`", "'"), quote=False)
    return f"`{s}`"


def _pct(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return _MISSING
    mean = f"{100 * summary['mean']:.1f}"
    if summary["ci95"] is None:
        return mean
    return f"{mean} ± {100 * summary['ci95']:.1f}"


def _primary_settings(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Per protocol, the settings used by most groups (ties: canonical order)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in rows:
        counts[r["protocol"]][_canonical(r["protocol_settings"])] += 1
    return {p: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            for p, c in counts.items()}


def _views(rows: list[dict[str, Any]]) -> list[tuple[str | None, list[dict[str, Any]]]]:
    """Split one dataset's groups into tables with one settings variant per protocol.

    The first table holds each protocol's most common settings; every other settings
    variant gets its own table with only that protocol's columns.
    """
    primary = _primary_settings(rows)
    main = [r for r in rows if _canonical(r["protocol_settings"]) == primary[r["protocol"]]]
    views: list[tuple[str | None, list[dict[str, Any]]]] = [(None, main)]
    extra: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        key = _canonical(r["protocol_settings"])
        if key != primary[r["protocol"]]:
            extra[(r["protocol"], key)].append(r)
    for protocol, key in sorted(extra, key=lambda pk: (_protocol_sort_key(pk[0]), pk[1])):
        views.append((f"{protocol}, other settings", extra[(protocol, key)]))
    return views


def _settings_text(settings: dict[str, Any]) -> str:
    if not settings:
        return "defaults"
    return ", ".join(f"{_text(k)} = {_inline(json.dumps(v, default=str))}"
                     for k, v in sorted(settings.items()))


def _table(rows: list[dict[str, Any]]) -> list[str]:
    protocols = sorted({r["protocol"] for r in rows}, key=_protocol_sort_key)
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
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join([":---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    ranked = sorted(cells.items(), key=order)
    marks: dict[tuple[int, str], str] = {}  # (row, column metric) -> "best" | "tie"
    for p in protocols:
        for metric in ("acc", "ood_acc") if p in with_ood else ("acc",):
            column = {i: by_protocol[p]["metrics"][metric]
                      for i, (_, by_protocol) in enumerate(ranked)
                      if metric in by_protocol.get(p, {}).get("metrics", {})}
            if len(column) > 1:
                best, ties = best_and_ties(column)
                marks[(best, p + metric)] = "best"
                marks.update({(i, p + metric): "tie" for i in ties})
    for i, ((method, backbone, recipe), by_protocol) in enumerate(ranked):
        row = [_cell(method), _cell(backbone), _cell(recipe)]  # the rest is numbers and marks
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
    protocols = sorted({r["protocol"] for r in rows}, key=_protocol_sort_key)
    lines = [""]
    for p in protocols:
        settings = next(r["protocol_settings"] for r in rows if r["protocol"] == p)
        lines.append(f"- {_inline(p)} settings: {_settings_text(settings)}")
    commits = sorted({c for r in rows for c in r["git_commits"]})
    text = ", ".join(_inline(c[:12]) for c in commits) if commits else "unknown"
    if any(r["git_dirty"] for r in rows):
        text += " (some with uncommitted changes)"
    lines.append(f"- Commits: {text}")
    devices = sorted({d for r in rows for d in r["devices"]})
    if devices:
        lines.append(f"- Devices: {', '.join(_inline(d) for d in devices)}")
    for r in rows:
        if len(r["recipe_sha256"]) > 1:
            what = " / ".join(_inline(r[k]) for k in ("method", "recipe", "protocol"))
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
        out += ["", f"## {_text(dataset)}"]
        for title, view in _views(by_dataset[dataset]):
            out.append("")
            if title:
                out += [f"### {_text(title)}", ""]
            out += _table(view)
            out += _footer(view)
    if reported:
        out += ["", "## Reported in papers (not measured here)", "",
                "| Dataset | Protocol | Method | Backbone | top-1 (%) | Source |",
                "|:---|:---|:---|:---|---:|:---|"]
        for r in reported:
            cells = [r["dataset"], r["protocol"], r["method"], r["backbone"],
                     _pct(r["metrics"].get("acc")), "; ".join(r.get("sources") or []) or "?"]
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- json / csv


def render_json(rows: list[dict[str, Any]]) -> str:
    """Render aggregated rows as a JSON list."""
    return json.dumps(rows, indent=2, sort_keys=True, default=str) + "\n"


def render_csv(rows: list[dict[str, Any]]) -> str:
    """Render one CSV line per (group, metric); ``seeds`` is ``seed/eval_seed`` joined by ``;``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        seeds = ";".join(f"{s}/{e}" for s, e in r["seeds"])
        for name, m in r["metrics"].items():
            writer.writerow([r["dataset"], r["protocol"], r["method"], r["backbone"],
                             r["recipe"], name, m["n"], repr(m["mean"]), repr(m["std"]),
                             "" if m["ci95"] is None else repr(m["ci95"]), seeds,
                             _canonical(r["protocol_settings"])])
    return buf.getvalue()


_RENDERERS = {"md": render_markdown, "json": render_json, "csv": render_csv}


def render(results_dir: str | Path, fmt: str) -> str:
    """Load, aggregate and render the records under ``results_dir`` as ``md``, ``json`` or ``csv``.

    A file that is not a valid record is skipped with a one-line warning on stderr.

    Raises:
        UserError: unknown format.
    """
    if fmt not in _RENDERERS:
        raise UserError(f"unknown leaderboard format '{fmt}' (valid: {', '.join(FORMATS)})")
    return _RENDERERS[fmt](aggregate(load_records(results_dir, skip_bad=True)))


def write_board(leaderboard_dir: str | Path, html: bool = False) -> Path:
    """Render ``<leaderboard_dir>/results`` into ``<leaderboard_dir>/LEADERBOARD.md`` atomically.

    With ``html=True`` also write the static page ``<leaderboard_dir>/index.html``. Returns the
    markdown file's path. A file that is not a valid record is skipped with one warning line.
    """
    leaderboard_dir = Path(leaderboard_dir)
    rows = aggregate(load_records(leaderboard_dir / "results", skip_bad=True))
    path = atomic_write_text(leaderboard_dir / "LEADERBOARD.md", render_markdown(rows))
    if html:
        from .html import render_html

        atomic_write_text(leaderboard_dir / "index.html", render_html(rows))
    return path
