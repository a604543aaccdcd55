"""The method contract.

A method is one file under ``sslbench/ssl/`` (or a plugin file/package): a subclass of
:class:`SSLMethod` decorated with ``@register_method("name")``. It declares

- ``Config``: a dataclass of its hyper-parameters (paper defaults), validated from ``method:``;
- ``families``: the backbone families it supports (``"resnet"``, ``"vit"``, ``"convnet"``: any
  other timm CNN read through its own pooling, e.g. ConvNeXt; ``backbones.family_of``);
- ``make_views(images)``: the augmented views of a uint8 batch, made on the training device
  (any number and resolution: multi-crop, masking inputs, rotations, patch pairs), typically
  ``self.normalize(augment(to_float(images)))`` with the helpers of :mod:`sslbench.views`;
  ``self.normalize`` (the dataset's mean / std) is built here for every method;
- ``forward(views, step)``: a dict with ``"loss"`` (scalar) and any extra scalars to log.

and may override the per-step hooks, which :func:`sslbench.engine.train_step` (the one training
step of the engine, the conformance kit and the tests) calls in this fixed order::

    before_step(step)           # schedules that are not lr/wd: EMA momentum, teacher temperature
    views = make_views(x)       # no grad
    out = forward(views, step)  # autocast; inside DDP when distributed
    loss.backward()
    after_backward(step)        # e.g. cancel last-layer grads (DINO), per-parameter clipping
    [global clipping] optimizer.step()
    after_step(step)            # updates that read the stepped weights: DINO's teacher EMA

Where the state updates are. ``after_step`` holds the updates that must see the weights this
step's optimizer step produced: DINO's teacher EMA (the official loop updates the teacher after
``optimizer.step()``). The others stay in ``forward``, where the official code has them and where
moving them would change the arithmetic or split one operation across two hooks:

- MoCo v2 / v3 EMA-update the key (momentum) encoder inside ``forward``, *before* the keys are
  computed from it, with the query weights as they are before this step's optimizer step
  (official ``builder.py``: the momentum update, then ``k = encoder_k(im_k)``). Doing it in the
  previous step's ``after_step`` instead is not the same computation: step 0 would lose its
  update (``m·θ + (1 − m)·θ`` is not bit-exactly ``θ``), a scheduled momentum would be read one
  step early, and the last step would add an update to the saved key encoder.
- MoCo v2 enqueues this step's keys at the end of ``forward``, after the logits used a copy of
  the queue; DINO updates its centre right after the loss used the previous centre (official
  ``DINOLoss.forward``). Both use tensors made in ``forward``; nothing reads the queue or the
  centre before the next forward, so ``after_step`` would change no number, only carry those
  tensors from one hook to the other.

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
from ..views import Normalize


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
        self.normalize = Normalize(data.mean, data.std)  # images -> (x - mean) / std

    # -- construction-time checks ---------------------------------------------------------------
    @classmethod
    def check_backbone(cls, backbone: Backbone) -> None:
        """Raise a UserError when the backbone family is not supported."""
        if backbone.family not in cls.families:
            example = "vit_tiny_patch16_224" if "vit" in cls.families else "resnet18"
            raise UserError(f"method '{cls.name}' does not support {backbone.family} backbones "
                            f"('{backbone.name}'); use one of: {', '.join(cls.families)} "
                            f"(e.g. {example})")

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
