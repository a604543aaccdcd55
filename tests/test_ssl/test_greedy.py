"""Greedy local learning invariants (docs/methods.md#gim, #loco; #test-checklist item 17):
gradient isolation of the GIM stages, the LoCo overlap pattern, the stages being exactly the timm
forward, one head per loss."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor

from conftest import TINY_DATA, build_tiny_backbone
from sslbench.errors import UserError
from sslbench.ssl.base import StepInfo
from sslbench.ssl.greedy import OBJECTIVES, GreedyLocal, split_evenly

METHOD = GreedyLocal  # the tiny_method fixture (conftest.py) builds it


def _views(n: int = 4) -> list[Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, 32, 32, generator=g) for _ in range(2)]


def _grads(method: GreedyLocal, loss: Tensor) -> dict[str, Tensor | None]:
    """d loss / d every trainable parameter of the method (None where not in the graph)."""
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    gs = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
    return {n: g for (n, _), g in zip(named, gs)}


def _stage_names(method: GreedyLocal, j: int) -> list[str]:
    return ["backbone.model." + n for n, _ in method.stage_parameters(j)]


def _head_names(method: GreedyLocal, j: int) -> list[str]:
    return [f"heads.{j}.{n}" for n, p in method.heads[j].named_parameters() if p.requires_grad]


def _is_zero(grads: dict[str, Tensor | None], names: list[str]) -> bool:
    return all(grads[n] is None or not grads[n].any() for n in names)


def _is_nonzero(grads: dict[str, Tensor | None], names: list[str]) -> bool:
    return any(grads[n] is not None and grads[n].any() for n in names)


def test_split_evenly():
    assert split_evenly(4, 4) == [[0], [1], [2], [3]]
    assert split_evenly(6, 4) == [[0, 1], [2, 3], [4], [5]]  # test_vit: 6 blocks, 4 stages
    assert split_evenly(12, 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert split_evenly(4, 1) == [[0, 1, 2, 3]]


@pytest.mark.parametrize("family, num_stages", [("resnet", 4), ("resnet", 2), ("vit", 4),
                                                ("vit", 3)])
def test_stages_are_the_timm_forward(tiny_method, family, num_stages):
    """Stages chained without detach == forward_features bit for bit; the last stage's pooled
    feature == backbone(x), the representation that is evaluated."""
    method = tiny_method(family, num_stages=num_stages)
    x = torch.cat(_views())
    params = [set(n for n, _ in method.stage_parameters(j)) for j in range(num_stages)]
    all_names = {n for n, _ in method.backbone.model.named_parameters()}
    assert set().union(*params) == all_names and sum(map(len, params)) == len(all_names)
    assert all(params), "every stage owns parameters"
    with torch.no_grad():
        for mode in (method.train, method.eval):
            mode()
            h = x
            for i in range(num_stages):
                h = method.stage_forward(i, h)
            assert torch.equal(h, method.backbone.model.forward_features(x))
            assert torch.equal(method.pool(num_stages - 1, h), method.backbone(x))


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_gim_each_loss_reaches_only_its_stage_and_head(tiny_method, family):
    method = tiny_method(family, overlap=False)
    losses = method.stage_losses(_views())
    assert len(losses) == 4
    for m, loss in enumerate(losses):
        grads = _grads(method, loss)
        for j in range(4):
            check = _is_nonzero if j == m else _is_zero
            assert check(grads, _stage_names(method, j)), (m, j, "stage")
            assert check(grads, _head_names(method, j)), (m, j, "head")
        # every trainable parameter of head m is used by L_m
        assert all(grads[n] is not None for n in _head_names(method, m))


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_loco_losses_reach_their_two_stages_and_middle_stages_get_two(tiny_method, family):
    method = tiny_method(family, overlap=True)
    losses = method.stage_losses(_views())
    s = len(losses)
    per_loss = [_grads(method, loss) for loss in losses]
    total = _grads(method, torch.stack(losses).sum())
    for i, grads in enumerate(per_loss):
        allowed = {i, min(i + 1, s - 1)}  # the last stage gets a plain local loss
        for j in range(s):
            check = _is_nonzero if j in allowed else _is_zero
            assert check(grads, _stage_names(method, j)), (i, j)
            check = _is_nonzero if j == i else _is_zero
            assert check(grads, _head_names(method, j)), (i, j, "head")
    for j in range(s):
        names = _stage_names(method, j)
        contributing = [i for i, g in enumerate(per_loss) if _is_nonzero(g, names)]
        assert contributing == ([0] if j == 0 else [j - 1, j])
        # the total gradient on S_j is exactly the sum of the contributing local gradients
        for n in names:
            parts = [per_loss[i][n] for i in contributing if per_loss[i][n] is not None]
            expected = torch.stack(parts).sum(0) if parts else None
            if expected is None:
                assert total[n] is None or not total[n].any()
            else:
                torch.testing.assert_close(total[n], expected, rtol=1e-5, atol=1e-7)


def test_loco_decoder_pass_does_not_touch_bn_statistics():
    """The shared stage runs twice under LoCo, but BN buffers are updated once per step, and by
    exactly the same forward as under GIM (same weights, same inputs)."""
    torch.manual_seed(0)
    bb = build_tiny_backbone("resnet")
    gim = GreedyLocal(copy.deepcopy(bb), GreedyLocal.Config(overlap=False), TINY_DATA)
    loco = GreedyLocal(copy.deepcopy(bb), GreedyLocal.Config(overlap=True), TINY_DATA)
    views = _views()
    gim.stage_losses(views)
    loco.stage_losses(views)
    buffers = dict(loco.backbone.model.named_buffers())
    for name, ref in gim.backbone.model.named_buffers():
        assert torch.equal(buffers[name], ref), name
        if name.endswith("num_batches_tracked"):
            assert int(ref) == 1
    assert all(m.track_running_stats for m in loco.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


@pytest.mark.parametrize("overlap", [False, True])
def test_heads_are_distinct_and_sized_for_their_input(tiny_method, overlap):
    method = tiny_method("resnet", overlap=overlap, proj_dim=16)
    assert len({id(h) for h in method.heads}) == 4
    ptrs = [p.data_ptr() for h in method.heads for p in h.parameters()]
    assert len(ptrs) == len(set(ptrs)), "a parameter is shared between heads"
    for i, head in enumerate(method.heads):
        src = min(i + 1, 3) if overlap else i
        assert head[0].in_features == method.stage_dim(src)
    assert method.eval_backbone() is method.backbone


def test_forward_sums_and_logs_stage_losses(tiny_method):
    method = tiny_method("vit")
    out = method(_views(), StepInfo(0, 1, 1))
    stages = [out[f"loss_stage{i}"] for i in range(1, 5)]
    torch.testing.assert_close(out["loss"].detach(), torch.stack(stages).sum())
    assert out["loss"].requires_grad and not any(v.requires_grad for v in stages)


def test_objective_is_pluggable(tiny_method, monkeypatch):
    monkeypatch.setitem(OBJECTIVES, "mse", lambda cfg: lambda z1, z2: (z1 - z2).pow(2).mean())
    method = tiny_method("resnet", objective="mse", head_batch_norm=False)
    v = _views()
    losses = method.stage_losses([v[0], v[0]])  # identical views: MSE is exactly 0
    assert all(float(loss.detach()) == 0.0 for loss in losses)


def test_bad_config_is_a_user_error(tiny_method):
    with pytest.raises(UserError, match="num_stages"):
        tiny_method("resnet", num_stages=5)
    with pytest.raises(UserError, match="did you mean 'nt_xent'"):
        tiny_method("resnet", objective="nt_xnet")


@pytest.mark.parametrize("overlap", [False, True])
def test_bn_per_view_keeps_the_views_apart(tiny_method, monkeypatch, overlap):
    """With ``bn_per_view`` a view's embeddings do not depend on the other view (BatchNorm
    statistics per view); in one joint pass they do (shared batch statistics). The invariants of
    the stages hold either way."""
    seen: list[tuple[Tensor, Tensor]] = []
    monkeypatch.setitem(OBJECTIVES, "spy", lambda cfg: lambda z1, z2: (
        seen.append((z1.detach(), z2.detach())), (z1 * z2).sum())[1])
    v1, v2 = _views()
    for per_view in (True, False):
        torch.manual_seed(0)
        method = tiny_method("resnet", objective="spy", overlap=overlap, bn_per_view=per_view)
        seen.clear()
        method.stage_losses([v1, v2])
        first = [z1 for z1, _ in seen]
        seen.clear()
        method.stage_losses([v1, v2 * 3 + 1])
        same = all(torch.equal(a, z1) for a, (z1, _) in zip(first, seen))
        assert same is per_view, (per_view, overlap)
    # gradient isolation is unchanged by per-view passes
    method = tiny_method("resnet", overlap=False, bn_per_view=True)
    losses = method.stage_losses(_views())
    for m, loss in enumerate(losses):
        grads = _grads(method, loss)
        for j in range(4):
            check = _is_nonzero if j == m else _is_zero
            assert check(grads, _stage_names(method, j)), (m, j)
