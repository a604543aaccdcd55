"""Typed run configuration: dataclasses are the single source of truth for defaults.

Recipes (YAML) and ``key=value`` command-line overrides only *override* these defaults; OmegaConf
structured configs reject unknown keys and wrong types, and we turn its errors into one-line
messages that name the nearest valid key or the expected type. Method hyper-parameters live in the
method's own ``Config`` dataclass (looked up through the registry from ``method.name``).
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import UserError, did_you_mean


@dataclass
class BackboneConfig:
    name: str = "resnet18"  # any timm model name (resnet*, vit_*, test_resnet, test_vit, ...)
    small_input: bool = True  # 32 px variants: ResNet 3x3/s1 stem without max-pool; ViT patch 4
    patch_size: Optional[int] = None  # ViT patch size; None = 4 when small_input else the model's
    drop_path_rate: float = 0.0
    checkpoint: Optional[str] = None  # local weights (.safetensors or .pt) to start from
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs


@dataclass
class OODSetConfig:
    """One extra out-of-distribution evaluation set (sslbench/datasets/ood.py)."""
    name: str = "ood_set"  # metrics are reported as <name>_acc
    kind: str = "stl10"  # stl10 | cifar10_1 | cifar10_c | any data source kind
    path: Optional[str] = None
    split: Optional[str] = None  # for generic sources (default test)
    class_map: dict[str, str] = field(default_factory=dict)  # OOD class -> training class
    corruptions: list[str] = field(default_factory=list)  # cifar10_c (empty: all)
    severity: int = 5  # cifar10_c
    required: bool = False  # False: skipped with a note when the path is missing


@dataclass
class DataConfig:
    name: str = "embedded"  # embedded | hf | parquet | imagefolder | cifar10 | cifar100
    path: Optional[str] = None  # hub name or local directory/file for the non-embedded sources
    image_size: int = 32
    train_split: str = "train"
    test_split: str = "test"
    ood_split: Optional[str] = "ood"  # evaluated when the dataset has it
    val_split: Optional[str] = None  # None: carve eval.linear.val_fraction from train
    ood_sets: list[OODSetConfig] = field(default_factory=list)  # extra OOD evaluation sets
    image_key: Optional[str] = None  # HF column names (None: auto-detect)
    label_key: Optional[str] = None
    num_workers: int = 0
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    # embedded benchmark only
    renders_per_train_glyph: int = 4
    renders_per_test_glyph: int = 2


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adamw | lars
    lr: float = 0.3  # base lr, scaled by `lr_scaling` with the global batch size
    lr_scaling: str = "linear"  # linear (lr*B/256) | sqrt (lr*sqrt(B)) | none
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    weight_decay: float = 1e-4
    weight_decay_end: Optional[float] = None  # cosine wd schedule (DINO); None = constant
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    trust_coefficient: float = 0.001  # LARS eta
    clip_grad: Optional[float] = None  # global grad-norm clipping


@dataclass
class TrainConfig:
    batch_size: int = 256  # global batch (split across processes)
    epochs: float = 100.0
    max_steps: Optional[int] = None  # overrides epochs when set
    time_budget_s: Optional[float] = None  # informational; recipes size steps for their budget
    seed: int = 0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    checkpoint_every: int = 200  # steps
    log_every: int = 10
    threads: Optional[int] = None  # torch.set_num_threads on CPU
    sync_bn: bool = True  # SyncBatchNorm under DDP on GPUs (torch has no CPU SyncBN)


@dataclass
class KNNConfig:
    k: int = 200
    temperature: float = 0.1  # CIFAR/InstDisc convention (k=200, T=0.1); DINO uses k=20, T=0.07


@dataclass
class LinearConfig:
    val_fraction: float = 0.1  # the validation split of every protocol that chooses settings
    # inverse regularisation strengths C (sklearn convention), chosen on the validation split
    c_grid: list[float] = field(default_factory=lambda: [10.0 ** e for e in range(-3, 3)])
    max_iter: int = 100
    refit_on_train_and_val: bool = True


@dataclass
class LinearSGDConfig:
    """``linear_sgd``: BN(affine=False) -> Linear on cached frozen features (no augmentation),
    SGD + warmup/cosine, lr chosen on the validation split (sslbench/eval/linear_sgd.py)."""
    lr_grid: list[float] = field(default_factory=lambda: [0.03, 0.1, 0.3, 1.0])  # absolute lrs
    epochs: int = 30
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1
    refit_on_train_and_val: bool = True


@dataclass
class FinetuneConfig:
    """``finetune``: full fine-tuning, MAE recipe sized for 32 px on CPU
    (sslbench/eval/finetune.py documents every deviation from spec §11.3)."""
    steps: int = 150  # optimisation steps per lr of the grid, whatever the label fraction
    batch_size: int = 128
    lr_grid: list[float] = field(default_factory=lambda: [1e-3, 3e-3])  # absolute peak lrs
    optimizer: str = "adamw"  # adamw (MAE) | sgd (momentum 0.9; Kumar et al.)
    weight_decay: float = 0.05  # not on 1-D params, pos_embed, cls_token
    layer_decay: Optional[float] = 0.75  # ViT only (timm param_groups_layer_decay); None = off
    warmup_fraction: float = 0.1
    min_lr: float = 1e-6
    label_smoothing: float = 0.1
    drop_path: float = 0.1
    crop_scale: list[float] = field(default_factory=lambda: [0.3, 1.0])  # RandomResizedCrop
    flip_p: float = 0.0  # digits change identity when mirrored
    head_init_std: float = 2e-5  # trunc_normal (MAE); LP-FT copies the probe's head instead
    bn_eval: bool = False  # BatchNorm layers in eval mode while fine-tuning
    refit_on_train_and_val: bool = False  # False: keep (and test) the best-validation model


@dataclass
class LPFTConfig(FinetuneConfig):
    """``lpft``: the L-BFGS probe (eval.linear c_grid / max_iter, no refit) as head init, then
    the fine-tuning pipeline with BN in eval mode (Kumar et al. 2022). Same lr grid as
    ``finetune``, chosen on validation: the two protocols differ only in head init and BN mode
    (a grid 3x lower left LP-FT at the probe's accuracy in 150 steps)."""
    lr_grid: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    bn_eval: bool = True  # the paper's main variant (lp_then_ft_valmode)


@dataclass
class SupervisedConfig(FinetuneConfig):
    """The ``supervised`` baseline: the backbone trained from random init on the same labelled
    subset by the fine-tuning pipeline, with a from-scratch budget (2x the fine-tuning steps)."""
    steps: int = 300
    lr_grid: list[float] = field(default_factory=lambda: [1e-3, 3e-3])


@dataclass
class EvalConfig:
    protocols: list[str] = field(default_factory=lambda: ["linear", "knn"])
    baselines: list[str] = field(default_factory=lambda: ["raw_pixels", "random_init"])
    seeds: list[int] = field(default_factory=lambda: [0])
    # class-stratified, seeded (per eval seed), nested subsets of the train split, applied to
    # every protocol; the validation split (eval.linear.val_fraction, by group) is carved from it
    label_fractions: list[float] = field(default_factory=lambda: [1.0])
    batch_size: int = 512
    # frozen-feature protocols (linear, linear_sgd, knn) read this layer: null = the final pooled
    # representation; an int = a ResNet stage (0 stem, 1-4) or a ViT block, spatially averaged
    # (Backbone.features_at). Earlier layers often suit rotation / context / greedy better.
    feature_layer: Optional[int] = None
    knn: KNNConfig = field(default_factory=KNNConfig)
    linear: LinearConfig = field(default_factory=LinearConfig)
    linear_sgd: LinearSGDConfig = field(default_factory=LinearSGDConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    lpft: LPFTConfig = field(default_factory=LPFTConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)


@dataclass
class LoggingConfig:
    wandb: bool = True
    project: str = "sslbench"
    entity: Optional[str] = None
    group: Optional[str] = None
    dir: Optional[str] = None  # None: the run directory


@dataclass
class LeaderboardConfig:
    dir: str = "leaderboard"  # results under <dir>/results, board at <dir>/LEADERBOARD.md
    render: bool = True


@dataclass
class RunConfig:
    name: Optional[str] = None
    plugins: list[str] = field(default_factory=list)
    # validated against the method's own Config dataclass (see load_recipe)
    method: Any = field(default_factory=lambda: {"name": "simclr"})
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    leaderboard: LeaderboardConfig = field(default_factory=LeaderboardConfig)


# ----------------------------------------------------------------------------------------------

def _valid_keys(schema: Any, path: list[str]) -> list[str]:
    node = schema
    for p in path:
        if dataclasses.is_dataclass(node):
            f = {x.name: x for x in dataclasses.fields(node)}.get(p)
            if f is None:
                return []
            node = getattr(node, p) if not isinstance(node, type) else f.type
        else:
            return []
    if dataclasses.is_dataclass(node):
        return [f.name for f in dataclasses.fields(node)]
    return []


def _friendly(err: OmegaConfBaseException, schema: Any, where: str) -> UserError:
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    msg = getattr(err, "msg", str(err)).splitlines()[0]
    if isinstance(err, ConfigKeyError) or "not in struct" in msg or "Key '" in msg and "not" in msg:
        parts = str(key).split(".")
        valid = _valid_keys(schema, parts[:-1])
        return UserError(f"{where}: unknown key '{key}'{did_you_mean(parts[-1], valid)}")
    if isinstance(err, ValidationError):
        return UserError(f"{where}: bad value for '{key}': {msg}")
    return UserError(f"{where}: {msg} (key '{key}')")


def _merge(base: DictConfig, other: Any, schema: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise _friendly(e, schema, where) from None


def parse_overrides(overrides: list[str]) -> DictConfig:
    """``["a.b=1", "c=[1,2]"]`` -> nested config; values parsed as YAML scalars/lists."""
    out = OmegaConf.create({})
    for ov in overrides:
        if "=" not in ov:
            raise UserError(f"override '{ov}' is not of the form key=value (e.g. train.epochs=5)")
        key, _, raw = ov.partition("=")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        OmegaConf.update(out, key.strip(), value, force_add=True)
    return out


def load_recipe(path: str | Path | None, overrides: list[str] | None = None,
                base: dict | None = None) -> DictConfig:
    """Load and validate a recipe (or a saved resolved config), then apply overrides.

    Returns a struct-mode DictConfig whose ``method`` node has been validated against the method's
    own ``Config`` dataclass (defaults filled in).
    """
    schema = RunConfig()
    cfg = OmegaConf.structured(RunConfig)
    # The method section is validated separately against the method's own dataclass.
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_struct(cfg.backbone.kwargs, False)  # free-form timm kwargs
    sources: list[tuple[Any, str]] = []
    if base is not None:
        sources.append((OmegaConf.create(base), "config"))
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"recipe not found: {p}; pass a YAML file such as recipes/quickstart.yaml")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: invalid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise UserError(f"{p}: a recipe must be a mapping of sections (method:, backbone:, ...)")
        sources.append((OmegaConf.create(raw), str(p)))
    if overrides:
        sources.append((parse_overrides(overrides), "command line"))

    method_parts: list[tuple[Any, str]] = []
    for src, where in sources:
        src = OmegaConf.to_container(src)
        m = src.pop("method", None)
        if m is not None:
            if not isinstance(m, dict):
                raise UserError(f"{where}: 'method' must be a mapping with at least 'name'")
            method_parts.append((m, where))
        cfg = _merge(cfg, src, schema, where)

    method_dict: dict = {}
    for m, _ in method_parts:
        method_dict.update(m)
    name = method_dict.get("name", "simclr")
    from .ssl import get_method  # late import: plugins may only now be loaded

    for plugin in cfg.plugins:
        from .registry import load_plugin_file
        load_plugin_file(plugin)
    method_cls = get_method(name)
    mschema = OmegaConf.structured(method_cls.Config)
    OmegaConf.set_struct(mschema, True)
    mcfg = mschema
    for m, where in method_parts:
        m = {k: v for k, v in m.items() if k != "name"}
        mcfg = _merge(mcfg, m, method_cls.Config(), f"{where} (method '{name}')")
    OmegaConf.set_struct(cfg, False)
    cfg.method = OmegaConf.merge({"name": name}, mcfg)
    OmegaConf.set_struct(cfg, True)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def content_hash(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:12]
