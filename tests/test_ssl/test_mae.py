"""MAE invariants (docs/methods.md#mae; #test-checklist items 12-14)."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import REPO, TINY_DATA, build_tiny_backbone
from sslbench.backbones import load_backbone, save_backbone
from sslbench.recipe import load_recipe
from sslbench.errors import UserError
from sslbench.ssl import METHODS
from sslbench.ssl.base import StepInfo
from sslbench.ssl.mae import (MAE, mae_loss, mae_target, patchify, random_masking,
                              sincos_pos_embed_2d, unpatchify)

METHOD, FAMILY = MAE, "vit"  # the tiny_method fixture (conftest.py) builds these
SMALL = dict(decoder_dim=32, decoder_depth=1, decoder_heads=2)  # CPU-sized decoder for tests


# -- patchify --------------------------------------------------------------------------------------
def test_unpatchify_inverts_patchify():
    x = torch.randn(2, 3, 32, 32)
    p = patchify(x, 4)
    assert p.shape == (2, 64, 48)
    assert torch.equal(unpatchify(p, 4), x)
    rect = torch.randn(2, 3, 16, 24)
    assert torch.equal(unpatchify(patchify(rect, 4), 4, grid=(4, 6)), rect)


def test_patchify_raster_order_and_pqc_flattening():
    x = torch.randn(1, 3, 8, 12)
    p = patchify(x, 4)  # grid 2 x 3
    row, col, i, j, c = 1, 2, 3, 1, 2
    # patch index row*w + col; inside a patch, index (i*p + j)*C + c
    assert p[0, row * 3 + col, (i * 4 + j) * 3 + c] == x[0, c, row * 4 + i, col * 4 + j]


# -- masking ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("length, expected_seq", [(64, 17), (196, 50)])
def test_visible_length_formula(length, expected_seq):
    x = torch.randn(3, length, 8)
    vis, mask, _ = random_masking(x, 0.75)
    assert 1 + vis.shape[1] == expected_seq == 1 + int(length * (1 - 0.75))
    assert torch.equal(mask.sum(1), torch.full((3,), float(length - vis.shape[1])))


def test_encoder_sequence_length_17_at_32px_patch4(tiny_method):
    mae = tiny_method()
    latent, mask, ids_restore, grid = mae.forward_encoder(torch.randn(4, 3, 32, 32), 0.75)
    assert grid == (8, 8)
    assert latent.shape == (4, 17, mae.backbone.num_features)
    assert mask.shape == ids_restore.shape == (4, 64)
    assert torch.equal(mask.sum(1), torch.full((4,), 48.0))  # L - len_keep for every sample


def test_ids_restore_inverts_the_shuffle_and_mask_marks_removed():
    torch.manual_seed(0)
    x = torch.randn(5, 64, 6)
    vis, mask, ids_restore = random_masking(x, 0.75)
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    shuffled = torch.gather(x, 1, ids_shuffle[..., None].expand(-1, -1, 6))
    assert torch.equal(vis, shuffled[:, :16])  # visible = first len_keep of the shuffle
    # the decoder's path: [visible, removed] in shuffled order, gathered with ids_restore
    restored = torch.gather(torch.cat([vis, shuffled[:, 16:]], 1), 1,
                            ids_restore[..., None].expand(-1, -1, 6))
    assert torch.equal(restored, x)
    kept = torch.zeros(5, 64).scatter_(1, ids_shuffle[:, :16], 1.0)
    assert torch.equal(mask, 1.0 - kept)


def test_masks_differ_across_samples_and_follow_the_global_seed():
    x = torch.randn(16, 64, 4)
    torch.manual_seed(3)
    _, mask, _ = random_masking(x, 0.75)
    assert torch.unique(mask, dim=0).shape[0] == 16
    torch.manual_seed(3)
    _, again, _ = random_masking(x, 0.75)
    assert torch.equal(mask, again)


# -- loss and target -------------------------------------------------------------------------------
def test_visible_predictions_do_not_affect_the_loss():
    torch.manual_seed(0)
    target, pred = torch.randn(4, 64, 48), torch.randn(4, 64, 48, requires_grad=True)
    _, mask, _ = random_masking(torch.zeros(4, 64, 1), 0.75)
    loss = mae_loss(pred, target, mask)
    loss.backward()
    visible = mask == 0
    assert torch.count_nonzero(pred.grad[visible]) == 0
    assert torch.count_nonzero(pred.grad[~visible]) > 0
    changed = pred.detach().clone()
    changed[visible] += 100.0
    assert mae_loss(changed, target, mask).item() == loss.item()


def test_perfect_masked_prediction_gives_zero_loss(tiny_method):
    torch.manual_seed(0)
    imgs = torch.randn(4, 3, 32, 32)
    target = mae_target(imgs, 4, norm_pix=True)
    _, mask, _ = random_masking(torch.zeros(4, 64, 1), 0.75)
    pred = torch.where(mask.bool()[..., None], target, torch.randn_like(target))  # junk on visible
    assert mae_loss(pred, target, mask).item() == 0.0
    mae = tiny_method()
    assert mae.forward_loss(imgs, pred, mask).item() == 0.0


def test_norm_pix_target_per_patch_mean_0_unbiased_var_1():
    torch.manual_seed(0)
    imgs = torch.rand(3, 3, 32, 32) * 3.0 + 1.0
    t = mae_target(imgs, 4, norm_pix=True)
    assert t.shape == (3, 64, 48)
    torch.testing.assert_close(t.mean(-1), torch.zeros(3, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(t.var(-1), torch.ones(3, 64), atol=1e-4, rtol=0)  # unbiased
    assert not torch.allclose(t.var(-1, unbiased=False), torch.ones(3, 64), atol=1e-4)
    assert torch.equal(mae_target(imgs, 4, norm_pix=False), patchify(imgs, 4))


# -- position embeddings ---------------------------------------------------------------------------
def test_sincos_values():
    d = 16
    emb = sincos_pos_embed_2d(d, (8, 8), cls_token=True)
    assert emb.shape == (65, d) and emb.dtype == torch.float32
    assert torch.equal(emb[0], torch.zeros(d))  # cls position
    row, col = 2, 5
    e = emb[1 + row * 8 + col]
    assert e[0].item() == pytest.approx(math.sin(col))
    assert e[d // 4].item() == pytest.approx(math.cos(col))
    assert e[d // 2].item() == pytest.approx(math.sin(row))
    assert e[3 * d // 4].item() == pytest.approx(math.cos(row))
    with pytest.raises(UserError, match="divisible by 4"):
        sincos_pos_embed_2d(18, (2, 2))


def test_position_embeddings_fixed_sincos_and_not_trainable(tiny_method, tmp_path):
    mae = tiny_method()
    model = mae.backbone.model
    d = mae.backbone.num_features
    assert not model.pos_embed.requires_grad and not mae.decoder.pos_embed.requires_grad
    assert torch.equal(model.pos_embed[0], sincos_pos_embed_2d(d, (8, 8), cls_token=True))
    assert torch.equal(mae.decoder.pos_embed[0], sincos_pos_embed_2d(32, (8, 8), cls_token=True))
    trained = {id(p) for g in mae.param_groups(0.05) for p in g["params"]}
    assert id(model.pos_embed) not in trained and id(mae.decoder.pos_embed) not in trained
    # the saved backbone is evaluated later with the same fixed embedding
    loaded = load_backbone(save_backbone(mae.backbone, tmp_path / "bb.safetensors"))
    assert torch.equal(loaded.model.pos_embed, model.pos_embed)


def test_encoder_matches_backbone_forward_when_nothing_is_masked(tiny_method):
    """With every token kept (shuffled), the cls output equals the backbone's own pooled h:
    the encoder uses the backbone's modules and position embedding exactly as timm does."""
    mae = tiny_method().eval()
    x = torch.randn(2, 3, 32, 32)
    latent, mask, _, _ = mae.forward_encoder(x, 0.0)
    assert latent.shape[1] == 65 and mask.sum() == 0
    torch.testing.assert_close(latent[:, 0], mae.backbone(x), atol=1e-4, rtol=1e-4)


# -- method ----------------------------------------------------------------------------------------
def test_registered_vit_only_and_resnet_is_a_clear_error():
    assert METHODS.get("mae") is MAE and MAE.families == ("vit",) and MAE.paper
    resnet = build_tiny_backbone("resnet")
    with pytest.raises(UserError, match="vit"):
        MAE.check_backbone(resnet)
    with pytest.raises(UserError, match="vit"):
        MAE(resnet, MAE.Config(**SMALL), TINY_DATA)


def test_bad_config_is_a_user_error(tiny_method):
    with pytest.raises(UserError, match="decoder_heads"):
        tiny_method(decoder_dim=30, decoder_heads=4)
    with pytest.raises(UserError, match="mask_ratio"):
        tiny_method(mask_ratio=1.0)


def test_views_and_training_steps_reduce_the_loss(tiny_method):
    mae = tiny_method()
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    views = mae.make_views(images)
    assert views.shape == (8, 3, 32, 32) and views.dtype == torch.float32
    assert views.min() >= -2.0 and views.max() <= 2.0  # clamped [0, 1] under mean .5 / std .25
    opt = torch.optim.AdamW(mae.param_groups(0.05), lr=1e-3, betas=(0.9, 0.95))
    pos = mae.backbone.model.pos_embed.detach().clone()
    losses = []
    for s in range(4):
        torch.manual_seed(s)
        loss = mae(views, StepInfo(s, 4, 4))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert torch.equal(mae.backbone.model.pos_embed, pos)


def test_other_resolution_resamples_position_embeddings(tiny_method):
    mae = tiny_method()
    latent, mask, ids_restore, grid = mae.forward_encoder(torch.randn(2, 3, 48, 48), 0.75)
    assert grid == (12, 12) and latent.shape[1] == 1 + int(144 * 0.25)
    pred = mae.decoder(latent, ids_restore, grid)
    assert pred.shape == (2, 144, 48)


def test_embedded_recipe_loads():
    cfg = load_recipe(str(REPO / "recipes" / "embedded" / "mae_vit.yaml"))
    assert cfg.method.name == "mae" and cfg.backbone.name == "test_vit"
    assert list(cfg.optim.betas) == [0.9, 0.95] and cfg.optim.weight_decay == 0.05
