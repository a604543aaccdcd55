"""Aggregation and ranking: result records grouped into board rows, mean ± 95% CI over seeds.

Every renderer (Markdown, HTML, JSON, CSV, the W&B table) and ``leaderboard compare`` work on
what this module computes: one row per group of records (:func:`aggregate`), one record per
(seed, eval seed) pair (:func:`dedupe_seeds`), the 95% Student-t interval of the mean
(:func:`ci95_halfwidth`), the best row and the rows tied with it (:func:`best_and_ties`,
:func:`mark_ties`), sort keys and the canonical text of protocol settings.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..identity import BASELINES, label_fraction as _fraction_of
from .store import load_records

_PROTOCOL_ORDER = ("linear", "knn")


# --------------------------------------------------------------------------- keys


def is_baseline(method: str) -> bool:
    """Whether ``method`` is a reference baseline rather than an SSL method."""
    return method in BASELINES or method.startswith(("timm:", "supervised"))


def _is_chosen_key(key: str) -> bool:
    """Values that differ per run by design: the chosen hyperparameters and their grid-edge
    note (``grid_edge``, set only when the choice sits at an end of its grid)."""
    return key in ("C", "grid_edge") or key.startswith("chosen_")


def comparable_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Protocol settings without the values chosen per run (``C``, ``chosen_*``, ``grid_edge``);
    a record written before label fractions existed used every label (``label_fraction`` 1)."""
    out = {k: v for k, v in settings.items() if not _is_chosen_key(k)}
    out["label_fraction"] = _fraction_of(out)
    return out


def canonical(obj: Any) -> str:
    """Canonical JSON text of ``obj`` (sorted keys, no spaces): the identity of settings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def protocol_sort_key(protocol: str) -> tuple[int, str]:
    """Board order of protocols: linear, knn, then the others by name."""
    if protocol in _PROTOCOL_ORDER:
        return (_PROTOCOL_ORDER.index(protocol), "")
    return (len(_PROTOCOL_ORDER), protocol)


def sortable(value: Any) -> tuple[int, Any]:
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


# --------------------------------------------------------------------------- statistics


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


# --------------------------------------------------------------------------- grouping


def _group_key(rec: dict[str, Any]) -> tuple[str, ...]:
    return (rec["dataset"], rec["protocol"], rec["method"], rec["backbone"],
            str((rec.get("recipe") or {}).get("name") or "adhoc"),
            canonical(comparable_settings(rec.get("protocol_settings") or {})),
            str(rec.get("kind") or "measured"))


def dedupe_seeds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep one record per (seed, eval_seed): the newest by ``created`` (later file on ties)."""
    newest: dict[str, dict[str, Any]] = {}
    for rec in records:
        pair = canonical([rec["seed"], rec["eval_seed"]])
        old = newest.get(pair)
        if old is None or _created_key(rec["created"]) >= _created_key(old["created"]):
            newest[pair] = rec
    return sorted(newest.values(),
                  key=lambda r: (sortable(r["seed"]), sortable(r["eval_seed"])))


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
        row = _row(dedupe_seeds(recs))
        row["n_records"] = len(recs)  # before de-duplication of (seed, eval_seed) pairs
        rows.append(row)
    rows.sort(key=lambda r: (r["dataset"], protocol_sort_key(r["protocol"]), not r["baseline"],
                             r["method"], r["backbone"], r["recipe"],
                             canonical(r["protocol_settings"])))
    return rows


def load_rows(results_dir: str | Path) -> list[dict[str, Any]]:
    """The aggregated rows of the records under ``results_dir`` (a file that is not a valid
    record is skipped with a one-line warning on stderr)."""
    return aggregate(load_records(results_dir, skip_bad=True))


# --------------------------------------------------------------------------- row views


def label_fraction(row: dict[str, Any]) -> float:
    """``protocol_settings.label_fraction`` of a row (:func:`sslbench.identity.label_fraction`;
    an unreadable value counts as 1.0: the loader has already warned about such a record)."""
    try:
        return _fraction_of(row.get("protocol_settings"))
    except (TypeError, ValueError):
        return 1.0


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when missing, not a number, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def pretrain_seconds(row: dict[str, Any]) -> float | None:
    """The row's mean pretraining wall time, None when unknown or not finite."""
    return finite(row.get("pretrain_wall_time_s"))


def top1(row: dict[str, Any], metric: str = "acc") -> dict[str, Any] | None:
    """The summary of ``metric`` (default top-1 ``acc``), None when missing or not finite."""
    summary = row["metrics"].get(metric)
    if summary is None or not math.isfinite(summary["mean"]):
        return None
    return summary


# --------------------------------------------------------------------------- ranking


def _tie_key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row.get("kind", "measured"), row["dataset"], row["protocol"], label_fraction(row))


def mark_ties(rows: list[dict[str, Any]]) -> dict[int, tuple[str, int]]:
    """Per row index: ``("best", i)`` or ``("tie", i_best)``; rows not listed are neither.

    Rows are compared only within the same kind (measured / reported), dataset, protocol and
    label fraction, on top-1 (``acc``). A row ties when its 95% CI overlaps the best row's.
    """
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if top1(row) is not None:
            groups[_tie_key(row)].append(i)
    marks: dict[int, tuple[str, int]] = {}
    for members in groups.values():
        best, ties = best_and_ties({i: top1(rows[i]) for i in members})
        marks[best] = ("best", best)
        marks.update({i: ("tie", best) for i in ties})
    return marks


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Page order: dataset, protocol, label fraction (most labels first), then top-1 best
    first (rows without a finite top-1 last), then method, backbone, recipe, settings."""
    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        acc = top1(row)
        return (row["dataset"], protocol_sort_key(row["protocol"]), -label_fraction(row),
                acc is None, -(acc["mean"] if acc else 0.0), row["method"], row["backbone"],
                row["recipe"], canonical(row["protocol_settings"]))
    return sorted(rows, key=key)


def without_fraction(settings: dict[str, Any]) -> dict[str, Any]:
    """Protocol settings less ``label_fraction`` (shown and grouped on separately)."""
    return {k: v for k, v in settings.items() if k != "label_fraction"}
