"""The protocol registry and the context every protocol is run with.

A protocol is one module ``sslbench/eval/<name>.py`` with one entry point, registered by name::

    @register_protocol("knn", frozen_features=True)
    def knn(ctx: EvalContext) -> tuple[dict[str, float], dict[str, Any]]:
        ...  # returns (metrics, protocol settings)

``sslbench.run.evaluate`` runs it once per (label fraction, eval seed); what the protocol needs
is declared on the registration (:class:`Protocol`). Every module of this package is imported
before the registry is read, so a new protocol module registers itself; third-party protocols
register through the entry-point group ``sslbench.protocols`` or a recipe's ``plugins:`` file.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig
from torch import Tensor

from ..backbones import Backbone
from ..datasets import ImageDataset
from ..errors import UserError
from ..registry import Registry, publish

Result = tuple[dict[str, float], dict[str, Any]]  # (metrics, protocol settings)
Log = Optional[Callable[[str], None]]
Features = dict[str, tuple[Tensor, Tensor]]  # split -> (features, labels)


@dataclass(frozen=True)
class FrozenFeatures:
    """Frozen features (cached on disk) of the whole train split and of every evaluation set."""
    train: tuple[Tensor, Tensor]
    evals: Features


@dataclass
class EvalContext:
    """Everything one protocol run sees: one label fraction and one eval seed.

    ``sub`` is the labelled subset of the train split, ``fit_idx`` / ``val_idx`` its fit and
    validation carve (indices into ``train``; ``sslbench.eval.sampling``). ``frozen`` is set for
    protocols registered with ``frozen_features``; ``backbone`` is None for raw pixels."""
    cfg: DictConfig  # the resolved config
    kind: str  # what is evaluated: "run" or a baseline (sslbench.eval.kinds)
    device: torch.device
    train: ImageDataset  # the whole train split
    sub: Tensor
    fit_idx: Tensor
    val_idx: Tensor
    evals: dict[str, ImageDataset]  # "test", "ood" and the extra OOD sets
    normalize: Callable[[Tensor], Tensor]  # uint8 images -> normalised floats
    backbone: Optional[Backbone]
    eval_seed: int
    frozen: Optional[FrozenFeatures] = None
    log: Log = None
    # evaluation set -> predicted labels, filled by the protocol (sslbench.eval.scoring.score):
    # the record then carries each accuracy's bootstrap standard error (<metric>_se)
    predictions: dict[str, Tensor] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def val_split(self) -> dict[str, Any]:
        """How the validation split was carved (recorded by protocols that choose on it)."""
        return {"fraction": self.cfg.eval.linear.val_fraction,
                "by_group": self.train.groups is not None}

    def features(self, validation: bool = True) -> Features:
        """Frozen features by split: "train" (the fit split) and "val", or, without
        ``validation``, "train" = the whole labelled subset; plus every evaluation set."""
        if self.frozen is None:
            raise RuntimeError("this protocol is not registered with frozen_features=True")
        x, y = self.frozen.train
        if not validation:
            return {"train": (x[self.sub], y[self.sub]), **self.frozen.evals}
        return {"train": (x[self.fit_idx], y[self.fit_idx]),
                "val": (x[self.val_idx], y[self.val_idx]), **self.frozen.evals}


@dataclass(frozen=True)
class Protocol:
    """A registered protocol: its entry point and what it needs.

    ``frozen_features``: reads the cached frozen features (``ctx.frozen``), so its records name
    ``eval.feature_layer``. ``needs_backbone``: trains a copy of the backbone (skipped for raw
    pixels). ``skip_with_feature_layer``: the reason it is skipped when ``eval.feature_layer``
    is set, or None. ``order``: its place in listings and ``--protocol all`` (then by name).
    """
    name: str
    run: Callable[[EvalContext], Result]
    frozen_features: bool = False
    needs_backbone: bool = False
    skip_with_feature_layer: Optional[str] = None
    order: int = 100


PROTOCOLS = Registry[Protocol]("protocol", "sslbench.protocols")
_builtins_loaded = False


def register_protocol(name: str, *, frozen_features: bool = False, needs_backbone: bool = False,
                      skip_with_feature_layer: Optional[str] = None, order: int = 100
                      ) -> Callable[[Callable[[EvalContext], Result]],
                                    Callable[[EvalContext], Result]]:
    """Register the decorated ``fn(ctx) -> (metrics, settings)`` as protocol ``name``."""
    def deco(fn: Callable[[EvalContext], Result]) -> Callable[[EvalContext], Result]:
        where = (fn.__module__, fn.__qualname__)
        if name in PROTOCOLS:  # the same function again (a plugin file loaded twice) is fine
            old = PROTOCOLS.get(name).run
            if (old.__module__, old.__qualname__) != where:
                raise UserError(f"protocol '{name}' is registered twice ({old.__module__} and "
                                f"{fn.__module__}); rename one of them")
        origin = "built-in" if fn.__module__.startswith("sslbench.") else fn.__module__
        PROTOCOLS.register(name, origin)(
            Protocol(name, fn, frozen_features, needs_backbone, skip_with_feature_layer, order))
        return fn

    return deco


def _load_builtins() -> None:
    """Import every module of ``sslbench.eval`` once: each protocol module registers itself."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    package = __name__.rsplit(".", 1)[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{info.name}")


def get_protocol(name: str) -> Protocol:
    _load_builtins()
    return PROTOCOLS.get(name)


def protocol_names() -> tuple[str, ...]:
    """Every registered protocol, in ``order`` (then by name)."""
    _load_builtins()
    return tuple(sorted(PROTOCOLS.names(), key=lambda n: (PROTOCOLS.get(n).order, n)))


publish("protocol", protocol_names)  # config checks eval.protocols against these
