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
      "pretrain": {"steps": 170, "images_seen": 43520, "wall_time_s": 55.1,
                   "loss_curve": [[20, 4.2], [40, 3.8], ...]} | null,  # curve: <= 64 points
      "wall_time_s": 3.2,              # this protocol's evaluation time
      "created": "2026-11-23T12:00:00+00:00"
    }

``source`` is optional in the schema (older files have none) but required when ``kind`` is
``"reported"``; ``protocol_settings.label_fraction`` (default 1.0) is the fraction of labels the
protocol trained on. Schema version 2 adds ``identity``, ``identity_hash`` and ``suite``
(:mod:`sslbench.identity`); version 1 files stay valid as legacy records.

The schema is published as ``record.schema.json`` next to this file (JSON Schema draft 2020-12);
:func:`schema_problems` checks a record against it plus what JSON Schema cannot say, and is
the one check the writer, the loader and ``sslbench leaderboard validate`` all use.
"""
from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from ..errors import UserError
from ..identity import label_fraction
from ..utils import atomic_write_json

SCHEMA_VERSION = 2  # the version written; 1 = legacy records without an identity
SCHEMA_FILE = "record.schema.json"


@functools.lru_cache(maxsize=1)
def record_schema() -> dict[str, Any]:
    """The published JSON Schema of a record (``record.schema.json``)."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


REQUIRED_FIELDS = tuple(record_schema()["required"])
KNOWN_SCHEMA_VERSIONS = tuple(record_schema()["properties"]["schema_version"]["enum"])
KINDS = tuple(record_schema()["properties"]["kind"]["enum"])


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(s)).strip("-") or "x"


def record_stub(*, method: str, backbone: str, dataset: str, protocol: str,
                settings: dict[str, Any], seed: int, eval_seed: int, recipe: dict[str, Any],
                suite: Optional[str], dataset_id: dict[str, str],
                config: dict[str, Any]) -> dict[str, Any]:
    """The identifying part of a measured record, ``identity`` and ``identity_hash`` included
    (:mod:`sslbench.identity`): what the evaluator writes and what a suite looks for.
    ``settings`` are the protocol settings that tell records of one cell apart."""
    from ..identity import identity_hash, record_identity

    rec: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "kind": "measured", "method": method,
        "backbone": backbone, "dataset": dataset, "protocol": protocol,
        "protocol_settings": settings, "seed": seed, "eval_seed": int(eval_seed),
        "recipe": recipe, "suite": suite,
    }
    rec["identity"] = record_identity(rec, dataset_id, config)
    rec["identity_hash"] = identity_hash(rec["identity"])
    return rec


def build_record(stub: dict[str, Any], *, backbone_family: str, settings: dict[str, Any],
                 metrics: dict[str, float], run_id: Optional[str], config: dict[str, Any],
                 provenance: dict[str, Any], pretrain: Optional[dict[str, Any]],
                 wall_time_s: float, eval_sets: Optional[dict[str, dict[str, int]]] = None
                 ) -> dict[str, Any]:
    """A complete measured record: ``stub`` (:func:`record_stub`) with every protocol setting
    (``settings`` must include the stub's), the metrics and how they were measured, stamped
    now."""
    rec = dict(stub)
    rec.update({
        "backbone_family": backbone_family, "protocol_settings": settings, "metrics": metrics,
        "run_id": run_id, "config": config, "provenance": provenance, "pretrain": pretrain,
        "wall_time_s": wall_time_s, "created": now_iso(),
    })
    if eval_sets is not None:  # images and independent groups (glyphs) per evaluation set
        rec["eval_sets"] = eval_sets
    return rec


def record_path(results_dir: str | Path, rec: dict[str, Any]) -> Path:
    """``<results>/<dataset>/<recipe>__<method>__<backbone>__<protocol>__seed<k>__ev<j>.json``,
    with ``__lf<fraction>`` appended when ``protocol_settings.label_fraction`` is not 1 and
    ``__layer<k>`` when ``protocol_settings.feature_layer`` is set, and, for schema v2 records,
    ``__<first 10 hex of identity_hash>`` (so two records that differ in anything that can change
    their number — dataset contents, config, overrides — never share a file)."""
    parts = [
        _slug(rec["recipe"].get("name") or "adhoc"), _slug(rec["method"]), _slug(rec["backbone"]),
        _slug(rec["protocol"]), f"seed{rec['seed']}", f"ev{rec['eval_seed']}",
    ]
    settings = rec.get("protocol_settings") or {}
    fraction = label_fraction(settings)
    if fraction != 1.0:
        parts.append(f"lf{fraction:g}")
    if settings.get("feature_layer") is not None:
        parts.append(f"layer{settings['feature_layer']}")
    if rec.get("identity_hash"):  # schema v2: different identities never share a file
        parts.append(_slug(rec["identity_hash"])[:10])
    name = "__".join(parts)
    return Path(results_dir) / _slug(rec["dataset"]) / f"{name}.json"


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(record_schema())


_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_:+-]+")


def _field(path: Any) -> str:
    """A field path as ``a.b.c`` (odd keys JSON-quoted, so it stays on one line)."""
    return ".".join(str(p) if isinstance(p, int) or _SIMPLE_KEY.fullmatch(str(p))
                    else json.dumps(str(p)) for p in path)


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)  # NaN stays NaN; newlines become \n
    return text if len(text) <= 60 else text[:57] + "..."


def _must(where: str, what: str, value: Any) -> str:
    return f"field '{where}' must be {what}, got {_shown(value)}"


def _error_lines(error: Any) -> list[str]:
    """One line per problem in a ``jsonschema`` error, worded with the schema's descriptions."""
    where = _field(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    what = schema.get("description")
    if error.validator == "required":
        hint = f" ({what})" if what and schema is not record_schema() else ""
        return [f"missing field '{_field([*error.absolute_path, name])}'{hint}"
                for name in error.validator_value if name not in error.instance]
    if error.validator == "additionalProperties" and error.validator_value is False:
        extra = sorted(set(error.instance) - set(schema.get("properties", {})))
        return [f"field '{where}' has unknown key(s) {', '.join(_shown(k) for k in extra)}"]
    if what:
        return [_must(where, what, error.instance)]
    return [f"field '{where}': {' '.join(error.message.split())[:120]}"]


def _identity_problems(rec: dict[str, Any]) -> list[str]:
    """A v2 record's identity agrees with its own fields, and ``identity_hash`` is its hash."""
    ident, settings = rec["identity"], rec["protocol_settings"]
    pairs = [  # (identity field, its value, record field, the record's value)
        ("dataset.name", ident["dataset"]["name"], "dataset", rec["dataset"]),
        ("recipe", ident["recipe"], "recipe.name", rec["recipe"].get("name") or "adhoc"),
        *((k, ident[k], k, rec[k]) for k in ("method", "backbone", "protocol", "seed",
                                             "eval_seed")),
        ("settings.label_fraction", ident["settings"]["label_fraction"],
         "protocol_settings.label_fraction",
         settings["label_fraction"] if "label_fraction" in settings else label_fraction(settings)),
        ("settings.feature_layer", ident["settings"].get("feature_layer"),
         "protocol_settings.feature_layer", settings.get("feature_layer")),
    ]
    problems = [f"field 'identity.{key}' is {_shown(a)} but '{field}' is {_shown(b)}; "
                f"the identity must describe this record"
                for key, a, field, b in pairs if a != b]
    from ..identity import identity_hash

    expected = identity_hash(ident)
    if rec["identity_hash"] != expected:
        problems.append(f"field 'identity_hash' is {_shown(rec['identity_hash'])} but the "
                        f"identity hashes to {_shown(expected)}")
    return problems


def _numbers(rec: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """(field path, value, what it must be) of the numbers that must also be finite."""
    out = []
    if isinstance(rec.get("metrics"), dict):
        out += [(f"metrics.{_field([k])}", v, "a finite number in [0, 1]")
                for k, v in rec["metrics"].items()]
    identity = rec.get("identity") if isinstance(rec.get("identity"), dict) else {}
    for where, settings in (("protocol_settings", rec.get("protocol_settings")),
                            ("identity.settings", identity.get("settings"))):
        if isinstance(settings, dict) and "label_fraction" in settings:
            out.append((f"{where}.label_fraction", settings["label_fraction"],
                        "a number in (0, 1]"))
    return out


def schema_problems(rec: Any) -> list[str]:
    """Every problem with one parsed record, one short line each naming the field path.

    Checks ``record.schema.json`` (with ``jsonschema``), then what JSON Schema cannot say: every
    metric and label fraction finite, ``created`` a real ISO timestamp, and for schema version
    2 the identity agreeing with the record and ``identity_hash`` its hash. An unknown or
    missing ``schema_version`` is the only problem reported. Empty when the record is valid.
    """
    if not isinstance(rec, dict):
        return [f"must be a JSON object, got {type(rec).__name__}"]
    if "schema_version" not in rec:
        return ["missing field 'schema_version'"]
    version = rec["schema_version"]
    if isinstance(version, bool) or version not in KNOWN_SCHEMA_VERSIONS:
        known = ", ".join(str(v) for v in KNOWN_SCHEMA_VERSIONS)
        return [f"unknown schema_version {_shown(version)} (known: {known})"]
    errors = list(_validator().iter_errors(rec))
    problems = [line for error in errors for line in _error_lines(error)]
    bad = {_field(error.absolute_path) for error in errors}
    problems += [_must(where, what, value) for where, value, what in _numbers(rec)
                 if isinstance(value, float) and not math.isfinite(value)]
    created = rec.get("created")
    if isinstance(created, str) and "created" not in bad:
        try:
            _dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
        except ValueError:
            problems.append(_must("created", "an ISO 8601 timestamp", created))
    if not problems and version == 2:
        problems = _identity_problems(rec)
    return list(dict.fromkeys(problems))


validate_record = schema_problems  # the name ``sslbench.leaderboard`` exports


def write_record(results_dir: str | Path, rec: dict[str, Any]) -> Path:
    """Write ``rec`` atomically where :func:`record_path` puts it; returns that path.

    Raises:
        UserError: the record breaks the schema (nothing is written).
    """
    problems = schema_problems(rec)
    if problems:
        raise UserError(f"result record not written, it is invalid: {'; '.join(problems)}; "
                        f"fix these values (schema: sslbench/leaderboard/{SCHEMA_FILE})")
    return atomic_write_json(record_path(results_dir, rec), rec)
