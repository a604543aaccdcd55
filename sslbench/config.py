"""Typed run configuration: dataclasses are the single source of truth for defaults.

Recipes (YAML) and ``key=value`` command-line overrides only *override* these defaults; OmegaConf
structured configs reject unknown keys and wrong types, and we turn its errors into one-line
messages that name the nearest valid key or the expected type. Method hyper-parameters live in the
method's own ``Config`` dataclass (looked up through the registry from ``method.name``).

Each field's allowed values (its domain) are declared next to it with :func:`checked`
(``batch_size: int = checked(POS_INT, 256)``); :func:`sslbench.recipe.load_recipe` checks every
value of the merged config, and of the method's merged ``Config``, before anything else runs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import UserError, did_you_mean
from .identity import BASELINES
from .registry import published


# -- where things go (every default directory name has its home here) -------------------------
RUNS_DIR = "runs"  # run directories: runs/<run-id>, suite cells runs/<suite>/<cell>
BOARD_DIR = "leaderboard"  # the committed board: changes only through `leaderboard submit`
LOCAL_BOARD_DIR = f"{RUNS_DIR}/leaderboard"  # where run / eval / benchmark write by default
# named datasets (data.download) land in <DATA_CACHE_DIR>/<data.name> when data.path is unset
DATA_CACHE_DIR = "~/.cache/sslbench"


# -- value domains -------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    """A value as a recipe or the command line spells it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    text = str(value)
    return text if text.isprintable() else repr(text)  # keep the message on one line


class Rule:
    """A field's domain. ``problem(value)`` is None when the value is allowed, else a (possibly
    empty) hint appended to the message; ``text`` completes "<key>=<value> must be ...";
    ``null`` (when set) allows None and says what None means."""

    text = "valid"

    def __init__(self, null: Optional[str] = None) -> None:
        self.null = null

    def describe(self) -> str:
        return self.text + (f" (or null {self.null})" if self.null else "")

    def problem(self, value: Any) -> Optional[str]:
        if value is None:
            return None if self.null else ""
        return self.check(value)

    def check(self, value: Any) -> Optional[str]:
        raise NotImplementedError

    def or_null(self, why: str) -> "Rule":
        """The same rule, also allowing null; ``why`` says what null means ("to use ...")."""
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__, null=why)
        return other


class Num(Rule):
    """A finite number in an interval; ``integer`` also requires an int."""

    def __init__(self, lo: Optional[float] = None, hi: Optional[float] = None, *,
                 lo_open: bool = False, hi_open: bool = False, integer: bool = False,
                 text: Optional[str] = None, null: Optional[str] = None) -> None:
        super().__init__(null)
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.integer = integer
        if text is None:
            what = "an integer" if integer else "a number"
            if hi is None and lo == 0:
                text = (("a positive " if lo_open else "a non-negative ")
                        + ("integer" if integer else "number"))
            elif hi is None and lo is not None:
                text = f"{what} {'>' if lo_open else '>='} {_fmt(lo)}"
            else:
                text = (f"{what} in {'(' if lo_open else '['}{_fmt(lo)}, "
                        f"{_fmt(hi)}{')' if hi_open else ']'}")
        self.text = text

    def check(self, value: Any) -> Optional[str]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return ""
        if self.integer and not isinstance(value, int):
            return ""
        if not math.isfinite(value):
            return ""
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return ""
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return ""
        return None


class OneOf(Rule):
    """A closed set of names (``choices`` may be a callable, read when checking, so that the
    set has one home elsewhere); names starting with one of ``prefixes`` (e.g. ``timm:``)
    followed by something are allowed too."""

    def __init__(self, choices: Union[Iterable[str], Callable[[], Iterable[str]]], *,
                 prefixes: tuple[str, ...] = (), null: Optional[str] = None) -> None:
        super().__init__(null)
        self._choices, self.prefixes = choices, prefixes

    def choices(self) -> list[str]:
        c = self._choices() if callable(self._choices) else self._choices
        return list(c)

    @property
    def text(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join([*self.choices(), *(f"{p}NAME" for p in self.prefixes)])

    def check(self, value: Any) -> Optional[str]:
        if not isinstance(value, str):
            return ""
        if value in self.choices():
            return None
        if any(value.startswith(p) and len(value) > len(p) for p in self.prefixes):
            return None
        hint = did_you_mean(value, self.choices())
        return hint if "did you mean" in hint else ""


class ListOf(Rule):
    """A list whose every item meets ``item``; non-empty unless ``empty_ok``; exactly
    ``length`` items when given."""

    def __init__(self, item: Rule, *, empty_ok: bool = False, length: Optional[int] = None,
                 text: Optional[str] = None, null: Optional[str] = None) -> None:
        super().__init__(null)
        self.item, self.empty_ok, self.length = item, empty_ok, length
        self._text = text

    @property
    def text(self) -> str:  # type: ignore[override]
        if self._text:
            return self._text
        size = (f"a list of {self.length} items" if self.length is not None
                else "a list" if self.empty_ok else "a non-empty list")
        return f"{size}, each {self.item.describe()}"

    def check(self, value: Any) -> Optional[str]:
        if not isinstance(value, (list, tuple)):
            return ""
        if (not value and not self.empty_ok) or (self.length is not None
                                                 and len(value) != self.length):
            return ""
        for v in value:
            p = self.item.problem(v)
            if p is not None:
                return f"; got {_fmt(v)}{p}"
        return None


class CropScale(Rule):
    """RandomResizedCrop area fractions ``[a, b]`` with ``0 < a <= b <= 1``."""

    text = "[a, b] with 0 < a <= b <= 1 (RandomResizedCrop area fractions)"

    def check(self, value: Any) -> Optional[str]:
        ok = (isinstance(value, (list, tuple)) and len(value) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
              and 0 < value[0] <= value[1] <= 1)
        return None if ok else ""


class Jitter(Rule):
    """Colour-jitter strengths ``[brightness, contrast, saturation, hue]``."""

    text = "[brightness, contrast, saturation, hue], each >= 0 and hue <= 0.5"

    def check(self, value: Any) -> Optional[str]:
        ok = (isinstance(value, (list, tuple)) and len(value) == 4
              and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v) and v >= 0 for v in value)
              and value[3] <= 0.5)
        return None if ok else ""


# the common domains
POS_INT = Num(0, lo_open=True, integer=True)  # counts, sizes, dimensions, steps
NONNEG_INT = Num(0, integer=True)
POSITIVE = Num(0, lo_open=True)  # learning rates, temperatures
NONNEG = Num(0)  # weight decays, minimum learning rates, strengths
PROB = Num(0, 1)  # probabilities, fractions
OPEN_UNIT = Num(0, 1, lo_open=True, hi_open=True)
FRACTION = Num(0, 1, lo_open=True)  # (0, 1]
BELOW_ONE = Num(0, 1, hi_open=True)  # drop rates, label smoothing: [0, 1)
MOMENTUM = BELOW_ONE  # optimiser momentum, Adam betas
EMA = Num(0, 1)  # EMA / momentum-encoder coefficients: 1 freezes the average
LR_GRID = ListOf(POSITIVE)
CROP_SCALE = CropScale()
JITTER = Jitter()


def checked(rule: Rule, default: Any = dataclasses.MISSING, *,
            factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose values :func:`sslbench.recipe.load_recipe` checks against
    ``rule``."""
    return field(default=default, default_factory=factory, metadata={"domain": rule})


def domain_rules(cls: type) -> dict[str, Rule]:
    """Field name -> Rule of a dataclass, inherited rules included (a subclass that redefines a
    field's default keeps the base class's rule unless it declares its own)."""
    rules: dict[str, Rule] = {}
    for klass in reversed(cls.__mro__):
        for f in getattr(klass, "__dataclass_fields__", {}).values():
            if "domain" in f.metadata:
                rules[f.name] = f.metadata["domain"]
    return rules


def patch_size_problem(image_size: int, patch: int) -> Optional[str]:
    """Why a ViT patch size does not fit the image size (None when it does)."""
    if image_size % patch:
        return (f"image size {image_size} is not divisible by the ViT patch size {patch}; set "
                f"backbone.patch_size to a divisor of data.image_size (e.g. 4 for 32 px)")
    return None


def _published(kind: str) -> Callable[[], tuple[str, ...]]:
    """The names of ``kind`` as published by their owner (``registry.publish``), read when a
    value is checked: ``source`` (datasets), ``ood_kind`` (datasets.ood), ``optimizer`` (optim),
    ``protocol`` (eval.protocol)."""
    return lambda: published(kind)


_SOURCES, _OOD_KINDS = _published("source"), _published("ood_kind")
_OPTIMIZERS, _PROTOCOLS = _published("optimizer"), _published("protocol")


@dataclass
class BackboneConfig:
    name: str = "resnet18"  # any timm model name (resnet*, vit_*, test_resnet, test_vit, ...)
    small_input: bool = True  # 32 px variants: ResNet 3x3/s1 stem without max-pool; ViT patch 4
    # ViT patch size; None = 4 when small_input else the model's
    patch_size: Optional[int] = checked(POS_INT.or_null("for the default"), None)
    drop_path_rate: float = checked(BELOW_ONE, 0.0)
    checkpoint: Optional[str] = None  # local weights (.safetensors or .pt) to start from
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs


@dataclass
class OODSetConfig:
    """One extra out-of-distribution evaluation set (sslbench/datasets/ood.py)."""
    name: str = "ood_set"  # metrics are reported as <name>_acc
    kind: str = checked(OneOf(_OOD_KINDS), "stl10")  # stl10 | cifar10_1 | cifar10_c | a source
    path: Optional[str] = None
    split: Optional[str] = None  # for generic sources (default test)
    class_map: dict[str, str] = field(default_factory=dict)  # OOD class -> training class
    corruptions: list[str] = field(default_factory=list)  # cifar10_c (empty: all)
    severity: int = checked(Num(1, 5, integer=True), 5)  # cifar10_c
    required: bool = False  # False: skipped with a note when the path is missing


@dataclass
class DataConfig:
    # embedded | cifar10 | cifar100 | stl10 | imagefolder | hf | parquet | hf_imagefolder
    # (datasets.SOURCES)
    name: str = checked(OneOf(_SOURCES), "embedded")
    path: Optional[str] = None  # hub name or local directory/file for the non-embedded sources
    # cifar10 / cifar100 / stl10: fetch (torchvision's download + MD5 check) into data.path, or
    # <DATA_CACHE_DIR>/<name> when data.path is unset, if the data is not there yet
    download: bool = True
    image_size: int = checked(POS_INT, 32)
    train_split: str = "train"  # the labelled split the probes train on
    # the split pretraining reads (null: train_split), e.g. STL-10's 100k `unlabeled`
    pretrain_split: Optional[str] = None
    test_split: str = "test"
    ood_split: Optional[str] = "ood"  # evaluated when the dataset has it
    ood_sets: list[OODSetConfig] = field(default_factory=list)  # extra OOD evaluation sets
    image_key: Optional[str] = None  # HF column names (None: auto-detect)
    label_key: Optional[str] = None
    num_workers: int = checked(NONNEG_INT, 0)
    mean: list[float] = checked(ListOf(Num()), factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = checked(ListOf(POSITIVE), factory=lambda: [0.25, 0.25, 0.25])
    # embedded benchmark only
    # the embedded benchmark: half the glyphs held out, 12 renders of each for test (and OOD),
    # so that a test accuracy's bootstrap SE over glyphs is below 1 point (docs/findings.md)
    renders_per_train_glyph: int = checked(POS_INT, 6)
    renders_per_test_glyph: int = checked(POS_INT, 12)
    test_glyph_fraction: float = checked(OPEN_UNIT, 0.5)


@dataclass
class OptimConfig:
    name: str = checked(OneOf(_OPTIMIZERS), "sgd")  # sgd | adamw | lars (optim.OPTIMIZERS)
    lr: float = checked(POSITIVE, 0.3)  # base lr, scaled by `lr_scaling` with the global batch
    # linear (lr*B/256) | sqrt (lr*sqrt(B)) | none
    lr_scaling: str = checked(OneOf(("linear", "sqrt", "none")), "linear")
    min_lr: float = checked(NONNEG, 0.0)
    warmup_epochs: float = checked(NONNEG, 0.0)
    weight_decay: float = checked(NONNEG, 1e-4)
    # cosine wd schedule (DINO); None = constant
    weight_decay_end: Optional[float] = checked(NONNEG.or_null("for a constant wd"), None)
    momentum: float = checked(MOMENTUM, 0.9)
    betas: list[float] = checked(ListOf(MOMENTUM, length=2), factory=lambda: [0.9, 0.999])
    trust_coefficient: float = checked(POSITIVE, 0.001)  # LARS eta
    clip_lr: bool = False  # LARS: cap each layer's rate at the global lr (LARC; solo-learn)
    # global grad-norm clipping; null or 0 = none
    clip_grad: Optional[float] = checked(NONNEG.or_null("for no clipping"), None)


@dataclass
class TrainConfig:
    batch_size: int = checked(POS_INT, 256)  # global batch (split across processes)
    epochs: float = checked(POSITIVE, 100.0)
    # overrides epochs when set
    max_steps: Optional[int] = checked(POS_INT.or_null("to use train.epochs"), None)
    # informational; recipes size steps for their budget
    seed: int = checked(NONNEG_INT, 0)
    # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    precision: str = checked(OneOf(("auto", "fp32", "bf16", "fp16")), "auto")
    device: str = checked(OneOf(("auto", "cpu", "cuda")), "auto")
    checkpoint_every: int = checked(POS_INT, 200)  # steps
    log_every: int = checked(POS_INT, 10)
    # torch.set_num_threads on CPU
    threads: Optional[int] = checked(POS_INT.or_null("for torch's default"), None)
    sync_bn: bool = True  # SyncBatchNorm under DDP on GPUs (torch has no CPU SyncBN)
    # a split held in memory is copied to the training device once (uint8) and indexed there:
    # auto = when it takes at most a quarter of the device's free memory; never = DataLoader
    data_on_device: str = checked(OneOf(("auto", "always", "never")), "auto")
    # conv backbones in channels_last (NHWC) memory layout; auto = for ResNets and convnets
    channels_last: str = checked(OneOf(("auto", "always", "never")), "auto")
    # torch.compile the backbone and the method's heads (first steps are slow while it compiles)
    compile: bool = False


@dataclass
class KNNConfig:
    k: int = checked(POS_INT, 200)
    # CIFAR/InstDisc convention (k=200, T=0.1); DINO uses k=20, T=0.07
    temperature: float = checked(POSITIVE, 0.1)


@dataclass
class LinearConfig:
    # the validation split of every protocol that chooses settings
    val_fraction: float = checked(OPEN_UNIT, 0.1)
    # inverse regularisation strengths C (sklearn convention), chosen on the validation split
    c_grid: list[float] = checked(ListOf(POSITIVE),
                                  factory=lambda: [10.0 ** e for e in range(-3, 3)])
    # L-BFGS iterations per fit (each C, warm-started along the path, and the refit); a fit that
    # stops here unconverged is flagged in its record (sslbench/eval/linear.py: convergence)
    max_iter: int = checked(POS_INT, 1000)
    refit_on_train_and_val: bool = True
    # while the chosen C is an end of the searched values and beats its neighbour on
    # validation, fit up to this many more values beyond that end (the grid's ratio there):
    # a probe tuned at the edge of its grid under-reports (sslbench/eval/linear.py)
    extend_grid: int = checked(NONNEG_INT, 2)


@dataclass
class LinearSGDConfig:
    """``linear_sgd``: BN(affine=False) -> Linear on cached frozen features (no augmentation),
    SGD + warmup/cosine, lr chosen on the validation split (sslbench/eval/linear_sgd.py)."""
    lr_grid: list[float] = checked(LR_GRID, factory=lambda: [0.03, 0.1, 0.3, 1.0])  # absolute
    epochs: int = checked(POS_INT, 30)
    batch_size: int = checked(POS_INT, 256)
    momentum: float = checked(MOMENTUM, 0.9)
    weight_decay: float = checked(NONNEG, 0.0)
    warmup_fraction: float = checked(PROB, 0.1)
    refit_on_train_and_val: bool = True


@dataclass
class FinetuneConfig:
    """``finetune``: full fine-tuning, MAE recipe sized for 32 px on CPU
    (sslbench/eval/finetune.py documents every deviation from docs/methods.md#fine-tuning)."""
    # optimisation steps per lr of the grid, whatever the label fraction
    steps: int = checked(POS_INT, 150)
    batch_size: int = checked(POS_INT, 128)
    lr_grid: list[float] = checked(LR_GRID, factory=lambda: [1e-3, 3e-3])  # absolute peak lrs
    # adamw (MAE) | sgd (momentum 0.9; Kumar et al.)
    optimizer: str = checked(OneOf(("adamw", "sgd")), "adamw")
    weight_decay: float = checked(NONNEG, 0.05)  # not on 1-D params, pos_embed, cls_token
    # ViT only (timm param_groups_layer_decay); None = off
    layer_decay: Optional[float] = checked(FRACTION.or_null("for no layer decay"), 0.75)
    warmup_fraction: float = checked(PROB, 0.1)
    min_lr: float = checked(NONNEG, 1e-6)
    label_smoothing: float = checked(BELOW_ONE, 0.1)
    drop_path: float = checked(BELOW_ONE, 0.1)
    crop_scale: list[float] = checked(CROP_SCALE, factory=lambda: [0.3, 1.0])  # RRC scale
    flip_p: float = checked(PROB, 0.0)  # digits change identity when mirrored
    # trunc_normal (MAE); LP-FT copies the probe's head instead
    head_init_std: float = checked(NONNEG, 2e-5)
    bn_eval: bool = False  # BatchNorm layers in eval mode while fine-tuning
    refit_on_train_and_val: bool = False  # False: keep (and test) the best-validation model


@dataclass
class LPFTConfig(FinetuneConfig):
    """``lpft``: the L-BFGS probe (eval.linear c_grid / max_iter, no refit) as head init, then
    the fine-tuning pipeline with BN in eval mode (Kumar et al. 2022). Same lr grid as
    ``finetune``, chosen on validation: the two protocols differ only in head init and BN mode
    (a grid 3x lower left LP-FT at the probe's accuracy in 150 steps)."""
    bn_eval: bool = True  # the paper's main variant (lp_then_ft_valmode)


@dataclass
class SupervisedConfig(FinetuneConfig):
    """The ``supervised`` baseline: the backbone trained from random init on the same labelled
    subset by the fine-tuning pipeline, with a from-scratch budget (2x the fine-tuning steps)."""
    steps: int = checked(POS_INT, 300)


@dataclass
class EvalConfig:
    protocols: list[str] = checked(ListOf(OneOf(_PROTOCOLS)),
                                   factory=lambda: ["linear", "knn"])
    baselines: list[str] = checked(ListOf(OneOf(BASELINES, prefixes=("timm:",)), empty_ok=True),
                                   factory=lambda: ["raw_pixels", "random_init"])
    seeds: list[int] = checked(ListOf(NONNEG_INT), factory=lambda: [0])
    # class-stratified, seeded (per eval seed), nested subsets of the train split, applied to
    # every protocol; the validation split (eval.linear.val_fraction, by group) is carved from it
    label_fractions: list[float] = checked(ListOf(FRACTION), factory=lambda: [1.0])
    batch_size: int = checked(POS_INT, 512)
    # frozen-feature protocols (linear, linear_sgd, knn) read this layer: null = the final pooled
    # representation; an int = a ResNet stage (0 stem, 1-4) or a ViT block, spatially averaged
    # (Backbone.features_at). Earlier layers often suit rotation / context / greedy better.
    feature_layer: Optional[int] = checked(NONNEG_INT.or_null("for the final features"), None)
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
    # results under <dir>/results, board at <dir>/LEADERBOARD.md. The default is local and
    # git-ignored; the committed board (leaderboard/) changes only through
    # `sslbench leaderboard submit` or an explicit leaderboard.dir=leaderboard.
    dir: str = LOCAL_BOARD_DIR
    render: bool = True


@dataclass
class RunConfig:
    name: Optional[str] = None
    plugins: list[str] = field(default_factory=list)
    # validated against the method's own Config dataclass (see sslbench.recipe.load_recipe)
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


def _friendly(err: OmegaConfBaseException, schema: Any, where: str,
              key_prefix: str = "") -> UserError:
    """One line for a merge error; keys are shown under ``key_prefix`` (``method.`` for a
    method's own config, which is merged on its own)."""
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    msg = getattr(err, "msg", str(err)).splitlines()[0]
    if isinstance(err, ConfigKeyError) or "not in struct" in msg or "Key '" in msg and "not" in msg:
        parts = str(key).split(".")
        # matched on the last part, suggested as the full dotted key (to paste back as key=value)
        hint = did_you_mean(parts[-1], _valid_keys(schema, parts[:-1]),
                            prefix=key_prefix + ".".join(parts[:-1] + [""]))
        return UserError(f"{where}: unknown key '{key_prefix}{key}'{hint}")
    if isinstance(err, ValidationError):
        return UserError(f"{where}: bad value for '{key_prefix}{key}': {msg}")
    return UserError(f"{where}: {msg} (key '{key_prefix}{key}')")


def merge_source(base: DictConfig, other: Any, schema: Any, where: str,
                 key_prefix: str = "") -> DictConfig:
    try:
        return OmegaConf.merge(base, other)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise _friendly(e, schema, where, key_prefix) from None


def domain_problems(node: Any, cls: type, prefix: str = ""
                    ) -> Iterator[tuple[str, Any, Rule, str, dataclasses.Field]]:
    """``(key, value, rule, hint, field)`` for each value of ``node`` (a config of dataclass
    ``cls``) outside its field's domain; nested dataclasses and lists of them are walked too."""
    rules = domain_rules(cls)
    for f in dataclasses.fields(cls):
        if f.name not in node:
            continue
        value = node[f.name]
        key = f"{prefix}{f.name}"
        rule = rules.get(f.name)
        if rule is not None:
            plain = (OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value)
                     else value)
            hint = rule.problem(plain)
            if hint is not None:
                yield key, plain, rule, hint, f
                continue
        items = ([(f"{key}.", value)] if isinstance(value, DictConfig)
                 else [(f"{key}[{i}].", v) for i, v in enumerate(value)]
                 if isinstance(value, ListConfig) else [])
        for sub_prefix, sub in items:
            t = OmegaConf.get_type(sub) if isinstance(sub, DictConfig) else None
            if t is not None and dataclasses.is_dataclass(t):
                yield from domain_problems(sub, t, sub_prefix)


def _domain_message(where: str, key: str, value: Any, rule: Rule, hint: str,
                    f: dataclasses.Field) -> str:
    msg = f"{where}: {key}={_fmt(value)} must be {rule.describe()}{hint}"
    if hint or isinstance(rule, OneOf):
        return msg  # the hint or the listed names already say what to write
    default = (f.default if f.default is not dataclasses.MISSING
               else f.default_factory() if f.default_factory is not dataclasses.MISSING
               else None)
    if default is not None and rule.problem(default) is None:
        msg += f"; e.g. {key}={_fmt(default)}"
    return msg


def _origin(key: str, sources: list[tuple[dict, str]], fallback: str) -> str:
    """The last source (recipe file, command line, ...) that sets ``key``, else ``fallback``."""
    parts = key.split("[")[0].split(".")
    for src, where in reversed(sources):
        node: Any = src
        for p in parts:
            if not isinstance(node, dict) or p not in node:
                break
            node = node[p]
        else:
            return where
    return fallback


def check_domains(cfg: DictConfig, method_cfg: DictConfig, method_cls: type,
                  sources: list[tuple[dict, str]], fallback: str) -> None:
    """Raise a one-line UserError for the first value outside its domain: the run config's
    fields, the method's ``Config`` fields, then cross-field rules."""
    def where(key: str) -> str:
        return _origin(key, sources, fallback)

    problems = [*domain_problems(cfg, RunConfig),
                *domain_problems(method_cfg, method_cls.Config, "method.")]
    if problems:
        key, value, rule, hint, f = problems[0]
        raise UserError(_domain_message(where(key), key, value, rule, hint, f))
    patch = cfg.backbone.patch_size
    if patch is not None:
        problem = patch_size_problem(cfg.data.image_size, patch)
        if problem:
            raise UserError(f"{where('backbone.patch_size')}: backbone.patch_size={patch}: "
                            f"{problem}")


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


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def content_hash(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()[:12]
