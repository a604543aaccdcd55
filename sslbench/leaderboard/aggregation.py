"""Aggregation and ranking: result records grouped into board rows, mean ± 95% CI over seeds,
and paired differences between rows.

Every renderer (Markdown, HTML, JSON, CSV, the W&B table) and ``leaderboard compare`` work on
what this module computes: one row per group of records (:func:`aggregate`), one record per
(seed, eval seed) pair (:func:`dedupe_seeds`), the 95% Student-t interval of the mean
(:func:`ci95_halfwidth`), paired differences over shared (seed, eval seed) pairs
(:func:`paired_difference`) to the random-init baseline and to the best row of a column
(:func:`best_comparisons`, :func:`mark_ties`), the minimal detectable difference (:func:`mdd`,
:func:`seeds_for`), sort keys and the canonical text of protocol settings.

Pairing is sound because, for a given seed, every method on a backbone starts from the same
backbone initialisation, sees the same images in the same order and is evaluated on the same
validation carve-out; the random-init baseline of that seed is that same initialisation.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..identity import BASELINES, RANDOM_INIT, label_fraction as _fraction_of
from .store import load_records

_PROTOCOL_ORDER = ("linear", "knn")
# the rows that get no random-init partner: the reference itself and the pixels, which have no
# initialisation
_NO_RANDOM_PARTNER = (RANDOM_INIT, "raw_pixels")
# the difference (a fraction: 5 points of accuracy) that ``seeds_for_delta`` is sized for
CLAIM_DELTA = 0.05
PRIMARY_METRIC = "acc"  # top-1: what the boards rank and mark ties on
SE_SUFFIX = "_se"  # <metric>_se: the bootstrap standard error of <metric> over its test set


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


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether the 95% CIs of two metric summaries overlap (the unpaired tie rule)."""
    a_lo, a_hi = interval(a)
    b_lo, b_hi = interval(b)
    return a_lo <= b_hi and b_lo <= a_hi


def _t(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(q, df))


def _verdict(lo: float, hi: float) -> str:
    """``beats`` when a difference's interval lies above 0, ``below`` under it, else ``tie``."""
    return "beats" if lo > 0 else "below" if hi < 0 else "tie"


def paired_difference(a: list[list[Any]], b: list[list[Any]]) -> dict[str, Any]:
    """A − B over the (seed, eval seed) pairs both sides have.

    Args:
        a, b: ``[seed, eval_seed, value]`` triples (a row's ``per_seed`` of one metric).

    Returns:
        ``n`` (shared pairs), ``mean`` of the differences (None when n = 0), ``sd`` (sample
        standard deviation, ddof=1), ``ci95`` (Student-t half-width
        ``t_{0.975,n-1} * sd / sqrt(n)``), ``lo``/``hi`` (mean ∓ ci95) and ``verdict``
        (:func:`_verdict`); sd, ci95, lo and hi are None and the verdict is ``n/a`` when n < 2.
    """
    other = {canonical(p[:2]): p[2] for p in b}
    diffs = [v - other[canonical([s, e])] for s, e, v in a if canonical([s, e]) in other]
    n = len(diffs)
    out: dict[str, Any] = {"n": n, "mean": sum(diffs) / n if n else None, "sd": None,
                           "ci95": None, "lo": None, "hi": None, "verdict": "n/a"}
    if n >= 2:
        half = ci95_halfwidth(diffs)
        out.update(sd=_std(diffs), ci95=half, lo=out["mean"] - half, hi=out["mean"] + half)
        out["verdict"] = _verdict(out["lo"], out["hi"])
    return out


def _power_factor(n: int) -> float:
    """``t_{0.975,n-1} + t_{0.80,n-1}``: two-sided α = 0.05 at power 0.8 with n pairs."""
    return _t(0.975, n - 1) + _t(0.80, n - 1)


def mdd(sd: float, n: int) -> float | None:
    """Minimal detectable difference of a paired comparison with ``n`` pairs whose differences
    have sample standard deviation ``sd`` (two-sided α = 0.05, power 0.8)::

        MDD = (t_{0.975,n-1} + t_{0.80,n-1}) * sd / sqrt(n)

    None when n < 2 (no degrees of freedom).
    """
    return None if n < 2 else _power_factor(n) * sd / math.sqrt(n)


def seeds_for(delta: float, sd: float) -> int:
    """The smallest number of pairs n >= 2 with
    ``(t_{0.975,n-1} + t_{0.80,n-1}) * sd / sqrt(n) <= delta``: how many seeds a paired claim
    of a difference ``delta`` needs at the spread ``sd`` seen so far (:func:`mdd` <= delta).

    The search starts at the normal-quantile bound ``((z_{0.975} + z_{0.80}) * sd / delta)²``,
    below which no n qualifies (t quantiles exceed normal ones), and counts up.

    Raises:
        ValueError: ``delta`` is not positive.
    """
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta}")
    from scipy import stats

    z = float(stats.norm.ppf(0.975) + stats.norm.ppf(0.80))
    n = max(2, math.floor((z * sd / delta) ** 2))
    while _power_factor(n) * sd / math.sqrt(n) > delta:
        n += 1
    return n


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


def is_se_metric(name: str) -> bool:
    """Whether ``name`` is a standard error (``acc_se``, ``ood_acc_se``: a bootstrap over an
    evaluation set's groups, :mod:`sslbench.eval.scoring`) rather than an accuracy: rows keep it
    out of ``metrics`` (no column, ranking, pairing or tie mark) and report its mean in
    ``mean_se``."""
    return name.endswith(SE_SUFFIX)


def _per_seed(records: list[dict[str, Any]]) -> dict[str, list[list[Any]]]:
    """Metric -> ``[seed, eval_seed, value]`` per record (finite values only, standard errors
    excepted): what paired differences pair on."""
    out: dict[str, list[list[Any]]] = defaultdict(list)
    for rec in records:
        for name, value in rec["metrics"].items():
            if finite(value) is not None and not is_se_metric(name):
                out[name].append([rec["seed"], rec["eval_seed"], float(value)])
    return dict(sorted(out.items()))


def _mean(values: list[float]) -> float | None:
    """The mean of ``values``, None when there are none."""
    return sum(values) / len(values) if values else None


def _pretrain_mean(records: list[dict[str, Any]], key: str) -> float | None:
    """The mean of ``pretrain[key]`` over the records with a finite one (baselines have no
    ``pretrain``, legacy records no FLOPs), None when none has it."""
    return _mean([v for r in records if isinstance(r.get("pretrain"), dict)
                  and (v := finite(r["pretrain"].get(key))) is not None])


def _mean_loss_curve(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The training loss curve averaged over the pretraining runs of ``records`` (each run
    once, however many records it has): ``{"steps": [...], "mean": [...], "min": [...],
    "max": [...], "runs": n}`` at the steps every run logged; None when no record carries a
    curve (baselines, records written before curves were kept)."""
    curves: dict[str, dict[int, float]] = {}
    for r in records:
        pretrain = r.get("pretrain")
        curve = pretrain.get("loss_curve") if isinstance(pretrain, dict) else None
        if isinstance(curve, list) and curve:
            points = {int(p[0]): float(p[1]) for p in curve
                      if isinstance(p, list) and len(p) == 2 and finite(p[1]) is not None}
            if points:
                curves.setdefault(str(r.get("run_id") or r["seed"]), points)
    if not curves:
        return None
    steps = sorted(set.intersection(*(set(c) for c in curves.values())))
    if not steps:
        return None
    at = [[c[s] for c in curves.values()] for s in steps]
    return {"steps": steps, "mean": [sum(v) / len(v) for v in at], "min": [min(v) for v in at],
            "max": [max(v) for v in at], "runs": len(curves)}


def _mean_se(records: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy metric -> its mean standard error over the records that have a finite one
    (``acc`` from ``acc_se``, ``ood_acc`` from ``ood_acc_se``)."""
    by_metric: dict[str, list[float]] = defaultdict(list)
    for rec in records:
        for name, value in rec["metrics"].items():
            if is_se_metric(name) and finite(value) is not None:
                by_metric[name[:-len(SE_SUFFIX)]].append(float(value))
    return {m: sum(v) / len(v) for m, v in sorted(by_metric.items())}


def _eval_sets(records: list[dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
    """The distinct ``eval_sets`` mappings (evaluation set -> images, groups) of the records,
    in canonical order; empty when no record has one (legacy records)."""
    found = {canonical(r["eval_sets"]): r["eval_sets"] for r in records
             if isinstance(r.get("eval_sets"), dict) and r["eval_sets"]}
    return [found[k] for k in sorted(found)]


def _row(records: list[dict[str, Any]]) -> dict[str, Any]:
    first = records[0]
    recipe = first.get("recipe") or {}
    by_metric: dict[str, list[float]] = defaultdict(list)
    chosen: dict[str, list[Any]] = defaultdict(list)
    for rec in records:
        for name, value in rec["metrics"].items():
            if not is_se_metric(name):
                by_metric[name].append(float(value))
        for k, v in (rec.get("protocol_settings") or {}).items():
            if _is_chosen_key(k):
                chosen[k].append(v)
    provs = [r.get("provenance") or {} for r in records]
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
        "per_seed": _per_seed(records),
        "mean_se": _mean_se(records),
        "eval_sets": _eval_sets(records),
        "pretrain_wall_time_s": _pretrain_mean(records, "wall_time_s"),
        "pretrain_total_flops": _pretrain_mean(records, "total_flops"),
        "pretrain_flops_per_image": _pretrain_mean(records, "flops_per_image"),
        "loss_curve": _mean_loss_curve(records),
        "eval_wall_time_s": _mean([v for r in records
                                   if (v := finite(r.get("wall_time_s"))) is not None]),
        "run_ids": sorted({str(r["run_id"]) for r in records if r.get("run_id")}),
        "git_commits": sorted({str(p["git_commit"]) for p in provs if p.get("git_commit")}),
        "git_dirty": any(bool(p.get("git_dirty")) for p in provs),
        "devices": sorted({str(p["device"]) for p in provs if p.get("device")}),
        "created": newest["created"],
    }


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group records over seeds, summarise every metric and add the paired differences.

    Records are grouped by (dataset, protocol, method, backbone, recipe name, protocol settings
    without per-run choices such as ``C``, kind: measured results never mix with figures
    reported in papers). Within a group each (seed, eval_seed) pair counts
    once (the newest record wins). Each metric gets n, mean, sample std (ddof=1) and the 95%
    t-interval half-width (None for n=1); ``per_seed``, ``vs_random``, ``mdd``, ``best`` and
    ``vs_best`` are described in :func:`add_paired`.

    Standard errors (``<metric>_se``, :func:`is_se_metric`) are not metrics of the row: their
    mean per accuracy is ``mean_se`` (``{"acc": 0.012, ...}``), next to ``eval_sets`` (the
    distinct ``eval_sets`` mappings of the records, evaluation set -> images and groups).
    ``pretrain_wall_time_s``, ``pretrain_total_flops`` and ``pretrain_flops_per_image`` are
    the means over the records that have a finite value, None when none has one;
    ``loss_curve`` is the pretraining loss averaged over the row's runs (:func:`_mean_loss_curve`).

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
    add_paired(rows)
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


def pretrain_flops(row: dict[str, Any]) -> float | None:
    """The row's mean total pretraining FLOPs per run, None when unknown or not finite."""
    return finite(row.get("pretrain_total_flops"))


def flops_per_image(row: dict[str, Any]) -> float | None:
    """The row's mean pretraining FLOPs per source image, None when unknown or not finite."""
    return finite(row.get("pretrain_flops_per_image"))


def top1(row: dict[str, Any], metric: str = PRIMARY_METRIC) -> dict[str, Any] | None:
    """The summary of ``metric`` (default top-1 ``acc``), None when missing or not finite."""
    summary = row["metrics"].get(metric)
    if summary is None or not math.isfinite(summary["mean"]):
        return None
    return summary


def paired(row: dict[str, Any], field: str,
           metric: str = PRIMARY_METRIC) -> dict[str, Any] | None:
    """A row's ``vs_random`` / ``vs_best`` / ``mdd`` entry for ``metric`` (default top-1), None
    when absent (:func:`add_paired`)."""
    return (row.get(field) or {}).get(metric)


# --------------------------------------------------------------------------- ranking


def comparison_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """Rows compared with each other: same kind (measured / reported), dataset, protocol and
    comparable settings (one column of the Markdown board)."""
    return (row.get("kind", "measured"), row["dataset"], row["protocol"],
            canonical(row.get("protocol_settings") or {}))


def _who(row: dict[str, Any]) -> dict[str, str]:
    """The row a difference is taken against: method, backbone, recipe."""
    return {k: row[k] for k in ("method", "backbone", "recipe")}


def _vs_best(row: dict[str, Any], best: dict[str, Any], metric: str) -> dict[str, Any]:
    """Row − best on ``metric``: paired when they share at least two (seed, eval seed) pairs
    (``tie`` when the paired 95% interval contains 0), else the unpaired rule (``paired``
    false, ``mean`` the difference of the means, ``tie`` when the 95% CIs overlap)."""
    diff = paired_difference((row.get("per_seed") or {}).get(metric, []),
                             (best.get("per_seed") or {}).get(metric, []))
    is_paired = diff["n"] >= 2
    if is_paired:
        tie = diff["verdict"] == "tie"
    else:
        tie = _overlap(row["metrics"][metric], best["metrics"][metric])
        diff.update(mean=row["metrics"][metric]["mean"] - best["metrics"][metric]["mean"],
                    verdict="tie" if tie else "below")
    return {**diff, "paired": is_paired, "tie": tie, "against": _who(best)}


def best_comparisons(rows: list[dict[str, Any]],
                     metric: str) -> dict[int, tuple[int, dict[str, Any] | None]]:
    """Per row index with a finite ``metric``: (index of its group's best row, the row's
    difference to it from :func:`_vs_best`, None for the best row itself).

    Groups are :func:`comparison_key`; the best row has the highest mean (on equal means the
    first by method, backbone, recipe, whatever the order of ``rows``).
    """
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if top1(row, metric) is not None:
            groups[comparison_key(row)].append(i)
    out: dict[int, tuple[int, dict[str, Any] | None]] = {}
    for members in groups.values():
        best = min(members, key=lambda i: (-rows[i]["metrics"][metric]["mean"],
                                           rows[i]["method"], rows[i]["backbone"],
                                           rows[i]["recipe"]))
        out.update({i: (best, None if i == best else _vs_best(rows[i], rows[best], metric))
                    for i in members})
    return out


def mark_ties(rows: list[dict[str, Any]]) -> dict[int, tuple[str, int]]:
    """Per row index: ``("best", i)`` or ``("tie", i_best)`` on top-1 (``acc``); rows not
    listed are neither. A row ties when :func:`best_comparisons` says so: its paired 95%
    interval of the difference to the best row contains 0, or, with fewer than two shared
    (seed, eval seed) pairs, its 95% CI overlaps the best row's."""
    marks: dict[int, tuple[str, int]] = {}
    for i, (best, diff) in best_comparisons(rows, PRIMARY_METRIC).items():
        if diff is None:
            marks[i] = ("best", i)
        elif diff["tie"]:
            marks[i] = ("tie", best)
    return marks


def _random_partners(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Row index -> its random-init row: same kind, dataset, protocol, comparable settings
    and backbone; among several the same recipe name first, then the most seeds, then the
    first. Random-init and raw-pixel rows have none."""
    pool: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["method"] == RANDOM_INIT:
            pool[(*comparison_key(row), row["backbone"])].append(row)
    out = {}
    for i, row in enumerate(rows):
        found = pool.get((*comparison_key(row), row["backbone"]))
        if found and row["method"] not in _NO_RANDOM_PARTNER:
            out[i] = min(found, key=lambda r: (r["recipe"] != row["recipe"], -r["n"]))
    return out


def _mdd_entry(diff: dict[str, Any] | None) -> dict[str, Any] | None:
    """The MDD of a difference to random init and the seeds a :data:`CLAIM_DELTA` claim needs
    (None without a partner or with fewer than two pairs)."""
    if diff is None or diff["sd"] is None:
        return None
    return {"n": diff["n"], "sd": diff["sd"], "mdd": mdd(diff["sd"], diff["n"]),
            "delta": CLAIM_DELTA, "seeds_for_delta": seeds_for(CLAIM_DELTA, diff["sd"])}


def add_paired(rows: list[dict[str, Any]]) -> None:
    """Add the paired statistics to each row, per metric (in place):

    - ``per_seed``: ``[seed, eval_seed, value]`` per record (set by :func:`aggregate`).
    - ``vs_random``: :func:`paired_difference` of the row minus its random-init row (same
      kind, dataset, protocol, settings, backbone; see :func:`_random_partners`) plus
      ``against`` (that row's method, backbone, recipe); None without one.
    - ``mdd``: ``n``, ``sd`` of those differences, ``mdd`` = (t_{0.975,n-1} + t_{0.80,n-1})
      * sd / sqrt(n), ``delta`` (:data:`CLAIM_DELTA`) and ``seeds_for_delta``
      (:func:`seeds_for`); None with fewer than two pairs.
    - ``best``: whether the row is the best of its :func:`comparison_key` group.
    - ``vs_best``: the difference to that best row (:func:`best_comparisons`; ``paired``,
      ``tie``, ``against``); None for the best row and for a non-finite metric.
    """
    partners = _random_partners(rows)
    for i, row in enumerate(rows):
        mine, partner = row.get("per_seed") or {}, partners.get(i)
        theirs = (partner or {}).get("per_seed") or {}
        row["vs_random"] = {m: None if partner is None else {
            **paired_difference(mine.get(m, []), theirs.get(m, [])), "against": _who(partner)}
            for m in row["metrics"]}
        row["mdd"] = {m: _mdd_entry(d) for m, d in row["vs_random"].items()}
        row["best"] = {m: False for m in row["metrics"]}
        row["vs_best"] = {m: None for m in row["metrics"]}
    for metric in sorted({m for row in rows for m in row["metrics"]}):
        for i, (_, diff) in best_comparisons(rows, metric).items():
            rows[i]["best"][metric] = diff is None
            rows[i]["vs_best"][metric] = diff


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
