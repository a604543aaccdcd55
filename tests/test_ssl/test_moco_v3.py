"""MoCo v3 invariants (docs/methods.md#moco-v3; #test-checklist items 4, 6, 7): the exact ctr
values, collapse value, symmetry, momentum-encoder isolation and EMA, heads, frozen patch
embedding, the cosine momentum schedule, and a 2-process gloo test of the gathered-key loss."""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sslbench.distributed import free_port
from sslbench.ssl import StepInfo
from sslbench.ssl.moco_v3 import MoCoV3, moco_v3_ctr_loss, moco_v3_loss

METHOD, FAMILY = MoCoV3, "vit"  # the tiny_method fixture (conftest.py) builds these
SMALL = dict(hidden_dim=32, proj_dim=16)


def _views(n: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 32, 32, generator=g) for _ in range(2)]


# -- the loss -----------------------------------------------------------------------------------

def test_ctr_identical_orthonormal__spec_value():
    z = torch.eye(256)
    assert moco_v3_ctr_loss(z, z, 0.2).item() == pytest.approx(0.399984, abs=1e-5)
    assert moco_v3_loss(z, z, z, z, 0.2).item() == pytest.approx(0.799969, abs=1e-5)
    z4 = torch.eye(8)[:4]
    assert moco_v3_ctr_loss(z4, z4, 0.5).item() == pytest.approx(
        2 * 0.5 * math.log(1 + 3 * math.exp(-2)), abs=1e-6)


@pytest.mark.parametrize("tau", [0.1, 0.2, 1.0])
def test_ctr_collapsed__2tau_log_n(tau):
    z = torch.ones(16, 8) * 2.0
    assert moco_v3_ctr_loss(z, z, tau).item() == pytest.approx(2 * tau * math.log(16), abs=1e-6)


def test_loss_symmetric_under_view_swap_and_scale_invariant():
    g = torch.Generator().manual_seed(0)
    q1, q2, k1, k2 = (torch.randn(10, 16, generator=g) for _ in range(4))
    base = moco_v3_loss(q1, q2, k1, k2, 0.2).item()
    assert moco_v3_loss(q2, q1, k2, k1, 0.2).item() == pytest.approx(base, abs=1e-6)
    assert moco_v3_loss(3 * q1, q2, k1, 0.1 * k2, 0.2).item() == pytest.approx(base, abs=1e-6)


def test_keys_receive_no_gradient():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(6, 8, generator=g, requires_grad=True)
    k = torch.randn(6, 8, generator=g, requires_grad=True)
    moco_v3_ctr_loss(q, k, 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0 and k.grad is None


def test_method_loss_symmetric_under_view_swap(tiny_method):
    m = tiny_method("resnet")
    x1, x2 = _views()
    a = m([x1, x2], StepInfo(0, 10, 10))["loss"].item()
    b = m([x2, x1], StepInfo(0, 10, 10))["loss"].item()
    assert a == pytest.approx(b, abs=1e-5)


# -- heads and encoders -------------------------------------------------------------------------

def _linear_and_bn(head: nn.Sequential) -> tuple[list[nn.Linear], list[nn.BatchNorm1d]]:
    return ([mod for mod in head if isinstance(mod, nn.Linear)],
            [mod for mod in head if isinstance(mod, nn.BatchNorm1d)])


@pytest.mark.parametrize("family, proj_layers, pred_last_bn", [("resnet", 2, False),
                                                                ("vit", 3, True)])
def test_heads_follow_the_spec_table(tiny_method, family, proj_layers, pred_last_bn):
    m = tiny_method(family)
    lin, bns = _linear_and_bn(m.projector)
    assert len(lin) == proj_layers and all(layer.bias is None for layer in lin)
    assert lin[-1].out_features == 16 and lin[0].out_features == 32
    assert isinstance(m.projector[-1], nn.BatchNorm1d) and not m.projector[-1].affine
    lin, bns = _linear_and_bn(m.predictor)
    assert [layer.in_features for layer in lin] == [16, 32] and lin[-1].out_features == 16
    assert all(layer.bias is None for layer in lin)
    assert isinstance(m.predictor[-1], nn.BatchNorm1d) == pred_last_bn
    if pred_last_bn:
        assert not m.predictor[-1].affine


def test_predictor_is_not_in_the_momentum_encoder(tiny_method):
    m = tiny_method("vit")
    momentum = {id(p) for mod in (m.momentum_backbone, m.momentum_projector)
                for p in mod.parameters()}
    assert not any(id(p) in momentum for p in m.predictor.parameters())
    n_online = sum(p.numel() for p in m.backbone.parameters()) + sum(
        p.numel() for p in m.projector.parameters())
    assert len(momentum) > 0 and sum(p.numel() for mod in (m.momentum_backbone,
                                                           m.momentum_projector)
                                     for p in mod.parameters()) == n_online
    assert not any("predictor" in n for n, _ in m.named_parameters() if n.startswith("momentum"))


def test_momentum_encoder_frozen_no_grad_ema_identity_and_frozen_patch_embed(tiny_method):
    m = tiny_method("vit")
    with torch.no_grad():  # make θ_k ≠ θ_q so the identity is not trivial
        for p in m.momentum_projector.parameters():
            p.add_(0.1 * torch.randn_like(p))
    info = StepInfo(3, 10, 10)
    m.before_step(info)
    mom = m.momentum
    assert mom == pytest.approx(1 - 0.01 * (math.cos(math.pi * 0.3) + 1) / 2)
    k_old = {n: p.clone() for n, p in m.momentum_projector.named_parameters()}
    q_old = {n: p.detach().clone() for n, p in m.projector.named_parameters()}
    pe = m.backbone.model.patch_embed.proj
    pe_old = pe.weight.detach().clone()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    loss = m(_views(), info)["loss"]
    loss.backward()
    opt.step()
    frozen = list(m.momentum_backbone.parameters()) + list(m.momentum_projector.parameters())
    assert all(not p.requires_grad and p.grad is None for p in frozen)
    assert all(p.grad is not None for p in m.predictor.parameters())
    for n, p in m.momentum_projector.named_parameters():
        torch.testing.assert_close(p, mom * k_old[n] + (1 - mom) * q_old[n], msg=n)
    # stop-grad conv1: the random patch projection never trains
    assert not pe.weight.requires_grad and pe.weight.grad is None
    assert torch.equal(pe.weight, pe_old)
    trainable = {id(p) for g in m.param_groups(0.1) for p in g["params"]}
    assert id(pe.weight) not in trainable and id(pe.bias) not in trainable


def test_patch_embed_trains_without_stop_grad_conv1(tiny_method):
    m = tiny_method("vit", stop_grad_conv1=False)
    m(_views(), StepInfo(0, 1, 1))["loss"].backward()
    assert m.backbone.model.patch_embed.proj.weight.grad is not None


def test_cosine_momentum_schedule_endpoints(tiny_method):
    m = tiny_method("resnet", momentum=0.99)
    for step, expected in [(0, 0.99), (50, 1 - 0.01 / 2), (100, 1.0)]:
        m.before_step(StepInfo(step, 100, 10))
        assert m.momentum == pytest.approx(expected, abs=1e-12)


def test_make_views_are_asymmetric_pipelines(tiny_method):
    m = tiny_method("resnet")
    assert not any("Solarize" in type(op).__name__ for op in m.augment1)
    assert any("Solarize" in type(op).__name__ for op in m.augment2)
    v1, v2 = m.make_views(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    assert v1.shape == v2.shape == (4, 3, 32, 32)


# -- two processes ------------------------------------------------------------------------------


def _worker(rank, world, port, qs, ks, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    n = qs[0].shape[0] // world
    q1, q2 = (q[rank * n:(rank + 1) * n].clone().requires_grad_(True) for q in qs)
    k1, k2 = (k[rank * n:(rank + 1) * n] for k in ks)
    loss = moco_v3_loss(q1, q2, k1, k2, 0.2)
    loss.backward()
    t = loss.detach().clone()
    local = t.item()
    dist.all_reduce(t)
    # DDP averages gradients over ranks: the equivalent for the inputs is grad / world
    out[rank] = {"loss": (t / world).item(), "local": local, "g1": q1.grad / world, "g2": q2.grad / world}
    dist.destroy_process_group()


def test_gathered_key_loss_equals_single_process():
    g = torch.Generator().manual_seed(0)
    qs = [torch.randn(8, 16, generator=g) for _ in range(2)]
    ks = [torch.randn(8, 16, generator=g) for _ in range(2)]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), qs, ks, out), nprocs=2, join=True)

    q1, q2 = (q.clone().requires_grad_(True) for q in qs)
    ref = moco_v3_loss(q1, q2, *ks, 0.2, gather=False)
    ref.backward()
    for r in (0, 1):
        assert out[r]["loss"] == pytest.approx(ref.item(), abs=1e-6)
    torch.testing.assert_close(torch.cat([out[0]["g1"], out[1]["g1"]]), q1.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat([out[0]["g2"], out[1]["g2"]]), q2.grad, atol=1e-6, rtol=0)
    # each rank's own loss is its rows of the global (N, N) problem: labels offset by rank·n
    import torch.nn.functional as F

    def rows(q, k):  # per-row CE of the single-process logits, x 2τ
        logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.2
        return F.cross_entropy(logits, torch.arange(8), reduction="none") * 0.4

    per_row = rows(qs[0], ks[1]) + rows(qs[1], ks[0])  # (8,)
    for r in (0, 1):
        assert out[r]["local"] == pytest.approx(per_row[4 * r:4 * r + 4].mean().item(), abs=1e-6)
    assert out[0]["local"] != pytest.approx(out[1]["local"], abs=1e-4)
