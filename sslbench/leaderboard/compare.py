"""Compare two leaderboards row by row: does each row of B agree with A within its 95% interval?

A row is (dataset, recipe, method, backbone, protocol, label fraction, feature layer). The unit of
replication is the pretraining seed: a side's value for a seed is the mean over its eval seeds.
The difference B − A gets a 95% interval, paired over seeds when both sides have the same seeds
(the half-width of :func:`.aggregation.paired_difference`, the board's paired statistic), else
Welch's; ``agree`` when the interval contains 0, ``differ`` when not, ``n/a`` when a side has
fewer than two seeds.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..identity import label_fraction
from .aggregation import ci95_halfwidth, dedupe_seeds, paired_difference, sortable
from .markdown import md_cell, md_inline
from .store import load_records

COMPARE_FORMATS = ("text", "md", "json")
_ROW_FIELDS = ("dataset", "recipe", "method", "backbone", "protocol", "label_fraction",
               "feature_layer")
_MISSING = "-"


def results_dir(board: str | Path) -> Path:
    """``<board>/results`` of an existing leaderboard directory.

    Raises:
        UserError: ``board`` is not a directory, or is itself a ``results`` directory.
    """
    board = Path(board)
    if not board.is_dir():
        raise UserError(f"leaderboard directory {board} does not exist; pass a leaderboard "
                        f"directory (records under DIR/results/), e.g. leaderboard")
    if board.name == "results" and not (board / "results").is_dir():
        raise UserError(f"{board} is a results directory; pass the leaderboard directory "
                        f"above it ({board.parent})")
    return board / "results"


def _load_lenient(results: Path) -> list[dict[str, Any]]:
    """All records under ``results``; a bad file is skipped with a warning on stderr (the only
    place this module reads records)."""
    return load_records(results, skip_bad=True)


def row_key(rec: dict[str, Any]) -> tuple[Any, ...]:
    """(dataset, recipe, method, backbone, protocol, label_fraction, feature_layer)."""
    settings = rec.get("protocol_settings") or {}
    try:
        fraction: Any = label_fraction(settings)
    except (TypeError, ValueError):
        fraction = str(settings.get("label_fraction"))
    return (str(rec["dataset"]), str((rec.get("recipe") or {}).get("name") or "adhoc"),
            str(rec["method"]), str(rec["backbone"]), str(rec["protocol"]), fraction,
            settings.get("feature_layer"))


def _config_ids(records: list[dict[str, Any]]) -> tuple[str, frozenset[Any]] | None:
    """The config hashes of a side: ``("config", {identity.config_sha256})`` for v2 records,
    ``("recipe", {recipe.sha256})`` for legacy ones; None when mixed or missing."""
    v2 = [r for r in records if isinstance(r.get("identity"), dict)]
    if v2 and len(v2) == len(records):
        ids = {r["identity"].get("config_sha256") for r in v2}
        kind = "config"
    elif not v2:
        ids = {(r.get("recipe") or {}).get("sha256") for r in records}
        kind = "recipe"
    else:
        return None
    if None in ids or "" in ids:
        return None
    return kind, frozenset(ids)


def _config_hashes(records: list[dict[str, Any]]) -> frozenset[str] | None:
    """v2 config hashes, with a legacy record's stored config hashed the same way (None when
    a record has neither)."""
    from ..identity import config_hash

    out = set()
    for r in records:
        if isinstance(r.get("identity"), dict):
            out.add(r["identity"].get("config_sha256"))
        elif isinstance(r.get("config"), dict) and r["config"]:
            out.add(config_hash(r["config"]))
        else:
            return None
    return None if None in out else frozenset(out)


def _same_config(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    """same | different | unknown: the config hashes of two sides of a row."""
    ca, cb = _config_ids(a), _config_ids(b)
    if ca is not None and cb is not None and ca[0] == cb[0]:
        return "same" if ca[1] == cb[1] else "different"
    # legacy against v2: equal hashes of the stored configs still show the same config; unequal
    # ones may only mean that the config gained keys since the legacy record was written
    ha, hb = _config_hashes(a), _config_hashes(b)
    return "same" if ha is not None and ha == hb else "unknown"


def _per_seed(records: list[dict[str, Any]], metric: str) -> dict[Any, float]:
    """Seed -> metric averaged over that seed's eval seeds (one record per seed pair)."""
    by_seed: dict[Any, list[float]] = defaultdict(list)
    for rec in dedupe_seeds(records):
        by_seed[rec["seed"]].append(float(rec["metrics"][metric]))
    return {s: sum(v) / len(v) for s, v in by_seed.items()}


def _side(values: dict[Any, float]) -> dict[str, Any]:
    vals = list(values.values())
    return {"n": len(vals), "seeds": sorted(values, key=sortable),
            "mean": sum(vals) / len(vals), "ci95": ci95_halfwidth(vals)}


def _var(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def _welch(va: list[float], vb: list[float]) -> tuple[float | None, float]:
    """(degrees of freedom, 95% half-width) of Welch's interval for mean(B) − mean(A); both
    sides constant give (None, 0): the interval is the point."""
    from scipy import stats

    sa, sb = _var(va) / len(va), _var(vb) / len(vb)
    se2 = sa + sb
    if se2 == 0.0:
        return None, 0.0
    df = se2 ** 2 / (sa ** 2 / (len(va) - 1) + sb ** 2 / (len(vb) - 1))
    return df, float(stats.t.ppf(0.975, df)) * math.sqrt(se2)


def difference(a: dict[Any, float], b: dict[Any, float]) -> dict[str, Any]:
    """B − A with its 95% interval around the difference of the means: when both sides have the
    same seeds, the paired t half-width of :func:`.aggregation.paired_difference` over the
    seeds, else Welch's. ``lo``/``hi`` are None when a side has fewer than two seeds."""
    va, vb = list(a.values()), list(b.values())
    diff = sum(vb) / len(vb) - sum(va) / len(va)
    out: dict[str, Any] = {"mean": diff, "lo": None, "hi": None, "df": None}
    if set(a) == set(b):
        out["test"] = "paired"
        # one value per seed (eval seeds already averaged): pair on the seed alone
        pairs = paired_difference([[s, None, b[s]] for s in a], [[s, None, a[s]] for s in a])
        if pairs["ci95"] is None:
            return out
        df, half = pairs["n"] - 1, pairs["ci95"]
    else:
        out["test"] = "welch"
        if len(va) < 2 or len(vb) < 2:
            return out
        df, half = _welch(va, vb)
    out.update(lo=diff - half, hi=diff + half, df=df)
    return out


def compare_records(a_records: list[dict[str, Any]], b_records: list[dict[str, Any]],
                    metric: str = "acc") -> dict[str, Any]:
    """Row-by-row comparison of two record lists on ``metric`` (measured records only).

    Returns:
        ``{"metric", "rows": [...], "summary": {...}}``; each row has the row fields, ``a`` and
        ``b`` (n, seeds, mean, ci95, or None when absent), ``diff`` (or None), ``verdict``
        (agree | differ | n/a | only in A | only in B) and ``config`` (same | different |
        unknown, None for rows on one side).

    Raises:
        UserError: no measured record of either side has ``metric``.
    """
    sides: list[dict[tuple[Any, ...], list[dict[str, Any]]]] = []
    names: set[str] = set()
    for records in (a_records, b_records):
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for rec in records:
            if rec.get("kind", "measured") != "measured":
                continue
            names.update(rec["metrics"])
            value = rec["metrics"].get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                groups[row_key(rec)].append(rec)
        sides.append(groups)
    a_groups, b_groups = sides
    if not a_groups and not b_groups and names:
        raise UserError(f"no record has the metric '{metric}'; pass --metric with one of "
                        f"{', '.join(sorted(names))}")
    rows = []
    for key in sorted(set(a_groups) | set(b_groups), key=lambda k: tuple(map(sortable, k))):
        row: dict[str, Any] = dict(zip(_ROW_FIELDS, key))
        a_vals = _per_seed(a_groups[key], metric) if key in a_groups else None
        b_vals = _per_seed(b_groups[key], metric) if key in b_groups else None
        row["a"] = _side(a_vals) if a_vals else None
        row["b"] = _side(b_vals) if b_vals else None
        row["diff"] = row["config"] = None
        if a_vals is None:
            row["verdict"] = "only in B"
        elif b_vals is None:
            row["verdict"] = "only in A"
        else:
            row["diff"] = diff = difference(a_vals, b_vals)
            row["config"] = _same_config(dedupe_seeds(a_groups[key]),
                                         dedupe_seeds(b_groups[key]))
            if diff["lo"] is None:
                row["verdict"] = "n/a"
            else:
                row["verdict"] = "agree" if diff["lo"] <= 0.0 <= diff["hi"] else "differ"
        rows.append(row)
    count = {v: sum(r["verdict"] == v for r in rows)
             for v in ("agree", "differ", "n/a", "only in A", "only in B")}
    summary = {"compared": count["agree"] + count["differ"] + count["n/a"],
               "agree": count["agree"], "differ": count["differ"], "undecided": count["n/a"],
               "only_in_a": count["only in A"], "only_in_b": count["only in B"]}
    return {"metric": metric, "rows": rows, "summary": summary}


def summary_line(summary: dict[str, int]) -> str:
    s = summary
    return (f"{s['compared']} rows compared: {s['agree']} agree, {s['differ']} differ, "
            f"{s['undecided']} undecided; {s['only_in_a']} only in A, {s['only_in_b']} only in B")


# --------------------------------------------------------------------------- rendering


def _plain(text: Any) -> str:
    """One line of printable text."""
    return "".join(c if c.isprintable() else "?" for c in " ".join(str(text).split()))


def _settings(row: dict[str, Any]) -> str:
    parts = []
    if row["label_fraction"] != 1.0:
        parts.append(f"lf={row['label_fraction']:g}" if isinstance(row["label_fraction"], float)
                     else f"lf={row['label_fraction']}")
    if row["feature_layer"] is not None:
        parts.append(f"layer={row['feature_layer']}")
    return " ".join(parts)


def _pct_side(side: dict[str, Any] | None) -> str:
    if side is None:
        return _MISSING
    text = f"{100 * side['mean']:.1f}"
    if side["ci95"] is not None:
        text += f" ± {100 * side['ci95']:.1f}"
    return f"{text} (n={side['n']})"


def _pct_diff(diff: dict[str, Any] | None) -> str:
    if diff is None:
        return ""
    text = f"{100 * diff['mean']:+.1f}"
    if diff["lo"] is not None:
        text += f" [{100 * diff['lo']:+.1f}, {100 * diff['hi']:+.1f}]"
    return text


def _test(row: dict[str, Any]) -> str:
    diff = row["diff"]
    if diff is None:
        return ""
    return "too few seeds" if diff["lo"] is None else diff["test"]


_HEADER = ("Dataset", "Recipe", "Method", "Backbone", "Protocol", "Settings", "A", "B",
           "B − A [95% CI]", "Test", "Verdict", "Config")


def _cells(row: dict[str, Any]) -> list[str]:
    return [row["dataset"], row["recipe"], row["method"], row["backbone"], row["protocol"],
            _settings(row), _pct_side(row["a"]), _pct_side(row["b"]), _pct_diff(row["diff"]),
            _test(row), row["verdict"], row["config"] or ""]


def _intro(result: dict[str, Any], a: str, b: str) -> list[str]:
    return [f"A = {a} ({result['n_a']} records), B = {b} ({result['n_b']} records); "
            f"metric {result['metric']} in %, mean ± 95% t-interval over seeds (n = seeds)"]


def render_text(result: dict[str, Any], a: str, b: str) -> str:
    table = [list(_HEADER)] + [[_plain(c) for c in _cells(r)] for r in result["rows"]]
    widths = [max(len(r[i]) for r in table) for i in range(len(_HEADER))]
    lines = _intro(result, _plain(a), _plain(b)) + [""]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines += ["", summary_line(result["summary"])]
    return "\n".join(lines) + "\n"


def render_md(result: dict[str, Any], a: str, b: str) -> str:
    lines = [" ".join(_intro(result, md_inline(a), md_inline(b))), ""]
    lines.append("| " + " | ".join(_HEADER) + " |")
    lines.append("|" + "|".join([":---"] * 6 + ["---:"] * 3 + [":---"] * 3) + "|")
    for r in result["rows"]:
        cells = _cells(r)  # record strings escaped; the numbers and words are this module's
        lines.append("| " + " | ".join([md_cell(c) for c in cells[:6]] + cells[6:]) + " |")
    lines += ["", summary_line(result["summary"])]
    return "\n".join(lines) + "\n"


def render_json(result: dict[str, Any], a: str, b: str) -> str:
    out = {"a": a, "b": b, **result}
    return json.dumps(out, indent=2, sort_keys=True, default=str) + "\n"


def compare(a: str | Path, b: str | Path, fmt: str = "text", metric: str = "acc") -> str:
    """Load the boards ``a`` and ``b`` (records under ``<dir>/results``) and render their
    row-by-row comparison as ``text``, ``md`` or ``json`` (metric values there are fractions).

    Raises:
        UserError: unknown format, missing directory, or a metric that no record has.
    """
    if fmt not in COMPARE_FORMATS:
        raise UserError(f"unknown compare format '{fmt}'; use one of "
                        f"{', '.join(COMPARE_FORMATS)}")
    a_dir, b_dir = results_dir(a), results_dir(b)
    a_records, b_records = _load_lenient(a_dir), _load_lenient(b_dir)
    result = compare_records(a_records, b_records, metric)
    result.update(n_a=len(a_records), n_b=len(b_records))
    render = {"text": render_text, "md": render_md, "json": render_json}[fmt]
    return render(result, str(a), str(b))
