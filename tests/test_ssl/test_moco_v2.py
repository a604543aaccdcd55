"""MoCo v2 invariants (docs/methods.md#moco-v2; #test-checklist items 5-6): logits/labels, the
exact InfoNCE value, queue update order and pointer, key-encoder isolation and EMA,
SplitBatchNorm, checkpoint state, and a 2-process gloo test that the queue receives the gathered
keys in rank order."""
from __future__ import annotations

import io
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from conftest import build_tiny_backbone, build_tiny_method
from sslbench.distributed import free_port
from sslbench.engine import train_step
from sslbench.errors import UserError
from sslbench.ssl import StepInfo
from sslbench.ssl.moco_v2 import (MoCoV2, SplitBatchNorm, convert_split_bn, moco_infonce_loss,
                                  moco_logits)

METHOD = MoCoV2  # the tiny_method fixture (conftest.py) builds it
SMALL = dict(queue_size=64, proj_hidden_dim=32, proj_dim=16, num_splits=4, temperature=0.2)


def _views(n: int = 8, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 32, 32, generator=g) for _ in range(2)]


def _record(method: MoCoV2, name: str) -> list:
    """Wrap ``method.<name>`` so every return value is appended to the returned list."""
    calls: list = []
    fn = getattr(method, name)

    def wrapped(*a, **k):
        out = fn(*a, **k)
        calls.append(out)
        return out

    setattr(method, name, wrapped)
    return calls


# -- the loss -----------------------------------------------------------------------------------

def test_logits_shape_and_positive_column():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    queue = F.normalize(torch.randn(16, 64, generator=g), dim=0)
    logits = moco_logits(q, k, queue, 0.2)
    assert logits.shape == (8, 1 + 64)
    expected_pos = (F.normalize(q, dim=1) * F.normalize(k, dim=1)).sum(1) / 0.2
    torch.testing.assert_close(logits[:, 0], expected_pos)
    # label 0 for every row: the loss is the cross-entropy against all-zero labels
    labels = torch.zeros(8, dtype=torch.long)
    assert moco_infonce_loss(q, k, queue, 0.2).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), abs=1e-6)


@pytest.mark.parametrize("k_size, tau, expected", [(64, 0.1, 0.0029013824), (4096, 0.2, 3.3533588),
                                                   (4096, 0.1, 0.1705510)])
def test_loss_positive_equals_query_orthogonal_queue__spec_value(k_size, tau, expected):
    """q = k⁺ and q ⟂ every queue entry: L = log(1 + K e^{-1/τ})."""
    g = torch.Generator().manual_seed(0)
    q = torch.eye(32)[:4]  # 4 unit queries in the first 4 dims
    queue = torch.zeros(32, k_size)
    queue[4:] = torch.randn(28, k_size, generator=g)  # orthogonal to every query
    queue = F.normalize(queue, dim=0)
    loss = moco_infonce_loss(q, q.clone(), queue, tau).item()
    assert loss == pytest.approx(expected, abs=2e-5)  # fp32 sum of 1 + K terms
    assert loss == pytest.approx(math.log(1 + k_size * math.exp(-1 / tau)), abs=2e-5)


def test_loss_gradient_reaches_query_only():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(4, 16, generator=g, requires_grad=True)
    k = torch.randn(4, 16, generator=g, requires_grad=True)
    moco_infonce_loss(q, k, F.normalize(torch.randn(16, 32, generator=g), dim=0), 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None


# -- SplitBatchNorm -----------------------------------------------------------------------------

def test_split_bn_normalises_each_chunk_and_averages_running_stats():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    split = convert_split_bn(nn.Sequential(bn), 4)[0]
    assert isinstance(split, SplitBatchNorm)
    x = torch.randn(8, 3, 5, 5) * 2 + 1
    out = split(x)
    refs = [nn.BatchNorm2d(3) for _ in range(4)]
    for j, ref in enumerate(refs):
        ref.load_state_dict(bn.state_dict())
        torch.testing.assert_close(out[2 * j:2 * j + 2], ref(x[2 * j:2 * j + 2]))
    torch.testing.assert_close(split.running_mean, torch.stack([r.running_mean for r in refs]).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack([r.running_var for r in refs]).mean(0))
    assert int(split.num_batches_tracked) == 1
    # eval: exactly BatchNorm2d with the same buffers
    split.eval()
    plain = nn.BatchNorm2d(3).eval()
    plain.load_state_dict(split.state_dict())
    torch.testing.assert_close(split(x), plain(x))


def test_split_bn_keeps_batchnorm_keys_and_escapes_syncbn_conversion(tiny_method):
    m = tiny_method()
    bns = [mod for mod in m.backbone.modules() if isinstance(mod, SplitBatchNorm)]
    assert bns and not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    assert any(isinstance(mod, SplitBatchNorm) for mod in m.key_backbone.modules())
    # the exported backbone loads into a stock timm model (BatchNorm2d)
    stock = build_tiny_backbone("resnet")
    stock.model.load_state_dict(m.backbone.model.state_dict())
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(m)
    assert not any(isinstance(mod, nn.SyncBatchNorm) for mod in converted.modules())


def test_split_bn_batch_not_divisible_is_a_user_error(tiny_method):
    m = tiny_method(num_splits=3)
    with pytest.raises(UserError, match="num_splits"):
        m(_views(8), StepInfo(0, 1, 1))


# -- the step -----------------------------------------------------------------------------------

def _step(m: MoCoV2, views, info: StepInfo, opt) -> torch.Tensor:
    return train_step(m, opt, info, views=views)["loss"]


def test_key_encoder_frozen_no_grad_and_ema_identity(tiny_method):
    m = tiny_method(momentum=0.9)
    with torch.no_grad():  # make θ_k ≠ θ_q so the identity is not trivial
        for p in m.key_backbone.parameters():
            p.add_(0.1 * torch.randn_like(p))
    k_old = {n: p.clone() for n, p in m.key_backbone.named_parameters()}
    q_old = {n: p.detach().clone() for n, p in m.backbone.named_parameters()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    _step(m, _views(), StepInfo(0, 10, 10), opt)
    key_params = list(m.key_backbone.parameters()) + list(m.key_projector.parameters())
    assert all(not p.requires_grad and p.grad is None for p in key_params)
    assert all(p.grad is not None for p in m.backbone.parameters())
    q_new = dict(m.backbone.named_parameters())
    assert any(not torch.equal(q_new[n], q_old[n]) for n in q_old)  # the optimizer moved θ_q
    for n, p in m.key_backbone.named_parameters():
        # pre-step θ_q: the update happens in forward, before the optimizer step
        torch.testing.assert_close(p, 0.9 * k_old[n] + 0.1 * q_old[n], msg=n)


def test_momentum_constant_or_cosine(tiny_method):
    m = tiny_method(momentum=0.99)
    m.before_step(StepInfo(50, 100, 10))
    assert m.momentum == 0.99
    m = tiny_method(momentum=0.99, momentum_end=0.999)
    for step, expected in [(0, 0.99), (50, 0.9945), (100, 0.999)]:
        m.before_step(StepInfo(step, 100, 10))
        assert m.momentum == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("start_ptr", [0, 56])
def test_queue_receives_normalised_keys_after_logits_and_ptr_advances(tiny_method, start_ptr):
    m = tiny_method()
    m.queue_ptr.fill_(start_ptr)
    old_queue = m.queue.clone()
    queries, keys = _record(m, "query"), _record(m, "keys")
    loss = m(_views(8), StepInfo(0, 1, 1))["loss"]
    (k_local, k_all), = keys
    torch.testing.assert_close(k_all, k_local)  # one process: the gathered batch is the batch
    torch.testing.assert_close(k_local.norm(dim=1), torch.ones(8))
    # the last-written slice holds this step's keys, the rest is untouched
    torch.testing.assert_close(m.queue[:, start_ptr:start_ptr + 8], k_local.T)
    untouched = torch.ones(64, dtype=torch.bool)
    untouched[start_ptr:start_ptr + 8] = False
    assert torch.equal(m.queue[:, untouched], old_queue[:, untouched])
    assert int(m.queue_ptr) == (start_ptr + 8) % 64
    # the loss used the queue from before the enqueue: the positive is not among the negatives
    q, = queries
    assert loss.item() == pytest.approx(moco_infonce_loss(q, k_local, old_queue, 0.2).item(),
                                        abs=1e-6)
    assert loss.item() != pytest.approx(moco_infonce_loss(q, k_local, m.queue, 0.2).item(),
                                        abs=1e-3)


def test_key_batch_is_shuffled_and_unshuffled(tiny_method):
    """Keys come back in input order although the key encoder saw a permuted batch."""
    m = tiny_method().eval()  # eval: per-sample BN, so keys must not depend on the order
    x = _views(8)[1]
    seen = []
    m.key_backbone.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    torch.manual_seed(5)
    k_local, _ = m.keys(x)
    assert not torch.equal(seen[0], x)  # permuted
    assert sorted(seen[0].sum((1, 2, 3)).tolist()) == pytest.approx(sorted(x.sum((1, 2, 3)).tolist()))
    with torch.no_grad():
        ref = F.normalize(m.key_projector(m.key_backbone(x)), dim=1)
    torch.testing.assert_close(k_local, ref)


def test_queue_size_must_be_a_multiple_of_the_global_batch(tiny_method):
    m = tiny_method(queue_size=60)
    with pytest.raises(UserError, match="queue_size=60"):
        m(_views(8), StepInfo(0, 1, 1))


def test_symmetric_uses_one_queue_per_view(tiny_method):
    m = tiny_method(symmetric=True)
    assert m.queue.shape == m.queue_v1.shape == (16, 64)
    keys = _record(m, "keys")
    m(_views(8), StepInfo(0, 1, 1))
    (k2, _), (k1, _) = keys
    torch.testing.assert_close(m.queue[:, :8], k2.T)
    torch.testing.assert_close(m.queue_v1[:, :8], k1.T)
    assert int(m.queue_ptr) == 8


def test_queue_and_ptr_in_state_dict_and_resume_is_exact(tiny_method):
    m = tiny_method()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    views = _views(8)
    for s in range(2):
        torch.manual_seed(s)
        _step(m, views, StepInfo(s, 4, 2), opt)
    state = m.state_dict()
    assert {"queue", "queue_ptr"} <= set(state) and int(state["queue_ptr"]) == 16
    buf = io.BytesIO()
    torch.save({"m": state, "o": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    clone = tiny_method(seed=7)
    clone_opt = torch.optim.AdamW([p for p in clone.parameters() if p.requires_grad], lr=1e-3)
    clone.load_state_dict(saved["m"])
    clone_opt.load_state_dict(saved["o"])
    torch.manual_seed(9)
    a = _step(m, views, StepInfo(2, 4, 2), opt)
    torch.manual_seed(9)
    b = _step(clone, views, StepInfo(2, 4, 2), clone_opt)
    assert a.item() == b.item()
    for (k, v), (_, w) in zip(m.state_dict().items(), clone.state_dict().items()):
        assert torch.equal(v, w), k


def test_vit_backbone_is_rejected():
    bb = build_tiny_backbone("vit")
    with pytest.raises(UserError, match="moco_v2.*resnet"):
        MoCoV2.check_backbone(bb)


def test_make_views_shapes(tiny_method):
    m = tiny_method()
    v1, v2 = m.make_views(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8))
    assert v1.shape == v2.shape == (4, 3, 32, 32) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2)


# -- two processes ------------------------------------------------------------------------------


def _worker(rank, world, port, views, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    # eval BN: keys are per-sample, so 1 and 2 processes must agree
    m = build_tiny_method(MoCoV2, **SMALL).eval()
    n = views[0].shape[0] // world
    local = [v[rank * n:(rank + 1) * n] for v in views]
    keys = _record(m, "keys")
    torch.manual_seed(100 + rank)  # different local RNG: the permutation comes from rank 0
    loss = m(local, StepInfo(0, 1, 1))["loss"].detach()
    dist.all_reduce(loss)
    out[rank] = {"loss": (loss / world).item(), "queue": m.queue.clone(),
                 "ptr": int(m.queue_ptr), "k_local": keys[0][0].clone()}
    dist.destroy_process_group()


def test_two_processes_enqueue_gathered_keys_in_rank_order(tiny_method):
    views = _views(16, seed=4)
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, free_port(), views, out), nprocs=2, join=True)

    ref = tiny_method().eval()
    keys = _record(ref, "keys")
    ref_loss = ref(views, StepInfo(0, 1, 1))["loss"]
    k_ref = keys[0][0]  # (16, D) keys of the global batch
    for r in (0, 1):
        assert out[r]["ptr"] == 16
        torch.testing.assert_close(out[r]["k_local"], k_ref[8 * r:8 * r + 8], atol=1e-5, rtol=0)
        # both ranks hold the same queue: rank 0's keys, then rank 1's
        torch.testing.assert_close(out[r]["queue"][:, :8], out[0]["k_local"].T)
        torch.testing.assert_close(out[r]["queue"][:, 8:16], out[1]["k_local"].T)
        torch.testing.assert_close(out[r]["queue"], ref.queue, atol=1e-5, rtol=0)
        assert out[r]["loss"] == pytest.approx(ref_loss.item(), abs=1e-5)
