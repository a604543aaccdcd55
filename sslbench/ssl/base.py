"""The method contract.

A method is one file under ``sslbench/ssl/`` (or a plugin file/package): a subclass of
:class:`SSLMethod` decorated with ``@register_method("name")``. It declares

- ``Config``: a dataclass of its hyper-parameters (paper defaults), validated from ``method:``;
- ``families``: the backbone families it supports (``"resnet"``, ``"vit"``);
- ``make_views(images)``: the augmented views of a uint8 batch, made on the training device
  (any number and resolution: multi-crop, masking inputs, rotations, patch pairs);
- ``forward(views, step)``: a dict with ``"loss"`` (scalar) and any extra scalars to log.

and may override the per-step hooks the engine calls in this fixed order each step::

    before_step(step)         # schedules that are not lr/wd: EMA momentum, teacher temperature
    views = make_views(x)     # no grad
    out = forward(views, step)  (autocast; inside DDP when distributed)
    loss.backward()
    after_backward(step)      # e.g. cancel last-layer grads (DINO), per-parameter clipping
    [global clipping] optimizer.step()
    after_step(step)          # EMA teachers, queues, centres

State that must survive a restart (queues, pointers, centres, teachers) lives in modules or
registered buffers, so it is saved with ``state_dict()``. Anything the engine must not train
(teachers, momentum encoders) has ``requires_grad=False``. Gradient isolation (greedy local
learning) is done inside ``forward`` with ``detach``. Evaluation uses ``eval_backbone()`` (the
teacher for DINO).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from torch import Tensor, nn

from ..backbones import Backbone
from ..errors import UserError
from ..registry import Registry


@dataclass(frozen=True)
class DataSpec:
    """What a method needs to know about its input images."""

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]


@dataclass(frozen=True)
class StepInfo:
    step: int  # global optimisation step, 0-based
    total_steps: int
    steps_per_epoch: int

    @property
    def epoch(self) -> int:
        return self.step // max(1, self.steps_per_epoch)

    @property
    def progress(self) -> float:
        return self.step / max(1, self.total_steps)


class SSLMethod(nn.Module):
    """Base class of every SSL method (see the module docstring for the contract)."""

    name: ClassVar[str] = "?"
    families: ClassVar[tuple[str, ...]] = ("resnet", "vit")
    paper: ClassVar[str] = ""
    # Small hyper-parameters (``Config`` field -> value) for conformance tests on tiny backbones,
    # e.g. a narrow decoder; never used for real runs.
    test_overrides: ClassVar[dict[str, Any]] = {}
    # True when the loss depends on a memory filled by earlier steps (e.g. MoCo v2's queue of
    # keys): repeated steps on one fixed batch put copies of its positives among the negatives,
    # so the loss on a fixed batch need not decrease. Conformance tests then skip that check.
    memory_bank_loss: ClassVar[bool] = False

    @dataclass
    class Config:
        pass

    def __init__(self, backbone: Backbone, cfg: Any, data: DataSpec) -> None:
        super().__init__()
        self.backbone = backbone
        self.cfg = cfg
        self.data = data

    # -- construction-time checks ---------------------------------------------------------------
    @classmethod
    def check_backbone(cls, backbone: Backbone) -> None:
        """Raise a UserError when the backbone family is not supported."""
        if backbone.family not in cls.families:
            raise UserError(f"method '{cls.name}' does not support {backbone.family} backbones "
                            f"('{backbone.name}'); use one of: {', '.join(cls.families)} "
                            f"(e.g. {'vit_tiny_patch16_224' if 'vit' in cls.families else 'resnet18'})")

    # -- the contract ---------------------------------------------------------------------------
    def make_views(self, images: Tensor) -> Any:
        raise NotImplementedError

    def forward(self, views: Any, step: StepInfo) -> dict[str, Tensor]:  # type: ignore[override]
        raise NotImplementedError

    def before_step(self, step: StepInfo) -> None:
        pass

    def after_backward(self, step: StepInfo) -> None:
        pass

    def after_step(self, step: StepInfo) -> None:
        pass

    def eval_backbone(self) -> Backbone:
        return self.backbone

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Trainable parameters; no weight decay on biases and other 1-D params (norms)."""
        decay, no_decay = [], []
        for _, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim <= 1 else decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay, "apply_wd": True},
                {"params": no_decay, "weight_decay": 0.0, "apply_wd": False}]


METHODS: Registry[type[SSLMethod]] = Registry("method", entry_point_group="sslbench.methods")


def register_method(name: str):
    """Class decorator registering an :class:`SSLMethod` subclass under ``name``."""

    def deco(cls: type[SSLMethod]) -> type[SSLMethod]:
        if not (isinstance(cls, type) and issubclass(cls, SSLMethod)):
            raise TypeError(f"@register_method('{name}') expects an SSLMethod subclass")
        if not dataclasses.is_dataclass(cls.Config):
            raise TypeError(f"{cls.__name__}.Config must be a dataclass")
        return METHODS.register(name)(cls)

    return deco
