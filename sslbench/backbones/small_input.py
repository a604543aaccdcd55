"""32 px ResNets (``backbone.small_input``), as in SimCLR's CIFAR-10 setup (Chen et al., 2020;
docs/methods.md#32-px-backbones).

The first stem conv becomes 3×3 stride 1 (padding 1; 64 channels for the plain stem, the first
conv of a deep stem keeps its width and only loses its stride) and the max-pool becomes
Identity, so layer4 still sees 4×4 maps on 32 px input. (The 32 px ViT is set up by timm
arguments in :mod:`.create`.)
"""
from __future__ import annotations

from torch import nn


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
