"""Builders and the three jobs: pretrain, evaluate, run (= pretrain + evaluate + leaderboard).

Builders turn a validated config into objects (backbone, method, datasets); the loop itself lives
in ``engine.py`` (MAE's main/engine split).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from . import distributed as D
from .backbones import create_backbone, save_backbone
from .config import RUNS_DIR, content_hash, to_dict, to_yaml
from .recipe import load_recipe
from .datasets import ImageDataset, get_split, load_splits
from .engine import fit
from .errors import UserError, did_you_mean
from .identity import (RESUME_REMEDY_KEYS, check_name, config_diff, config_hash, dataset_identity,
                       describe_diff, label_fraction)
from .eval import grid_edge
from .eval.features import cached_extract
from .eval.finetune import stderr_log
from .eval.kinds import (BASELINES, Subject, build_subject, feature_layer, kind_of,
                         protocols_for, record_names, skip_notes)
from .eval.protocol import EvalContext, FrozenFeatures, Protocol, protocol_names
from .eval.sampling import subsample_and_carve
from .eval.scoring import eval_set_sizes, uncertainty
from .leaderboard import write_board, write_record
from .leaderboard.record import build_record, now_iso, record_stub
from .ssl import DataSpec, SSLMethod, get_method
from .tracking import Tracker, loss_curve
from .utils import atomic_write_json, atomic_write_text, provenance, seed_everything
from .views import Normalize

# BASELINES (from sslbench.eval.kinds) and PROTOCOLS (the registry, see __getattr__) are read
# from here by config.py's domain rules and the CLI


# -- builders -----------------------------------------------------------------------------------

def resolve_device(cfg: DictConfig) -> torch.device:
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device=cuda but no CUDA device is available; use train.device=cpu")
    if want == "cuda" and D.launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if cfg.train.threads and want == "cpu":
        torch.set_num_threads(cfg.train.threads)
    return torch.device(want)


def data_spec(cfg: DictConfig) -> DataSpec:
    return DataSpec(cfg.data.image_size, tuple(cfg.data.mean), tuple(cfg.data.std))


def build_method(cfg: DictConfig) -> SSLMethod:
    """Backbone + method with its heads, initialised from ``train.seed``."""
    seed_everything(cfg.train.seed)
    method_cls = get_method(cfg.method.name)
    backbone = create_backbone(cfg.backbone, cfg.data.image_size)
    method_cls.check_backbone(backbone)
    mcfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(method_cls.Config),
                                               {k: v for k, v in cfg.method.items()
                                                if k != "name"}))
    return method_cls(backbone, mcfg, data_spec(cfg))


def recipe_info(path: Optional[str | Path]) -> dict[str, Any]:
    if path is None:
        return {"path": None, "sha256": None, "name": "adhoc"}
    p = Path(path)
    check_name(p.stem, "recipe name", f"rename {p}: its name becomes part of run and record "
                                      f"file names")
    try:
        shown = str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(p)
    return {"path": shown, "sha256": content_hash(p.read_bytes()), "name": p.stem}


def wandb_config(cfg: DictConfig, recipe: dict[str, Any]) -> dict[str, Any]:
    """Top-level keys dashboards group by, plus the full resolved config."""
    return {"method": cfg.method.name, "backbone": cfg.backbone.name, "dataset": cfg.data.name,
            "recipe": recipe["name"], "recipe_hash": recipe["sha256"], "seed": cfg.train.seed,
            "config": to_dict(cfg)}


def default_run_id(cfg: DictConfig, recipe: dict[str, Any]) -> str:
    check_name(cfg.backbone.name, "backbone.name", "use a timm model name")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{recipe['name']}-{cfg.method.name}-{cfg.backbone.name}-s{cfg.train.seed}-{stamp}"


# -- pretraining --------------------------------------------------------------------------------

def read_run_info(run_dir: Path) -> dict[str, Any]:
    """``run.json`` of a run directory ({} when absent); a corrupt file is a one-line error."""
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is corrupt or not a run.json ({type(e).__name__}); restore it, "
                        f"or delete {run_dir} to start the run over") from None
    if not isinstance(info, dict):
        raise UserError(f"{path} is corrupt or not a run.json (not a JSON object); restore it, "
                        f"or delete {run_dir} to start the run over")
    return info


def load_run(run_dir: str | Path) -> tuple[DictConfig, dict[str, Any]]:
    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        raise UserError(f"{d} is not a run directory (no config.yaml); pass a run made by "
                        f"'sslbench pretrain'")
    cfg = load_recipe(d / "config.yaml")
    return cfg, read_run_info(d)


# files sslbench itself may leave in a run directory before its config.yaml exists
_PRE_CONFIG_FILES = ("metrics.jsonl", "wandb", "features")


def bind_run_dir(cfg: DictConfig, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Refuse to use ``run_dir`` with a config other than the one its run started with.

    Nothing is written. Returns the changes allowed on a failed run (``RESUME_REMEDY_KEYS``:
    the remedy for a non-finite loss), else {}. Raises UserError naming the differing keys when
    the directory holds another run, its ``config.yaml`` was edited since the run started, or it
    is not a run directory at all."""
    check_name(run_dir.name, "run id (the run directory's name)",
               "pass --out DIR with a plain directory name")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} exists and is not a directory; choose another --out")
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        if run_dir.is_dir() and any(not p.name.startswith(".") and p.name not in _PRE_CONFIG_FILES
                                    for p in run_dir.iterdir()):
            raise UserError(f"{run_dir} is not empty and is not a run directory (no "
                            f"config.yaml); choose a new --out")
        return {}
    stored = to_dict(load_recipe(cfg_path))
    info = read_run_info(run_dir)
    if info.get("config_sha256") and config_hash(stored) != info["config_sha256"]:
        edited = config_diff(info["config"], stored) if isinstance(info.get("config"), dict) \
            else {}
        raise UserError(f"{cfg_path} was edited after the run started "
                        f"({describe_diff(edited) or 'contents differ'}); restore it, or start "
                        f"a new run with another --out")
    diff = config_diff(stored, to_dict(cfg))
    if not diff:
        return {}
    if info.get("status") == "failed" and all(k in RESUME_REMEDY_KEYS for k in diff):
        return diff
    remedy = (f" (after a failure only {', '.join(RESUME_REMEDY_KEYS)} may change)"
              if info.get("status") == "failed" else "")
    raise UserError(f"{run_dir} holds a run with a different config ({describe_diff(diff)})"
                    f"{remedy}; choose another --out, or continue it unchanged with: "
                    f"sslbench pretrain {run_dir}")


class RunBusy(UserError):
    """Another process holds the run directory's lock."""


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``run_dir/.lock`` (rank 0 only): one process trains or runs a directory at a time."""
    if int(os.environ.get("RANK", "0")) != 0:  # torchrun sets RANK before the group exists
        yield
        return
    from filelock import FileLock, Timeout

    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / ".lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunBusy(f"{run_dir} is in use by another sslbench process; wait for it to finish, "
                      f"or choose another --out") from None
    try:
        yield
    finally:
        lock.release()


def _finished(info: dict[str, Any], run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished pretraining (reused, not trained again)."""
    return info.get("status") == "done" and (run_dir / "backbone.safetensors").is_file()


def pretrain(cfg: DictConfig, recipe: dict[str, Any], run_dir: Path, quiet: bool = False,
             tracker: Optional[Tracker] = None) -> dict[str, Any]:
    """Pretrain into ``run_dir`` (resuming from its checkpoint if there is one). The directory
    must be new or hold a run with the same config (:func:`bind_run_dir`); it is locked while
    training."""
    changes = bind_run_dir(cfg, run_dir)
    if not _finished(read_run_info(run_dir), run_dir):
        load_splits(cfg.data)  # read (or download) the data before the run directory exists
    with run_lock(run_dir):
        return _pretrain(cfg, recipe, run_dir, changes, quiet, tracker)


def _pretrain(cfg: DictConfig, recipe: dict[str, Any], run_dir: Path,
              changes: dict[str, tuple[Any, Any]], quiet: bool = False,
              tracker: Optional[Tracker] = None) -> dict[str, Any]:
    from .engine import TrainingError

    info_path = run_dir / "run.json"
    info = read_run_info(run_dir)
    if _finished(info, run_dir):
        if not quiet and D.is_main():
            print(f"note: {run_dir} holds a finished pretraining with this config; reusing it "
                  f"(choose another --out to train again)", file=sys.stderr)
        return info
    device = resolve_device(cfg)
    D.init_from_env(device.type)
    splits = load_splits(cfg.data)
    train = get_split(splits, cfg.data.pretrain_split or cfg.data.train_split, "pretraining")
    if cfg.train.batch_size > len(train):
        raise UserError(f"train.batch_size={cfg.train.batch_size} exceeds the {len(train)} "
                        f"training images; lower train.batch_size")
    method = build_method(cfg)
    if (run_dir / "checkpoint.pt").is_file():  # refuse a corrupt one before writing anything
        from .checkpoint import load_checkpoint

        load_checkpoint(run_dir / "checkpoint.pt")
    seed_everything(cfg.train.seed * 1000 + D.rank())  # augmentation streams differ per rank
    run_dir.mkdir(parents=True, exist_ok=True)
    if D.is_main():
        resolved = to_dict(cfg)
        atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
        if changes:  # the remedy after a failure, recorded (records name the final config)
            info.setdefault("config_changes", []).append(
                {"changes": {k: [a, b] for k, (a, b) in changes.items()}, "created": now_iso()})
        info.update(run_id=run_dir.name, recipe=recipe, status="running",
                    world_size=D.world_size(), provenance=provenance(device), config=resolved,
                    config_sha256=config_hash(resolved))
        info.pop("error", None)
        atomic_write_json(info_path, info)
    own_tracker = tracker is None
    if tracker is None:
        tracker = _pretrain_tracker(cfg, recipe, run_dir)
    try:
        try:
            result = fit(method, train, cfg, run_dir, device, tracker, quiet)
        except (TrainingError, KeyboardInterrupt) as e:
            if D.is_main():
                failed = isinstance(e, TrainingError) and not getattr(e, "resumable", False)
                info.update(status="failed" if failed else "interrupted",
                            error=str(e) or type(e).__name__)
                atomic_write_json(info_path, info)
            raise
        if D.is_main():
            save_backbone(method.eval_backbone(), run_dir / "backbone.safetensors")
            curve = loss_curve(run_dir / "metrics.jsonl")
            info.update(status="done", pretrain={
                **asdict(result), **({"loss_curve": curve} if curve else {}),
                **({"config_changes": info["config_changes"]} if info.get("config_changes")
                   else {})})
            atomic_write_json(info_path, info)
            # evaluation runs name this artifact (lineage when online; config entry offline)
            tracker.log_artifact(run_dir / "backbone.safetensors", f"backbone-{run_dir.name}",
                                 "model", {"method": cfg.method.name,
                                           "backbone": cfg.backbone.name,
                                           "recipe": recipe.get("name"),
                                           "git_commit": info["provenance"].get("git_commit")})
        tracker.summary({"pretrain/wall_time_s": result.wall_time_s,
                         "pretrain/img_per_s": result.img_per_s})
    finally:
        if own_tracker:
            tracker.finish()
    D.barrier()
    return info


# -- evaluation ---------------------------------------------------------------------------------

def __getattr__(name: str) -> Any:
    """``PROTOCOLS``: the registered protocol names, read when asked (plugins included)."""
    if name == "PROTOCOLS":
        return protocol_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _identity_settings(protocol: Protocol, fraction: float, layer: Optional[int]
                       ) -> dict[str, Any]:
    """The protocol settings that tell records of one cell apart (and name their files)."""
    settings: dict[str, Any] = {"label_fraction": float(fraction)}
    if layer is not None and protocol.frozen_features:
        settings["feature_layer"] = int(layer)  # absent = the final representation
    return settings


def _stub(cfg: DictConfig, recipe: dict[str, Any], kind: str, protocol: Protocol,
          fraction: float, layer: Optional[int], eval_seed: int, dataset_id: dict[str, str],
          suite: Optional[str] = None) -> dict[str, Any]:
    method, backbone = record_names(cfg, kind)
    return record_stub(method=method, backbone=backbone, dataset=cfg.data.name,
                       protocol=protocol.name,
                       settings=_identity_settings(protocol, fraction, layer),
                       seed=cfg.train.seed, eval_seed=eval_seed, recipe=recipe, suite=suite,
                       dataset_id=dataset_id, config=to_dict(cfg))


def expected_records(cfg: DictConfig, recipe: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """Stubs of every record ``evaluate(cfg, recipe, kind)`` writes (reads the dataset to
    fingerprint it)."""
    dataset_id = dataset_identity(cfg.data.name, load_splits(cfg.data))
    layer = feature_layer(cfg, kind)
    return [_stub(cfg, recipe, kind, protocol, float(fraction), layer, int(ev), dataset_id)
            for protocol in protocols_for(kind, list(cfg.eval.protocols), layer)
            for ev in cfg.eval.seeds for fraction in cfg.eval.label_fractions]


def check_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """Evaluating a run may change ``eval.*`` only: records must name the config the backbone
    was really pretrained with."""
    info = read_run_info(run_dir)
    if info.get("status") not in (None, "done"):
        raise UserError(f"{run_dir} has not finished pretraining (status {info['status']}); "
                        f"continue it with: sslbench pretrain {run_dir}")
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml); pass a run made by "
                        f"'sslbench pretrain'")
    diff = config_diff(to_dict(load_recipe(run_dir / "config.yaml")), to_dict(cfg),
                       ignore=("eval",))
    if diff:
        raise UserError(f"these settings differ from how {run_dir} was pretrained "
                        f"({describe_diff(diff)}); evaluating a run may change eval.* keys only")


def _eval_sets(cfg: DictConfig, splits: dict[str, ImageDataset], train: ImageDataset,
               quiet: bool) -> dict[str, ImageDataset]:
    """The test split, the OOD split when the data has one, and ``data.ood_sets``."""
    evals = {"test": get_split(splits, cfg.data.test_split, "evaluation")}
    if cfg.data.ood_split and cfg.data.ood_split in splits:
        evals["ood"] = splits[cfg.data.ood_split]
    if cfg.data.ood_sets:
        from .datasets.ood import load_ood_sets

        evals.update(load_ood_sets(cfg.data, train.classes, quiet))
    return evals


def _frozen_features(cfg: DictConfig, subject: Subject, normalize: Normalize,
                     layer: Optional[int], train: ImageDataset, evals: dict[str, ImageDataset],
                     device: torch.device, quiet: bool) -> FrozenFeatures:
    """The backbone's features at ``layer`` (the normalised pixels for raw pixels) of the
    train split and every evaluation set, cached in a run's ``features/`` directory."""
    backbone = subject.backbone
    if backbone is None:
        def fn(x):
            return normalize(x).flatten(1)
    else:
        def fn(x):
            return backbone.features_at(normalize(x), layer)
    cache_dir, key = subject.cache or (None, subject.kind)
    if layer is not None:
        key = f"{key}-layer{layer}"

    def extract(ds: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
        return cached_extract(fn, ds, device, cfg.eval.batch_size, cache_dir, key,
                              module=backbone, quiet=quiet)

    return FrozenFeatures(extract(train), {name: extract(ds) for name, ds in evals.items()})


@dataclass
class _Evaluation:
    """What every record of one :func:`evaluate` call shares."""
    cfg: DictConfig
    recipe: dict[str, Any]
    subject: Subject
    run_dir: Optional[Path]
    layer: Optional[int]
    dataset_id: dict[str, str]
    suite: Optional[str]
    feature_share: float  # feature extraction time charged to each frozen-feature record
    provenance: dict[str, Any]


def _measure(ev: _Evaluation, protocol: Protocol, ctx: EvalContext, fraction: float
             ) -> dict[str, Any]:
    """Run one protocol on one (label fraction, eval seed) and write its record."""
    cfg, kind = ev.cfg, ev.subject.kind
    method_name = record_names(cfg, kind)[0]
    t1 = time.perf_counter()
    if ctx.log:
        ctx.log(f"eval {method_name} {protocol.name} (label fraction {fraction:g}, "
                f"eval seed {ctx.eval_seed})" + (":" if protocol.needs_backbone else ""))
    metrics, settings = protocol.run(ctx)
    if ctx.log:
        ctx.log(f"  -> test acc {100 * metrics.get('acc', float('nan')):.1f}% in "
                f"{time.perf_counter() - t1:.1f} s")
    metrics.update(uncertainty(ctx.predictions, ctx.evals))
    stub = _stub(cfg, ev.recipe, kind, protocol, fraction, ev.layer, ctx.eval_seed,
                 ev.dataset_id, ev.suite)
    settings.update(stub["protocol_settings"])
    edge = grid_edge(settings)
    if edge:  # recorded, and said: the best value may lie outside the grid
        settings["grid_edge"] = edge
        if ctx.log:
            ctx.log(f"note: {method_name} {protocol.name} (label fraction {fraction:g}): {edge}")
    wall = time.perf_counter() - t1 + (ev.feature_share if protocol.frozen_features else 0.0)
    rec = build_record(stub, backbone_family=ev.subject.family, settings=settings,
                       metrics=metrics, run_id=ev.run_dir.name if ev.run_dir else None,
                       config=to_dict(cfg), provenance=ev.provenance,
                       pretrain=ev.subject.pretrain, wall_time_s=wall,
                       eval_sets=eval_set_sizes(ctx.evals))
    write_record(Path(cfg.leaderboard.dir) / "results", rec)
    return rec


def evaluate(cfg: DictConfig, recipe: dict[str, Any], kind: str = "run",
             run_dir: Optional[Path] = None, protocols: Optional[list[str]] = None,
             quiet: bool = False,
             pretrain_info: Optional[dict] = None, suite: Optional[str] = None
             ) -> list[dict[str, Any]]:
    """Evaluate a pretrained run (``kind="run"``) or a baseline (``sslbench.eval.kinds``) with
    every label fraction x eval seed x protocol (``sslbench.eval.protocol``); write one record
    each.

    For each (label fraction, eval seed) one labelled subset of the train split and one
    validation split carved from it (by group) are shared by every protocol
    (``sslbench.eval.sampling``); frozen features are extracted once for all of them."""
    if not D.is_main():
        return []
    asked = list(protocols or cfg.eval.protocols)
    for p in asked:
        if p not in protocol_names():
            raise UserError(f"unknown protocol '{p}'{did_you_mean(p, protocol_names())}")
    kind_of(kind)  # an unknown kind fails before the data is read
    if kind == "run":
        assert run_dir is not None
        check_run_config(cfg, run_dir)
    device = resolve_device(cfg)
    splits = load_splits(cfg.data)
    train = get_split(splits, cfg.data.train_split, "evaluation")
    evals = _eval_sets(cfg, splits, train, quiet)
    normalize = Normalize(cfg.data.mean, cfg.data.std).to(device)
    subject = build_subject(cfg, kind, run_dir, pretrain_info)
    if subject.backbone is not None:
        subject.backbone.to(device)
    layer = feature_layer(cfg, kind)
    for note in [] if quiet else skip_notes(kind, asked, layer):
        print(note, file=sys.stderr)
    todo = protocols_for(kind, asked, layer)
    t0 = time.perf_counter()
    frozen = (_frozen_features(cfg, subject, normalize, layer, train, evals, device, quiet)
              if any(p.frozen_features for p in todo) else None)
    share = (time.perf_counter() - t0) / max(1, sum(p.frozen_features for p in todo))
    ev = _Evaluation(cfg, recipe, subject, run_dir, layer,
                     dataset_identity(cfg.data.name, splits), suite, share, provenance(device))
    records = []
    for fraction in cfg.eval.label_fractions:
        for eval_seed in cfg.eval.seeds:
            sub, fit_idx, val_idx = subsample_and_carve(
                train.labels, train.groups, float(fraction), cfg.eval.linear.val_fraction,
                int(eval_seed))
            for protocol in todo:
                ctx = EvalContext(cfg, kind, device, train, sub, fit_idx, val_idx, evals,
                                  normalize, subject.backbone, int(eval_seed),
                                  frozen if protocol.frozen_features else None,
                                  None if quiet else stderr_log)
                records.append(_measure(ev, protocol, ctx, float(fraction)))
    _log_eval_runs(cfg, recipe, kind, run_dir, records)
    return records


def _pretrain_tracker(cfg: DictConfig, recipe: dict[str, Any], run_dir: Path,
                      metrics: bool = True) -> Tracker:
    """The pretraining run's tracker; its W&B run id lives in ``run_dir/wandb_id``, so a resumed
    run and its later evaluation summary continue one W&B run."""
    return Tracker(run_dir / "metrics.jsonl" if metrics else None, cfg.logging, run_dir.name,
                   "pretrain", wandb_config(cfg, recipe), run_dir,
                   tags=[cfg.method.name, cfg.backbone.name, cfg.data.name],
                   id_file=run_dir / "wandb_id")


def _full_label_means(records: list[dict[str, Any]], prefix: str = "") -> dict[str, float]:
    """Each metric's mean over the records at label fraction 1 (eval seeds pooled)."""
    full = [r for r in records if label_fraction(r["protocol_settings"]) == 1]
    out = {}
    for key in sorted({k for r in full for k in r["metrics"]}):
        vals = [r["metrics"][key] for r in full if key in r["metrics"]]
        out[prefix + key] = sum(vals) / len(vals)
    return out


def _log_eval_runs(cfg: DictConfig, recipe: dict[str, Any], kind: str, run_dir: Optional[Path],
                   records: list[dict[str, Any]]) -> None:
    """One W&B run per protocol (``job_type`` = the protocol, same group and tags as the
    pretraining run): summary metrics (label fraction 1, mean over eval seeds), a table of every
    record, the record files as a ``result`` artifact, and a link to the pretraining run — a
    ``use_artifact`` edge to its backbone when online, the ``pretrain_run`` config entry always.
    """
    if not records or not cfg.logging.wandb or not D.is_main():
        return
    from .leaderboard.record import record_path

    results = Path(cfg.leaderboard.dir) / "results"
    first = records[0]
    run_id = run_dir.name if run_dir is not None else None
    who = run_id or f"{recipe.get('name') or 'adhoc'}-{first['method']}-s{cfg.train.seed}"
    in_pretrain_run: dict[str, float] = {}
    for protocol in dict.fromkeys(r["protocol"] for r in records):
        recs = [r for r in records if r["protocol"] == protocol]
        in_pretrain_run.update(_full_label_means(recs, f"eval/{protocol}/"))
        config = {**wandb_config(cfg, recipe), "method": first["method"],
                  "backbone": first["backbone"], "protocol": protocol, "kind": kind,
                  "pretrain_run": run_id,
                  "backbone_artifact": f"backbone-{run_id}" if kind == "run" else None,
                  "protocol_settings": recs[0]["protocol_settings"]}
        tracker = Tracker(None, cfg.logging, f"{who}-{protocol}", protocol, config,
                          run_dir or Path(cfg.logging.dir or RUNS_DIR),
                          tags=[first["method"], first["backbone"], cfg.data.name, protocol])
        try:
            if kind == "run":
                tracker.use_artifact(f"backbone-{run_id}", "model")
            tracker.summary(_full_label_means(recs))
            columns = ["label_fraction", "eval_seed", "acc", "ood_acc", "val_acc", "record"]
            tracker.log_table("results", columns, [
                [label_fraction(r["protocol_settings"]), r["eval_seed"],
                 r["metrics"].get("acc"), r["metrics"].get("ood_acc"),
                 r["metrics"].get("val_acc"), record_path(results, r).name] for r in recs])
            tracker.log_artifact([record_path(results, r) for r in recs],
                                 f"result-{who}-{protocol}", "result",
                                 {"protocol": protocol, "method": first["method"]})
        finally:
            tracker.finish()
    if kind == "run" and run_dir is not None and (run_dir / "wandb_id").is_file():
        # the pretraining run's summary gets every protocol's results: one W&B row per
        # pretrained backbone holds its loss curve and its accuracies
        tracker = _pretrain_tracker(cfg, recipe, run_dir, metrics=False)
        try:
            tracker.summary(in_pretrain_run)
        finally:
            tracker.finish()


# -- the main job -------------------------------------------------------------------------------

def run(cfg: DictConfig, recipe: dict[str, Any], run_dir: Path, quiet: bool = False,
        suite: Optional[str] = None) -> tuple[list[dict[str, Any]], Optional[Path]]:
    """Pretrain, evaluate the run and the recipe's baselines, record and render the board.

    The run directory is checked against the config before anything is written
    (:func:`bind_run_dir`) and locked for the whole job."""
    for baseline in cfg.eval.baselines:
        if baseline not in BASELINES and not baseline.startswith("timm:"):
            raise UserError(f"unknown baseline '{baseline}' in eval.baselines "
                            f"(valid: {', '.join(BASELINES)}, timm:NAME)"
                            f"{did_you_mean(baseline, BASELINES)}")
    changes = bind_run_dir(cfg, run_dir)
    # read (or download) the data before the run directory exists; a split that cannot be
    # evaluated on fails now, not after pretraining
    get_split(load_splits(cfg.data), cfg.data.train_split, "evaluation")
    with run_lock(run_dir):
        tracker = None
        if D.is_main() or not D.launched_by_torchrun():
            run_dir.mkdir(parents=True, exist_ok=True)
            tracker = _pretrain_tracker(cfg, recipe, run_dir)
        try:
            info = _pretrain(cfg, recipe, run_dir, changes, quiet, tracker or Tracker(None))
        finally:
            if tracker is not None:
                tracker.finish()  # evaluation logs to its own W&B runs, one per protocol
        records = evaluate(cfg, recipe, "run", run_dir, quiet=quiet, pretrain_info=info,
                           suite=suite)
        for baseline in cfg.eval.baselines:
            records += evaluate(cfg, recipe, baseline, None, quiet=quiet, suite=suite)
    board = None
    if D.is_main() and cfg.leaderboard.render:
        board = write_board(cfg.leaderboard.dir, html=True)
    return records, board
