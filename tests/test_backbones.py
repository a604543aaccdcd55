"""32 px backbone variants (docs/methods.md#32-px-backbones), pooled features, safetensors
export."""
from __future__ import annotations

import pytest
import timm
import torch
from omegaconf import OmegaConf

from sslbench.backbones import adapt_small_input, create_backbone, load_backbone, save_backbone
from sslbench.config import BackboneConfig
from sslbench.errors import UserError


def cfg(**kw):
    return OmegaConf.structured(BackboneConfig(**kw))


def test_resnet18_small_input_stem_and_feature_map():
    bb = create_backbone(cfg(name="resnet18"), 32)
    conv = bb.model.conv1
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    assert conv.out_channels == 64 and conv.bias is None
    assert isinstance(bb.model.maxpool, torch.nn.Identity)
    fmap = bb.eval().forward_features(torch.randn(2, 3, 32, 32))
    assert fmap.shape == (2, 512, 4, 4)  # layer4 still 4x4 at 32 px (1x1 with the stock stem)
    assert bb(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    assert bb.family == "resnet" and bb.num_features == 512


def test_resnet50_feature_dim():
    bb = create_backbone(cfg(name="resnet50"), 32)
    assert bb.num_features == 2048


def test_vit_tiny_patch4_tokens_and_dynamic_size():
    bb = create_backbone(cfg(name="vit_tiny_patch16_224"), 32).eval()
    assert bb.patch_size == 4 and bb.family == "vit" and bb.num_features == 192
    tokens = bb.forward_features(torch.randn(2, 3, 32, 32))
    assert tokens.shape == (2, 1 + 64, 192)  # cls + 8x8 patches
    assert bb(torch.randn(2, 3, 16, 16)).shape == (2, 192)  # multi-crop size via dynamic_img_size


@pytest.mark.parametrize("name, width", [("vit_small_patch16_224", 384),
                                         ("vit_base_patch16_224", 768)])
def test_vit_widths(name, width):
    assert create_backbone(cfg(name=name), 32).num_features == width


def test_vit_patch_must_divide_image_size():
    with pytest.raises(UserError, match="not divisible by the ViT patch size"):
        create_backbone(cfg(name="test_vit", patch_size=5), 32)


def test_unknown_backbone_suggests_name():
    with pytest.raises(UserError, match="did you mean 'resnet18'"):
        create_backbone(cfg(name="resnet18x"), 32)


def test_safetensors_roundtrip_vit_loads_into_plain_timm(tmp_path):
    bb = create_backbone(cfg(name="test_vit"), 32).eval()
    path = save_backbone(bb, tmp_path / "backbone.safetensors")
    plain = timm.create_model("test_vit", **bb.timm_kwargs).eval()
    from safetensors.torch import load_file

    plain.load_state_dict(load_file(str(path)))
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(plain(x), bb(x))
    torch.testing.assert_close(load_backbone(path).eval()(x), bb(x))


def test_safetensors_roundtrip_small_input_resnet(tmp_path):
    bb = create_backbone(cfg(name="test_resnet"), 32).eval()
    path = save_backbone(bb, tmp_path / "bb.safetensors")
    plain = adapt_small_input(timm.create_model("test_resnet", num_classes=0)).eval()
    from safetensors.torch import load_file

    plain.load_state_dict(load_file(str(path)))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(plain(x), bb(x))
    torch.testing.assert_close(load_backbone(path).eval()(x), bb(x))


def test_convnext_is_a_convnet_and_round_trips_with_its_head_norm(tmp_path):
    """A timm CNN beyond ResNet (ConvNeXt): family "convnet", pooled features through timm's
    own head (global pool + LayerNorm, ``head.norm``), which save / load keep."""
    bb = create_backbone(OmegaConf.structured(BackboneConfig(name="test_convnext")), 32)
    assert bb.family == "convnet"
    torch.nn.init.normal_(bb.model.head.norm.weight)  # not the default: must survive the trip
    x = torch.randn(2, 3, 32, 32)
    bb.eval()
    path = save_backbone(bb, tmp_path / "b.safetensors")
    back = load_backbone(path).eval()
    assert back.family == "convnet"
    torch.testing.assert_close(back(x), bb(x))
    assert bb(x).shape == (2, bb.num_features)
