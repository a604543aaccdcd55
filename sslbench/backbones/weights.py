"""Backbone weights on disk: ``backbone.safetensors`` stores the timm weights plus metadata
(timm name, kwargs, small_input) and :func:`load_backbone` rebuilds the model from it.

For ViTs the weights load directly into ``timm.create_model(name, **kwargs)``; for small-input
ResNets call :func:`~sslbench.backbones.adapt_small_input` on the timm model first (the stem conv
has a different shape). :func:`load_weights` reads timm-format weights from other files too.
"""
from __future__ import annotations

import json
from pathlib import Path

import timm
from torch import Tensor

from ..errors import UserError
from .small_input import adapt_small_input
from .timm_backbone import Backbone, family_of


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
    own = bb.model.state_dict()  # a classifier's keys are dropped; a pre-logits norm
    state = {k: v for k, v in state.items()  # under head. (ConvNeXt's head.norm) is kept
             if k in own or not k.startswith(("fc.", "head."))}
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
