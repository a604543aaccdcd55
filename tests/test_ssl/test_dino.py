"""DINO invariants (docs/methods.md#dino; #test-checklist items 6-11): loss value with zero student
logits, term count and skipped same-view terms, centre updated after the loss, teacher
temperature and EMA schedules, last-layer freeze, weight_g ≡ 1, per-parameter clipping, teacher
isolation and evaluation, multi-crop views, and the all-reduced centre under 2 gloo processes."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from conftest import build_tiny_method
from sslbench.distributed import free_port
from sslbench.engine import train_step
from sslbench.errors import UserError
from sslbench.ssl import StepInfo
from sslbench.ssl.dino import (DINO, clip_per_parameter, dino_loss, n_loss_terms,
                               teacher_temperature)

B = 4  # images per batch in the method-level tests


METHOD, FAMILY = DINO, "vit"  # the tiny_method fixture (conftest.py) builds these
SMALL = dict(out_dim=64, head_hidden_dim=32, head_bottleneck_dim=16, num_local_crops=2)


def _images(n: int = B, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def _views(method: DINO, n: int = B, seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return method.make_views(_images(n, seed))


def _train_step(method: DINO, opt: torch.optim.Optimizer, views, info: StepInfo) -> float:
    return float(train_step(method, opt, info, views=views)["loss"].detach())


# -- the loss -----------------------------------------------------------------------------------

@pytest.mark.parametrize("k, expected", [(65536, 11.090355), (4096, 8.317766)])
@pytest.mark.parametrize("n_local", [0, 2])
def test_zero_student_logits_give_ln_k__spec_value(k, expected, n_local):
    g = torch.Generator().manual_seed(k + n_local)
    student = torch.zeros((2 + n_local) * 3, k)
    teacher = 5.0 * torch.randn(2 * 3, k, generator=g)  # any teacher distribution
    center = torch.randn(1, k, generator=g)
    loss = dino_loss(student, teacher, center, student_temp=0.1, teacher_temp=0.04)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert loss.item() == pytest.approx(math.log(k), abs=1e-5)


@pytest.mark.parametrize("n_local, expected", [(0, 2), (2, 6), (8, 18)])
def test_n_loss_terms__spec_value(n_local, expected):
    assert n_loss_terms(n_local) == expected == 2 * (2 + n_local) - 2


@pytest.mark.parametrize("n_local", [0, 2, 8])
def test_loss_equals_per_sample_reference(n_local):
    """Explicit loops: teacher views are the 2 globals, same-view terms are skipped, each term
    is a batch mean, and the sum is divided by the term count."""
    g = torch.Generator().manual_seed(n_local)
    batch, k, ts, tt = 3, 7, 0.1, 0.05
    s = torch.randn((2 + n_local) * batch, k, generator=g)
    t = torch.randn(2 * batch, k, generator=g)
    c = torch.randn(1, k, generator=g)
    total, terms = 0.0, 0
    for i in range(2):
        for v in range(2 + n_local):
            if v == i:
                continue
            terms += 1
            for b in range(batch):
                p_t = torch.softmax((t[i * batch + b] - c[0]) / tt, dim=0)
                log_p_s = torch.log_softmax(s[v * batch + b] / ts, dim=0)
                total += float(-(p_t * log_p_s).sum()) / batch
    assert terms == n_loss_terms(n_local)
    assert dino_loss(s, t, c, ts, tt).item() == pytest.approx(total / terms, abs=1e-5)


def test_loss_gradient_reaches_student_only():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4 * 2, 5, generator=g, requires_grad=True)
    t = torch.randn(2 * 2, 5, generator=g, requires_grad=True)
    dino_loss(s, t, torch.zeros(1, 5), 0.1, 0.04).backward()
    assert t.grad is None  # the teacher target is detached (pitfall 3)
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_student_matching_the_other_global_view_reaches_the_entropy_floor():
    """Student view 1 == teacher view 0 and vice versa, equal temperatures, L = 0: both terms
    are the entropy of P_t, the minimum; a student copying the *same* view is not rewarded."""
    g = torch.Generator().manual_seed(3)
    t = torch.randn(2 * 5, 6, generator=g)
    swapped = torch.cat([t[5:], t[:5]])
    floor = dino_loss(swapped, t, torch.zeros(1, 6), 0.1, 0.1)
    p = torch.softmax(t / 0.1, dim=1)
    entropy = float(-(p * torch.log(p)).sum(1).mean())
    assert floor.item() == pytest.approx(entropy, abs=1e-5)
    same_view = dino_loss(t, t, torch.zeros(1, 6), 0.1, 0.1)  # would be the floor if not skipped
    assert same_view.item() > floor.item() + 1e-3


# -- centre -------------------------------------------------------------------------------------

def test_center_updated_after_loss_from_raw_global_teacher_logits__spec_value(tiny_method):
    method = tiny_method("vit")
    views = _views(method)
    info = StepInfo(0, 10, 5)
    method.before_step(info)
    with torch.no_grad():
        t_raw = method.teacher_logits(views[0])  # (2B, K) raw, global crops only
        s_out = method.student(views)
    assert torch.count_nonzero(method.center) == 0
    out = method(views, info)
    # the loss of the first step used c = 0 ...
    expected = dino_loss(s_out, t_raw, torch.zeros(1, 64), 0.1, method.teacher_temp)
    assert out["loss"].item() == pytest.approx(expected.item(), abs=1e-6)
    # ... and the centre is then 0.1 x the batch mean of the raw teacher logits (m_c = 0.9)
    torch.testing.assert_close(method.center, 0.1 * t_raw.mean(0, keepdim=True), atol=1e-7,
                               rtol=1e-6)
    # sensitivity: a loss with the updated centre would have been different
    late = dino_loss(s_out, t_raw, method.center, 0.1, method.teacher_temp)
    assert abs(late.item() - out["loss"].item()) > 1e-6
    # a second update follows the same EMA
    c1 = method.center.clone()
    method(views, info)
    torch.testing.assert_close(method.center, 0.9 * c1 + 0.1 * t_raw.mean(0, keepdim=True),
                               atol=1e-7, rtol=1e-6)


# -- schedules ----------------------------------------------------------------------------------

def test_teacher_temperature_schedule__spec_values():
    ref = np.linspace(0.04, 0.07, 30)  # the official per-epoch array, endpoints inclusive
    assert teacher_temperature(0, 0.04, 0.07, 30) == pytest.approx(0.04, abs=1e-12)
    assert teacher_temperature(29, 0.04, 0.07, 30) == pytest.approx(0.07, abs=1e-12)
    for e in range(30):
        assert teacher_temperature(e, 0.04, 0.07, 30) == pytest.approx(ref[e], abs=1e-12)
    for e in (30, 31, 100, 1000):
        assert teacher_temperature(e, 0.04, 0.07, 30) == 0.07
    assert teacher_temperature(0, 0.04, 0.07, 0) == 0.07  # no warm-up
    assert teacher_temperature(0, 0.04, 0.07, 1) == 0.04  # linspace(a, b, 1) == [a]


def test_before_step_sets_teacher_temperature_by_epoch(tiny_method):
    method = tiny_method("vit", warmup_teacher_temp_epochs=4)
    method.before_step(StepInfo(step=0, total_steps=100, steps_per_epoch=10))
    assert method.teacher_temp == pytest.approx(0.04)
    method.before_step(StepInfo(step=39, total_steps=100, steps_per_epoch=10))  # epoch 3
    assert method.teacher_temp == pytest.approx(0.07)
    method.before_step(StepInfo(step=15, total_steps=100, steps_per_epoch=10))  # epoch 1
    assert method.teacher_temp == pytest.approx(0.05)


def test_ema_momentum_schedule__spec_values(tiny_method):
    method = tiny_method("vit")
    epochs, iters = 5, 20
    sched = [method.teacher_momentum(StepInfo(k, epochs * iters, iters))
             for k in range(epochs * iters)]
    assert len(sched) == epochs * iters
    assert sched[0] == pytest.approx(0.996, abs=1e-12)
    assert sched[-1] == pytest.approx(1.0, abs=1e-5)
    assert method.teacher_momentum(StepInfo(50, 100, 20)) == pytest.approx(0.998, abs=1e-12)
    assert method.teacher_momentum(StepInfo(100, 100, 20)) == pytest.approx(1.0, abs=1e-12)
    assert all(a <= b for a, b in zip(sched, sched[1:]))


def test_after_step_is_ema_over_backbone_and_head(tiny_method):
    method = tiny_method("vit")
    old = {k: v.clone() for k, v in method.teacher.named_parameters()}
    with torch.no_grad():
        for p in list(method.backbone.parameters()) + list(method.head.parameters()):
            p.add_(torch.randn_like(p))
    method.after_step(StepInfo(0, 10, 5))  # m = 0.996
    student = dict(method.backbone.named_parameters(prefix="backbone"))
    student.update(method.head.named_parameters(prefix="head"))
    assert set(student) == set(old)  # every student parameter has its teacher twin
    for k, t in method.teacher.named_parameters():
        torch.testing.assert_close(t, 0.996 * old[k] + 0.004 * student[k], atol=1e-6, rtol=1e-6)


# -- teacher isolation and evaluation -------------------------------------------------------------

@pytest.mark.parametrize("family", ["vit", "resnet"])
def test_teacher_gets_no_grad_and_sees_only_global_crops(tiny_method, family):
    method = tiny_method(family)
    views = _views(method)
    seen: dict[str, list] = {"teacher": [], "student": []}
    method.teacher["backbone"].register_forward_pre_hook(
        lambda m, a: seen["teacher"].append(tuple(a[0].shape)))
    method.backbone.register_forward_pre_hook(
        lambda m, a: seen["student"].append(tuple(a[0].shape)))
    out = method(views, StepInfo(0, 10, 5))
    out["loss"].backward()
    assert seen["teacher"] == [(2 * B, 3, 32, 32)]
    assert seen["student"] == [(2 * B, 3, 32, 32), (2 * B, 3, 16, 16)]  # one pass per size
    assert all(not p.requires_grad and p.grad is None for p in method.teacher.parameters())
    grads = [p.grad for p in [*method.backbone.parameters(), *method.head.mlp.parameters()]]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert math.isfinite(out["loss"].item())
    # param groups never hand the teacher (or the frozen weight_g) to the optimiser
    trainable = {id(p) for grp in method.param_groups(0.05) for p in grp["params"]}
    assert not trainable & {id(p) for p in method.teacher.parameters()}
    assert id(method.head.last_layer.weight_g) not in trainable


def test_eval_backbone_is_the_teacher(tiny_method):
    method = tiny_method("vit")
    assert method.eval_backbone() is method.teacher["backbone"]
    assert method.eval_backbone() is not method.backbone
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    method.after_step(StepInfo(0, 10, 5))
    x = torch.randn(2, 3, 32, 32)
    # after one EMA step with m = 0.996 the evaluated network differs from the student
    assert not torch.allclose(method.eval_backbone()(x), method.backbone(x))


def test_teacher_has_no_stochastic_depth(tiny_method):
    method = tiny_method("vit", backbone_kw={"drop_path_rate": 0.1})
    from timm.layers import DropPath

    student_dp = [m.drop_prob for m in method.backbone.modules() if isinstance(m, DropPath)]
    teacher_dp = [m.drop_prob for m in method.teacher.modules() if isinstance(m, DropPath)]
    assert student_dp and max(student_dp) > 0
    assert len(teacher_dp) == len(student_dp) and all(p == 0.0 for p in teacher_dp)


# -- last layer ---------------------------------------------------------------------------------

def test_last_layer_frozen_in_epoch_0_and_weight_g_stays_one(tiny_method):
    method = tiny_method("vit")
    opt = torch.optim.AdamW(method.param_groups(0.05), lr=1e-2)
    views = _views(method, n=8)
    ll = method.head.last_layer
    v0 = ll.weight_v.detach().clone()
    mlp0 = method.head.mlp[0].weight.detach().clone()
    for s in range(3):  # epoch 0 (4 steps per epoch)
        _train_step(method, opt, views, StepInfo(s, 12, 4))
        assert torch.equal(ll.weight_v, v0)
        assert torch.equal(ll.weight_g, torch.ones_like(ll.weight_g))
    assert not torch.equal(method.head.mlp[0].weight, mlp0)  # the rest did train
    for s in range(4, 7):  # epoch 1: the prototypes move, their norms do not
        _train_step(method, opt, views, StepInfo(s, 12, 4))
        assert torch.equal(ll.weight_g, torch.ones_like(ll.weight_g))
        assert torch.equal(method.teacher["head"].last_layer.weight_g, torch.ones_like(ll.weight_g))
    assert not torch.equal(ll.weight_v, v0)
    # g = 1 means unit-norm prototypes
    torch.testing.assert_close(ll.weight.norm(dim=1), torch.ones(64), atol=1e-6, rtol=0)


def test_weight_g_trains_without_norm_last_layer(tiny_method):
    method = tiny_method("vit", norm_last_layer=False, clip_grad=None)
    assert method.head.last_layer.weight_g.requires_grad
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1.0)
    _train_step(method, opt, _views(method), StepInfo(4, 8, 4))  # epoch 1
    assert not torch.equal(method.head.last_layer.weight_g, torch.ones(64, 1))


def test_weight_norm_layer_matches_torch_weight_norm(tiny_method):
    method = tiny_method("vit")
    ll = method.head.last_layer
    ref = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(16, 64, bias=False))
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(ll.weight_g)
        ref.parametrizations.weight.original1.copy_(ll.weight_v)
    z = torch.randn(5, 16)
    torch.testing.assert_close(ll(z), ref(z), atol=1e-6, rtol=1e-6)


# -- gradient clipping --------------------------------------------------------------------------

def test_per_parameter_clipping_caps_each_gradient(tiny_method):
    method = tiny_method("vit", clip_grad=3.0)
    params = [p for p in method.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    big = [torch.randn(p.shape, generator=g) * 100 for p in params]
    for p, gr in zip(params, big):
        p.grad = gr.clone()
    small = params[0]
    small.grad = big[0] / big[0].norm() * 0.5  # norm 0.5 < 3: must stay untouched
    small_before = small.grad.clone()
    method.after_backward(StepInfo(10, 20, 5))  # epoch 2: no last-layer freeze
    assert torch.equal(small.grad, small_before)
    for p, gr in list(zip(params, big))[1:]:
        if gr.norm() > 3.0:
            assert p.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
            cos = F.cosine_similarity(p.grad.flatten(), gr.flatten(), dim=0)
            assert cos.item() == pytest.approx(1.0, abs=1e-5)  # direction kept
    total = torch.stack([p.grad.norm() for p in params]).norm()
    assert total > 3.0  # not a global-norm clip (pitfall 7)


def test_clipping_disabled_and_last_layer_grads_cancelled_in_epoch_0(tiny_method):
    method = tiny_method("vit", clip_grad=None)
    params = [p for p in method.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 10.0)
    method.after_backward(StepInfo(1, 20, 5))  # epoch 0
    assert method.head.last_layer.weight_v.grad is None
    kept = [p for p in params if p is not method.head.last_layer.weight_v]
    assert all(torch.equal(p.grad, torch.full_like(p, 10.0)) for p in kept)


def test_clip_per_parameter_function():
    a = torch.zeros(3, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    a.grad, b.grad = torch.tensor([30.0, 40.0, 0.0]), torch.tensor([0.3, 0.4])
    clip_per_parameter([a, b], 5.0)
    torch.testing.assert_close(a.grad, torch.tensor([3.0, 4.0, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4]))


# -- views and configuration ----------------------------------------------------------------------

def test_multi_crop_views_stacked_per_view(tiny_method):
    method = tiny_method("vit", num_local_crops=3)
    views = _views(method, n=6)
    assert [tuple(v.shape) for v in views] == [(12, 3, 32, 32), (18, 3, 16, 16)]
    assert all(v.dtype == torch.float32 for v in views)
    assert method.global_augs[0][0].scale == (0.4, 1.0)
    # identical images: every crop of every view differs (per-sample random parameters)
    torch.manual_seed(0)
    same = _images(1).expand(16, 3, 32, 32).contiguous()
    g = method.make_views(same)[0]
    assert torch.unique(g.flatten(1).round(decimals=4), dim=0).shape[0] == 32


def test_view_order_is_view_major(tiny_method):
    """With augmentation switched off, block v of each tensor is the whole batch again, in
    order (crops stacked per view, not per sample: pitfall 4)."""
    method = tiny_method("vit", num_local_crops=2, global_crop_scale=[1.0, 1.0],
                         local_crop_scale=[1.0, 1.0], color_p=0.0, gray_p=0.0, flip_p=0.0,
                         solarize_p=0.0)
    for aug in [*method.global_augs, method.local_aug]:
        aug[0].ratio = (1.0, 1.0)  # full-image crops
    g = torch.Generator().manual_seed(0)  # smooth images: resizing barely changes them
    coarse = torch.rand(5, 3, 4, 4, generator=g)
    x = (F.interpolate(coarse, size=32, mode="bilinear", align_corners=False) * 255).to(torch.uint8)
    glob, loc = method.make_views(x)
    ref = (x.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(glob[:5], ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(glob[5:], ref, atol=1e-4, rtol=0)
    small = F.interpolate(ref, size=16, mode="bilinear", align_corners=False)
    for block in loc.chunk(2):
        err = (block - small).abs().mean()
        assert err < 0.1
        assert err < 0.2 * (block - small.roll(1, 0)).abs().mean()  # not another image


def test_no_local_crops_uses_wide_global_scale(tiny_method):
    method = tiny_method("resnet", num_local_crops=0)
    views = _views(method)
    assert len(views) == 1 and tuple(views[0].shape) == (2 * B, 3, 32, 32)
    assert method.global_augs[1][0].scale == (0.14, 1.0)
    out = method(views, StepInfo(0, 10, 5))
    assert math.isfinite(out["loss"].item())


def test_vit_local_crop_must_divide_patch(tiny_method):
    with pytest.raises(UserError, match="patch size 4"):
        tiny_method("vit", local_crop_size=14)


def test_state_dict_carries_center_and_teacher(tiny_method):
    a = tiny_method("vit")
    a(_views(a), StepInfo(0, 10, 5))
    state = a.state_dict()
    for key in ("center", "head.last_layer.weight_g", "head.last_layer.weight_v",
                "teacher.head.last_layer.weight_g", "teacher.backbone.model.cls_token"):
        assert key in state, key
    b = tiny_method("vit", seed=1)
    b.load_state_dict(state)
    torch.testing.assert_close(b.center, a.center, atol=0, rtol=0)
    assert torch.count_nonzero(b.center) > 0
    assert not b.head.last_layer.weight_g.requires_grad


# -- two processes ------------------------------------------------------------------------------


def _shard(views: list[torch.Tensor], batch: int, rank: int, world: int) -> list[torch.Tensor]:
    """This rank's images of every crop, keeping the view-major stacking."""
    n = batch // world
    out = []
    for v in views:
        crops = v.chunk(v.shape[0] // batch)
        out.append(torch.cat([c[rank * n:(rank + 1) * n] for c in crops]))
    return out


def _ddp_worker(rank, world, port, views, batch, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    # LayerNorm only: per-process statistics cannot differ
    method = build_tiny_method(DINO, "vit", **SMALL)
    model = torch.nn.parallel.DistributedDataParallel(method)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    info = StepInfo(5, 10, 4)  # epoch 1: the last layer trains too
    loss = train_step(method, opt, info, views=_shard(views, batch, rank, world),
                      model=model)["loss"]
    t = loss.detach().clone()
    dist.all_reduce(t)
    out[rank] = {"loss": (t / world).item(), "center": method.center.clone(),
                 "w": {k: v.detach().clone() for k, v in method.state_dict().items()}}
    dist.destroy_process_group()


def test_two_process_center_and_step_equal_single_process(tiny_method):
    batch = 8
    ref = tiny_method("vit")
    views = _views(ref, n=batch, seed=1)
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, free_port(), views, batch, out), nprocs=2, join=True)

    with torch.no_grad():
        t_raw = ref.teacher_logits(views[0])
    opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.5)
    loss = _train_step(ref, opt, views, StepInfo(5, 10, 4))
    expected_center = 0.1 * t_raw.mean(0, keepdim=True)
    torch.testing.assert_close(ref.center, expected_center, atol=1e-7, rtol=1e-6)
    res = [out[0], out[1]]  # fetch once: every access to a Manager dict is an IPC round trip
    for r in range(2):
        assert res[r]["loss"] == pytest.approx(loss, abs=1e-5)
        # all-reduced centre == the single-process centre of the global batch
        torch.testing.assert_close(res[r]["center"], ref.center, atol=1e-6, rtol=1e-5)
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(res[r]["w"][k], v, atol=1e-5, rtol=1e-4, msg=k)
