"""The :class:`Backbone` wrapper: a timm model whose head is removed (never a fork of timm code).

``forward`` gives the pooled representation ``h`` (ResNet: global average pool; ViT: the cls
token after the final norm) — never a projection.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from torch import Tensor, nn

from ..errors import UserError


def family_of(model: nn.Module) -> str:
    """The timm family of ``model``: ``"resnet"``, ``"vit"``, ``"convnet"`` (another timm
    network with a 2-D feature map and its own pooling: ConvNeXt, EfficientNet, RegNet, ...;
    methods that read only the pooled feature support it) or ``"other"``."""
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, ResNet):
        return "resnet"
    if isinstance(model, VisionTransformer):
        return "vit"
    convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if convolutional and not hasattr(model, "patch_embed"):  # token models have patch_embed
        return "convnet"
    return "other"


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
