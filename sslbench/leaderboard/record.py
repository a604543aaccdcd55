"""Result records: one JSON file per (run, protocol, seed), written atomically.

Schema (``schema_version`` 1)::

    {
      "schema_version": 1,
      "kind": "measured",              # "measured" (run here) | "reported" (copied from a paper)
      "source": "Chen et al. 2020, Table 6",  # reported records only: where the figure is from
      "method": "simclr",              # or a baseline: "raw_pixels", "random_init", "timm:NAME"
      "backbone": "resnet18",          # timm name ("pixels" for raw_pixels)
      "backbone_family": "resnet",     # resnet | vit | pixels | other
      "dataset": "embedded",
      "protocol": "linear",            # linear | knn | ...
      "protocol_settings": {...},      # e.g. {"solver": "lbfgs", "C": 0.1, "c_grid": [...]}
      "seed": 0,                       # pretraining seed (or the baseline's init seed)
      "eval_seed": 0,
      "metrics": {"acc": 0.61, "ood_acc": 0.52, ...},   # accuracies in [0, 1]
      "recipe": {"path": "recipes/quickstart.yaml", "sha256": "…12 hex…", "name": "quickstart"},
      "run_id": "…",                   # pretraining run directory name (None for baselines)
      "config": {...},                 # the fully resolved config
      "provenance": {"sslbench_version", "git_commit", "git_dirty", "torch", "timm", "kornia",
                     "numpy", "python", "device"},
      "pretrain": {"steps": 170, "images_seen": 43520, "wall_time_s": 55.1} | null,
      "wall_time_s": 3.2,              # this protocol's evaluation time
      "created": "2026-11-23T12:00:00+00:00"
    }

``source`` is optional in the schema (older files have none) but required when ``kind`` is
``"reported"``; ``protocol_settings.label_fraction`` (default 1.0) is the fraction of labels the
protocol trained on.
"""
from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path
from typing import Any

from ..utils import atomic_write_json

SCHEMA_VERSION = 1
KNOWN_SCHEMA_VERSIONS = (1,)
KINDS = ("measured", "reported")

REQUIRED_FIELDS = (
    "schema_version", "kind", "method", "backbone", "backbone_family", "dataset", "protocol",
    "protocol_settings", "seed", "eval_seed", "metrics", "recipe", "run_id", "config",
    "provenance", "pretrain", "wall_time_s", "created",
)
OPTIONAL_FIELDS = ("source",)

_NUMBER = (int, float)
# Allowed JSON types per field (``type(None)`` = null); bools never count as int/float.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "schema_version": (int,), "kind": (str,), "method": (str,), "backbone": (str,),
    "backbone_family": (str,), "dataset": (str,), "protocol": (str,),
    "protocol_settings": (dict,), "seed": (int,), "eval_seed": (int,), "metrics": (dict,),
    "recipe": (dict,), "run_id": (str, type(None)), "config": (dict,), "provenance": (dict,),
    "pretrain": (dict, type(None)), "wall_time_s": (*_NUMBER, type(None)), "created": (str,),
    "source": (str,),
}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(s)).strip("-") or "x"


def record_path(results_dir: str | Path, rec: dict[str, Any]) -> Path:
    """``<results>/<dataset>/<recipe>__<method>__<backbone>__<protocol>__seed<k>__ev<j>.json``,
    with ``__lf<fraction>`` appended when ``protocol_settings.label_fraction`` is not 1 and
    ``__layer<k>`` when ``protocol_settings.feature_layer`` is set (so the names of full-label,
    final-layer records stay as they were)."""
    parts = [
        _slug(rec["recipe"].get("name") or "adhoc"), _slug(rec["method"]), _slug(rec["backbone"]),
        _slug(rec["protocol"]), f"seed{rec['seed']}", f"ev{rec['eval_seed']}",
    ]
    settings = rec.get("protocol_settings") or {}
    fraction = float(settings.get("label_fraction", 1.0))
    if fraction != 1.0:
        parts.append(f"lf{fraction:g}")
    if settings.get("feature_layer") is not None:
        parts.append(f"layer{settings['feature_layer']}")
    name = "__".join(parts)
    return Path(results_dir) / _slug(rec["dataset"]) / f"{name}.json"


def validate_record(rec: dict[str, Any]) -> list[str]:
    """Return a list of problems (empty when the record is valid)."""
    problems = [f"missing field '{f}'" for f in REQUIRED_FIELDS if f not in rec]
    if problems:
        return problems
    if rec["schema_version"] != SCHEMA_VERSION:
        problems.append(f"schema_version {rec['schema_version']} != {SCHEMA_VERSION}")
    if not isinstance(rec["metrics"], dict) or not rec["metrics"]:
        problems.append("metrics must be a non-empty mapping")
    else:
        for k, v in rec["metrics"].items():
            if not isinstance(v, (int, float)):
                problems.append(f"metric '{k}' is not a number")
    if rec["kind"] not in KINDS:
        problems.append(f"kind {rec['kind']!r} is not one of {', '.join(KINDS)}")
    elif rec["kind"] == "reported" and not (isinstance(rec.get("source"), str)
                                             and rec["source"].strip()):
        problems.append("reported records need a non-empty 'source' (where the figure is from)")
    return problems


def write_record(results_dir: str | Path, rec: dict[str, Any]) -> Path:
    problems = validate_record(rec)
    assert not problems, f"invalid record: {problems}"
    return atomic_write_json(record_path(results_dir, rec), rec)
