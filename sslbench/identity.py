"""What a result *is*: the identity of a record and of a run directory.

A record's identity is everything that can change its number: the dataset (its name and a
fingerprint of the split contents, not the loader kind or path), the recipe, method, backbone,
protocol and the settings that tell records of one cell apart, the pretraining and evaluation
seeds, and a hash of the fully resolved config (command-line overrides included) minus the keys
listed in :data:`NON_IDENTITY_KEYS`, which cannot change a number, and of the keys added later
with a default that reproduces the earlier behaviour, at that value (:data:`LEGACY_DEFAULTS`).
Two records with different identities never share a file (the file name ends with the identity
hash); a record with the same identity replaces its file.

The same key set decides whether a run directory may be continued with a given config
(:func:`config_diff`): a run is bound to the config it started with.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable, Optional

from .errors import UserError

# Dotted keys (and whole sections) of the resolved config that cannot change a result: where
# output goes, how it is logged, how many threads / workers compute it, which device runs it
# (named in every record's provenance), which other protocols / baselines / seeds / label
# fractions the same command also runs (each record carries its own in the identity), where the
# data lies on this machine (the content fingerprint stands for it), and the unused `name`.
NON_IDENTITY_KEYS = (
    "name", "plugins", "logging", "leaderboard",
    "train.device", "train.threads", "train.checkpoint_every", "train.log_every",
    "data.num_workers", "data.path",
    "eval.protocols", "eval.baselines", "eval.seeds", "eval.label_fractions",
)
# Keys added after records existed, each with the value that reproduces what the code did before
# the key existed. At exactly that value the key is left out of the identity, so a new switch whose
# default keeps the old behaviour does not turn earlier records and finished suite cells into
# different results (to be re-run and replaced). Only the listed value is dropped: any other value,
# including a later change of the key's default, stays in the identity.
LEGACY_DEFAULTS: dict[str, Any] = {
    # greedy and SimCLR ran both views in one backbone pass before the switch (fc3449d, 102058a)
    "method.bn_per_view": False,
}
# Keys a failed run (non-finite loss) may change when it is continued: the remedy the error
# message names. Every change is recorded in run.json (`config_changes`).
RESUME_REMEDY_KEYS = ("optim.lr", "optim.clip_grad")

# method names of the reference baselines in records (plus "timm:NAME"); their one home
RANDOM_INIT = "random_init"  # the baseline every method of a backbone is paired with
BASELINES = ("raw_pixels", RANDOM_INIT, "supervised")

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj: Any) -> str:
    """First 16 hex digits of the SHA-256 of ``obj``'s canonical JSON."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:16]


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def _excluded(key: str, excluded: Iterable[str]) -> bool:
    return any(key == e or key.startswith(e + ".") for e in excluded)


def identity_config(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config entries that can change a number (a key of
    :data:`LEGACY_DEFAULTS` at its listed value is absent, as it was before the key existed)."""
    return {k: v for k, v in flatten(config).items() if not _excluded(k, NON_IDENTITY_KEYS)
            and not (k in LEGACY_DEFAULTS and _same(v, LEGACY_DEFAULTS[k]))}


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # False is not 0 and 1.0 is not True


def config_hash(config: dict[str, Any]) -> str:
    return short_hash(identity_config(config))


def config_diff(old: dict[str, Any], new: dict[str, Any],
                ignore: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """Identity keys whose values differ: ``{key: (old, new)}`` (missing = None)."""
    a, b = identity_config(old), identity_config(new)
    skip = tuple(ignore)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not _excluded(k, skip)}


def describe_diff(diff: dict[str, tuple[Any, Any]], limit: int = 4) -> str:
    # a changed method / backbone / dataset explains the rest of the diff: name it first
    keys = sorted(diff, key=lambda k: (not k.endswith(".name"), k))
    shown = [f"{k}: {json.dumps(diff[k][0], default=str)} -> {json.dumps(diff[k][1], default=str)}"
             for k in keys[:limit]]
    more = f" (+{len(diff) - limit} more)" if len(diff) > limit else ""
    return "; ".join(shown) + more


def dataset_identity(name: str, splits: dict[str, Any]) -> dict[str, str]:
    """Dataset name plus a fingerprint of every split's contents (``ImageDataset.fingerprint``:
    pixels and labels for in-memory splits; file list, labels and image size for lazy ones)."""
    parts = {}
    for split, ds in sorted(splits.items()):
        fp = getattr(ds, "_identity_fingerprint", None)
        if fp is None:  # hashing a split's pixels costs ~0.3 s for CIFAR: once per object
            fp = ds.fingerprint()
            ds._identity_fingerprint = fp
        parts[split] = fp
    return {"name": name, "fingerprint": short_hash(parts)}


def label_fraction(settings: Optional[dict[str, Any]]) -> float:
    """A record's label fraction; missing means 1.0 (every label: records written before label
    fractions existed have none). The one place that says so."""
    return float((settings or {}).get("label_fraction", 1.0))


def record_identity(rec: dict[str, Any], dataset: dict[str, str],
                    config: dict[str, Any]) -> dict[str, Any]:
    """The identity of a record from its own fields, the dataset identity and its config."""
    settings = rec.get("protocol_settings") or {}
    ident_settings: dict[str, Any] = {"label_fraction": label_fraction(settings)}
    if settings.get("feature_layer") is not None:
        ident_settings["feature_layer"] = int(settings["feature_layer"])
    return {
        "dataset": dict(dataset),
        "recipe": (rec.get("recipe") or {}).get("name") or "adhoc",
        "method": rec["method"], "backbone": rec["backbone"], "protocol": rec["protocol"],
        "settings": ident_settings, "seed": int(rec["seed"]), "eval_seed": int(rec["eval_seed"]),
        "config_sha256": config_hash(config),
    }


def identity_hash(identity: dict[str, Any]) -> str:
    return short_hash(identity)


def check_name(value: Optional[str], what: str, fix: str = "") -> str:
    """``value`` if it is a safe single path component, else a one-line :class:`UserError`.

    Safe: starts with a letter or digit, then letters, digits, ``_ . + -``, at most 128
    characters (so never ``..``, ``/``, a hidden name or an absolute path)."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or ".." in value:
        raise UserError(f"{what} {json.dumps(value, default=str)} is not a safe name (letters, "
                        f"digits, '_', '.', '+', '-'; starting with a letter or digit)"
                        f"{'; ' + fix if fix else ''}")
    return value
