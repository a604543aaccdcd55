"""Backbones: thin wrappers over ``timm.create_model`` (never forks of timm code).

``create_backbone(cfg)`` returns a :class:`Backbone` whose ``forward`` gives the pooled
representation ``h`` (ResNet: global average pool; ViT: the cls token after the final norm) —
never a projection. 32 px variants (spec §1.1), switched on by ``backbone.small_input``:

- ResNet: first stem conv becomes 3×3 stride 1 (padding 1; 64 channels for the plain stem, the
  first conv of a deep stem keeps its width and only loses its stride) and the max-pool becomes
  Identity, so layer4 still sees 4×4 maps on 32 px input.
- ViT: ``img_size`` = data.image_size, ``patch_size`` 4 (8×8 = 64 tokens at 32 px) and
  ``dynamic_img_size=True`` so multi-crop views of other sizes interpolate the position embedding.

``backbone.safetensors`` stores the timm weights plus metadata (timm name, kwargs, small_input);
:func:`load_backbone` rebuilds the model from it. For ViTs the weights load directly into
``timm.create_model(name, **kwargs)``; for small-input ResNets call :func:`adapt_small_input` on
the timm model first (the stem conv has a different shape).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import timm
from omegaconf import OmegaConf
from torch import Tensor, nn

from ..config import patch_size_problem
from ..errors import UserError, did_you_mean

FAMILIES = ("resnet", "vit")


def family_of(model: nn.Module) -> str:
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, ResNet):
        return "resnet"
    if isinstance(model, VisionTransformer):
        return "vit"
    return "other"


def adapt_small_input(model: nn.Module) -> nn.Module:
    """Turn a timm ResNet into its 32 px variant (3×3 stride-1 stem, no max-pool), in place."""
    conv1 = model.conv1
    if isinstance(conv1, nn.Sequential):  # deep stem (resnet*d, resnet*t): drop the stride only
        first = conv1[0]
        first.stride = (1, 1)
    else:
        model.conv1 = nn.Conv2d(3, conv1.out_channels, kernel_size=3, stride=1, padding=1,
                                bias=False)
    model.maxpool = nn.Identity()
    return model


class Backbone(nn.Module):
    """A timm model with its head removed; ``forward(x)`` returns pooled features ``h`` (B, D)."""

    def __init__(self, model: nn.Module, name: str, timm_kwargs: dict[str, Any],
                 small_input: bool) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.timm_kwargs = timm_kwargs
        self.small_input = small_input
        self.family = family_of(model)
        self.num_features: int = model.num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)  # num_classes=0: forward_head(pre_logits) = pooled h

    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled output: (B, C, H, W) for ResNets, (B, 1 + L, D) tokens for ViTs."""
        return self.model.forward_features(x)

    @property
    def num_layers(self) -> int:
        """Feature layers :meth:`features_at` can read: the stem + 4 stages of a ResNet, the
        blocks of a ViT (timm ``feature_info``)."""
        return len(getattr(self.model, "feature_info", None) or [])

    def features_at(self, x: Tensor, layer: Optional[int]) -> Tensor:
        """(B, C) features of ``layer`` (None: the final pooled ``h`` of :meth:`forward`).

        An intermediate layer is read with timm's ``forward_intermediates`` and averaged over
        space: ResNet index 0 = stem, 1-4 = layer1-4 (GAP of the stage output); ViT index j =
        block j, mean of its patch tokens (no final norm, no cls token). Negative indices count
        from the end."""
        if layer is None:
            return self(x)
        n = self.num_layers
        if not -n <= int(layer) < n:
            raise UserError(f"eval.feature_layer={layer} is out of range for '{self.name}' "
                            f"({n} layers: 0..{n - 1}, or -1..-{n}); or null for the final "
                            f"representation")
        (f,) = self.model.forward_intermediates(x, indices=[int(layer) % n],
                                                intermediates_only=True)
        return f.mean(dim=(2, 3))

    @property
    def patch_size(self) -> Optional[int]:
        pe = getattr(self.model, "patch_embed", None)
        return None if pe is None else int(pe.patch_size[0])

    def metadata(self) -> dict[str, str]:
        return {"timm_name": self.name, "timm_kwargs": json.dumps(self.timm_kwargs),
                "small_input": json.dumps(self.small_input), "family": self.family}


def _timm_kwargs(cfg: Any, image_size: int, family_hint: str) -> dict[str, Any]:
    extra = getattr(cfg, "kwargs", None) or {}
    if OmegaConf.is_config(extra):
        extra = OmegaConf.to_container(extra, resolve=True)
    kwargs: dict[str, Any] = {"num_classes": 0, **extra}
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = float(cfg.drop_path_rate)
    if family_hint == "vit":
        patch = cfg.patch_size or (4 if cfg.small_input else None)
        kwargs.update(img_size=image_size, dynamic_img_size=True)
        if patch:
            problem = patch_size_problem(image_size, patch)
            if problem:
                raise UserError(problem)
            kwargs["patch_size"] = patch
    elif cfg.patch_size is not None:
        raise UserError(f"backbone.patch_size is only for ViTs, not '{cfg.name}'; remove it")
    return kwargs


def _family_hint(name: str) -> str:
    try:
        cls_name = timm.models.get_pretrained_cfg_value(name, "architecture") or name
    except Exception:  # noqa: BLE001 - best effort
        cls_name = name
    base = name.split(".")[0]
    entry = timm.models._registry._model_entrypoints.get(base)  # noqa: SLF001
    module = getattr(entry, "__module__", "") if entry else ""
    if module.endswith("vision_transformer"):
        return "vit"
    if module.endswith(".resnet"):
        return "resnet"
    return "vit" if str(cls_name).startswith("vit") else "other"


def create_backbone(cfg: Any, image_size: int) -> Backbone:
    """Build the backbone of ``cfg`` (a ``BackboneConfig``) for ``image_size`` px inputs."""
    name = cfg.name
    if not timm.is_model(name):
        raise UserError(f"unknown backbone '{name}'"
                        f"{did_you_mean(name, timm.list_models(name[:3] + '*') or timm.list_models())}"
                        f"; use a timm model name (e.g. resnet18, vit_tiny_patch16_224)")
    family = _family_hint(name)
    kwargs = _timm_kwargs(cfg, image_size, family)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise UserError(f"backbone '{name}' rejected its arguments ({e}); check backbone.kwargs "
                        f"/ backbone.patch_size") from None
    if family == "resnet" and cfg.small_input:
        adapt_small_input(model)
    bb = Backbone(model, name, kwargs, bool(cfg.small_input))
    if cfg.checkpoint:
        load_weights(bb, cfg.checkpoint)
    return bb


def save_backbone(bb: Backbone, path: str | Path) -> Path:
    """Write ``bb`` as safetensors with its metadata; equal weights give equal bytes."""
    from safetensors.torch import save

    from ..utils import atomic_write

    state = {k: v.detach().cpu().contiguous() for k, v in bb.model.state_dict().items()}
    data = _canonical_header(save(state, metadata=bb.metadata()))
    return atomic_write(path, lambda p: p.write_bytes(data))


def _canonical_header(data: bytes) -> bytes:
    """safetensors serialises its metadata from a hash map, in an order that changes from one
    call to the next: rewrite the JSON header with the metadata keys sorted (tensor entries keep
    their order; the data section is unchanged, its offsets are relative to its start)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def _corrupt(p: Path, e: Exception, kind: str, fix: str) -> UserError:
    from ..checkpoint import load_reason

    return UserError(f"{p} is corrupt or not a {kind} ({load_reason(e)}); {fix}")


def load_weights(bb: Backbone, path: str | Path,
                 fix: str = "point backbone.checkpoint to a valid weights file") -> None:
    """Load timm-format weights (safetensors, or a torch file loaded with weights_only=True).
    A file that cannot be read raises a one-line :class:`UserError` ending in ``fix``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"backbone checkpoint not found: {p}; fix backbone.checkpoint")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(p))
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - SafetensorError and friends
            raise _corrupt(p, e, "safetensors file", fix) from None
    else:
        from ..checkpoint import torch_load

        try:
            state = torch_load(p)
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001 - zip, pickle and tensor errors
            raise _corrupt(p, e, "weights file", fix) from None
        for key in ("state_dict", "model", "backbone"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{p} is corrupt or not a weights file (not a state dict of tensors); "
                        f"{fix}")
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "head."))}
    missing, unexpected = bb.model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"checkpoint {p} does not match backbone '{bb.name}': "
                        f"{len(missing)} missing keys (e.g. {missing[:2]}), "
                        f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")


def load_backbone(path: str | Path) -> Backbone:
    """Rebuild a :class:`Backbone` from an sslbench ``backbone.safetensors``."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise UserError(f"backbone file not found: {p}")
    fix = (f"delete it and continue the pretraining run ('sslbench pretrain {p.parent}' writes "
           f"it again from the final checkpoint), or restore it")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - SafetensorError
        raise _corrupt(p, e, "safetensors file", fix) from None
    if "timm_name" not in meta:
        raise UserError(f"{p} has no sslbench metadata; load it with timm directly")
    try:
        kwargs = json.loads(meta["timm_kwargs"])
        small = json.loads(meta.get("small_input", "false"))
        model = timm.create_model(meta["timm_name"], pretrained=False, **kwargs)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise _corrupt(p, e, "sslbench backbone file", fix) from None
    if family_of(model) == "resnet" and small:
        adapt_small_input(model)
    bb = Backbone(model, meta["timm_name"], kwargs, small)
    load_weights(bb, p, fix)
    return bb
