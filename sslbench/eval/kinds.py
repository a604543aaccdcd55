"""What one ``evaluate`` call measures (``sslbench eval --backbone``): a pretrained run or a
baseline, and how its records name it.

==============  ===========================  ===================================================
kind            record method / backbone     backbone evaluated
==============  ===========================  ===================================================
run             method.name / backbone.name  the run directory's ``backbone.safetensors``
random_init     random_init / backbone.name  ``backbone``, initialised from ``train.seed``
supervised      supervised / backbone.name   as random_init, fine-tuned with ``eval.supervised``
raw_pixels      raw_pixels / pixels          none: the normalised pixels are the features
timm:NAME       timm:NAME / NAME             timm ``NAME``: timm's weights, or the checkpoint's
==============  ===========================  ===================================================
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig

from ..backbones import Backbone, create_backbone, load_backbone
from ..errors import UserError, did_you_mean
from ..identity import BASELINES  # record names of the baselines (and timm:NAME)
from ..utils import seed_everything
from .features import file_hash
from .protocol import Protocol, get_protocol

_SPELLINGS = ("run", "random", "pixels", "supervised", "timm:NAME")  # as the CLI takes them


@dataclass
class Subject:
    """The backbone one ``evaluate`` call measures, and what its records say about it."""
    kind: str
    backbone: Optional[Backbone] = None  # None: raw pixels
    cache: Optional[tuple[Path, str]] = None  # (directory, key) of the frozen-feature cache
    pretrain: Optional[dict[str, Any]] = None  # the records' ``pretrain`` field

    @property
    def family(self) -> str:
        if self.kind == "raw_pixels":
            return "pixels"
        return self.backbone.family if self.backbone is not None else "other"


Build = Callable[[DictConfig, str, Optional[Path], Optional[dict]], Subject]


@dataclass(frozen=True)
class Kind:
    """One row of the table: how to build the subject, what records name it, whether there is
    a backbone (to fine-tune), and the protocols it runs whatever was asked (None: those)."""
    build: Build
    names: Callable[[DictConfig, str], tuple[str, str]] = \
        lambda cfg, kind: (kind, cfg.backbone.name)
    has_backbone: bool = True
    protocols: Optional[tuple[str, ...]] = None


def _run(cfg: DictConfig, kind: str, run_dir: Optional[Path], pretrain_info: Optional[dict]
         ) -> Subject:
    assert run_dir is not None
    weights = run_dir / "backbone.safetensors"
    if not weights.is_file():
        raise UserError(f"{run_dir} has no backbone.safetensors (pretraining not finished?); "
                        f"continue it with: sslbench pretrain {run_dir}")
    backbone = load_backbone(weights)
    return Subject(kind, backbone, (run_dir / "features", f"bb-{file_hash(weights)}"),
                   (pretrain_info or {}).get("pretrain"))


def _fresh(cfg: DictConfig, kind: str, run_dir: Optional[Path], pretrain_info: Optional[dict]
           ) -> Subject:
    seed_everything(cfg.train.seed)
    return Subject(kind, create_backbone(cfg.backbone, cfg.data.image_size))


def _pixels(cfg: DictConfig, kind: str, run_dir: Optional[Path], pretrain_info: Optional[dict]
            ) -> Subject:
    return Subject(kind)


def _timm(cfg: DictConfig, kind: str, run_dir: Optional[Path], pretrain_info: Optional[dict]
          ) -> Subject:
    """``timm:NAME``: timm's ``NAME`` (a tag such as ``resnet18.tv_in1k`` picks the weights)
    with timm's own pretrained weights, read from the local Hugging Face cache and downloaded
    when online; ``backbone.checkpoint=PATH`` overrides them with local weights."""
    name = kind.split(":", 1)[1]
    bcfg = copy.deepcopy(cfg.backbone)
    bcfg.name = name
    backbone = create_backbone(bcfg, cfg.data.image_size)  # loads backbone.checkpoint if set
    if cfg.backbone.checkpoint:
        weights = Path(cfg.backbone.checkpoint)
        return Subject(kind, backbone, pretrain={"checkpoint": weights.name,
                                                 "checkpoint_sha256": file_hash(weights)})
    return Subject(kind, backbone, pretrain=_load_timm_pretrained(kind, backbone))


def _timm_weights_source(kind: str, name: str) -> str:
    """Where timm reads ``name``'s pretrained weights (``hf-hub:ID`` or a URL); UserError when
    timm has none, or when they can only come from a URL, offline, and are not cached."""
    import os

    import torch
    from huggingface_hub import constants
    from timm.models import get_pretrained_cfg

    fix = f"pass backbone.checkpoint=PATH to a .safetensors / .pt state dict of timm's '{name}'"
    pcfg = get_pretrained_cfg(name)
    if pcfg is None or not (pcfg.hf_hub_id or pcfg.url):
        raise UserError(f"--backbone {kind}: timm has no pretrained weights for '{name}'; {fix}")
    if pcfg.hf_hub_id:
        return f"hf-hub:{pcfg.hf_hub_id}"
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(pcfg.url)
    if constants.HF_HUB_OFFLINE and not cached.is_file():  # torch.hub ignores HF_HUB_OFFLINE
        raise UserError(f"--backbone {kind}: timm's pretrained weights ({pcfg.url}) are not "
                        f"cached and HF_HUB_OFFLINE is set; connect once to download them, or "
                        f"{fix}")
    return pcfg.url


def _timm_cached_sha(source: str) -> Optional[str]:
    """The hash of the cached Hub weights file ``source`` was read from (None if unknown)."""
    from huggingface_hub import try_to_load_from_cache

    if not source.startswith("hf-hub:"):
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(source.split(":", 1)[1], filename)
        if isinstance(path, str) and Path(path).is_file():
            return file_hash(path)
    return None


def _load_timm_pretrained(kind: str, backbone: Backbone) -> dict[str, Any]:
    """Load timm's pretrained weights for ``backbone`` (built by :func:`create_backbone`, so
    with sslbench's 32 px variants) through ``timm.create_model(pretrained=True)``; returns the
    records' ``pretrain`` field. One-line UserError when the weights cannot be had or fit."""
    from urllib.error import URLError

    import timm
    from huggingface_hub.utils import HfHubHTTPError, LocalEntryNotFoundError
    from torch import nn

    name = backbone.name
    fix = f"pass backbone.checkpoint=PATH to a .safetensors / .pt state dict of timm's '{name}'"
    if backbone.family == "resnet" and backbone.small_input \
            and not isinstance(backbone.model.conv1, nn.Sequential):
        raise UserError(f"--backbone {kind}: timm's pretrained '{name}' has a 7x7 stride-2 stem "
                        f"that the 32 px stem of backbone.small_input=true cannot use; evaluate "
                        f"it as published with backbone.small_input=false, or {fix}")
    source = _timm_weights_source(kind, name)
    try:
        model = timm.create_model(name, pretrained=True, **backbone.timm_kwargs)
    except (LocalEntryNotFoundError, URLError) as e:
        raise UserError(f"--backbone {kind}: timm's pretrained weights ({source}) are not in the "
                        f"local cache and could not be downloaded ({type(e).__name__}: offline?);"
                        f" connect once to download them (they stay cached), or {fix}") from None
    except HfHubHTTPError as e:
        raise UserError(f"--backbone {kind}: downloading timm's pretrained weights ({source}) "
                        f"failed ({' '.join(str(e).split())[:200]}); {fix}") from None
    try:
        backbone.model.load_state_dict(model.state_dict())
    except RuntimeError as e:
        raise UserError(f"--backbone {kind}: timm's pretrained weights do not fit the backbone "
                        f"sslbench builds ({' '.join(str(e).split())[:200]}); {fix}") from None
    return {"weights": source, "weights_sha256": _timm_cached_sha(source),
            "timm": timm.__version__}


KINDS: dict[str, Kind] = {
    "run": Kind(_run, lambda cfg, kind: (cfg.method.name, cfg.backbone.name)),
    "random_init": Kind(_fresh),
    # the upper reference: the architecture trained from scratch on the labels by the
    # fine-tuning protocol (with eval.supervised's from-scratch budget)
    "supervised": Kind(_fresh, protocols=("finetune",)),
    "raw_pixels": Kind(_pixels, lambda cfg, kind: (kind, "pixels"), has_backbone=False),
    "timm:": Kind(_timm, lambda cfg, kind: (kind, kind.split(":", 1)[1])),
}


def kind_of(kind: str) -> Kind:
    """The table row of ``kind`` (``timm:NAME`` -> ``timm:``); UserError when unknown."""
    row = KINDS.get("timm:" if kind.startswith("timm:") else kind)
    if row is None:
        raise UserError(f"unknown --backbone '{kind}'{did_you_mean(kind, _SPELLINGS)}")
    return row


def record_names(cfg: DictConfig, kind: str) -> tuple[str, str]:
    """(method, backbone) written into the records of ``kind``."""
    return kind_of(kind).names(cfg, kind)


def feature_layer(cfg: DictConfig, kind: str) -> Optional[int]:
    """The layer the frozen-feature protocols read (None: the final representation)."""
    return None if kind == "raw_pixels" else cfg.eval.feature_layer


def build_subject(cfg: DictConfig, kind: str, run_dir: Optional[Path] = None,
                  pretrain_info: Optional[dict] = None) -> Subject:
    """Load or create the backbone of ``kind`` (seeding the global RNG for a fresh one)."""
    return kind_of(kind).build(cfg, kind, run_dir, pretrain_info)


def protocols_for(kind: str, asked: list[str], layer: Optional[int]) -> list[Protocol]:
    """The protocols ``evaluate`` runs for ``kind``: the kind's own when it fixes them (the
    ``supervised`` baseline is the fine-tuning protocol whatever was asked); none that trains
    the backbone when there is none; none that is skipped with a feature layer when one is set."""
    row = kind_of(kind)
    protocols = [get_protocol(p) for p in (row.protocols or asked)]
    return [p for p in protocols if (row.has_backbone or not p.needs_backbone)
            and not (layer is not None and p.skip_with_feature_layer)]


def skip_notes(kind: str, asked: list[str], layer: Optional[int]) -> list[str]:
    """One line per reason an asked protocol is skipped for ``kind``."""
    protocols = [get_protocol(p) for p in asked]
    notes = []
    no_backbone = [p.name for p in protocols if p.needs_backbone]
    if not kind_of(kind).has_backbone and no_backbone:
        notes.append(f"note: {', '.join(no_backbone)} skipped for {kind} (no backbone to "
                     f"fine-tune)")
    if layer is not None:
        notes += [f"note: {p.name} skipped with eval.feature_layer={layer} "
                  f"({p.skip_with_feature_layer}; run it with feature_layer null)"
                  for p in protocols if p.skip_with_feature_layer]
    return notes
