"""Every registered method x every backbone family it supports (tiny timm models): a few
optimisation steps on the embedded benchmark with finite, decreasing loss, and a checkpoint
round trip that reproduces the next step exactly. A new method is tested the moment it
registers."""
from __future__ import annotations

import io
import math

import pytest
import torch

from sslbench.config import load_recipe
from sslbench.datasets.embedded import build_embedded
from sslbench.optim import create_optimizer
from sslbench.run import build_method
from sslbench.ssl import METHODS, StepInfo

TINY = {"resnet": "test_resnet", "vit": "test_vit"}
CASES = [(m, fam) for m in METHODS.names() for fam in ("resnet", "vit")
         if fam in METHODS.get(m).families]


def _setup(name: str, family: str):
    overrides = [f"method.name={name}", f"backbone.name={TINY[family]}", "optim.name=adamw"]
    if family == "resnet":
        overrides.append("backbone.small_input=false")  # stock stem: fast on CPU
    overrides += [f"method.{k}={v}" for k, v in METHODS.get(name).test_overrides.items()]
    cfg = load_recipe(None, overrides)
    method = build_method(cfg)
    opt = create_optimizer(method.param_groups(0.0), cfg.optim)
    for g in opt.param_groups:
        g["lr"] = 1e-3
    return cfg, method, opt


def _step(method, opt, views, info: StepInfo, seed: int) -> float:
    torch.manual_seed(seed)
    method.before_step(info)
    loss = method(views, info)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    method.after_backward(info)
    opt.step()
    method.after_step(info)
    return float(loss.detach())


@pytest.mark.parametrize("name, family", CASES, ids=[f"{m}-{f}" for m, f in CASES])
def test_method_trains_and_resumes_exactly(name, family):
    cfg, method, opt = _setup(name, family)
    x = build_embedded()["train"].images[:32]
    torch.manual_seed(0)
    views = method.make_views(x)
    total = 8
    losses = [_step(method, opt, views, StepInfo(s, total, 4), seed=s) for s in range(6)]
    assert all(math.isfinite(v) for v in losses), losses
    if not METHODS.get(name).memory_bank_loss:
        assert losses[-1] < losses[0], f"loss did not decrease on a fixed batch: {losses}"

    buf = io.BytesIO()
    torch.save({"method": method.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    _, clone, clone_opt = _setup(name, family)
    clone.load_state_dict(state["method"])
    clone_opt.load_state_dict(state["opt"])
    info = StepInfo(6, total, 4)
    a = _step(method, opt, views, info, seed=123)
    b = _step(clone, clone_opt, views, info, seed=123)
    assert a == b
    for (k, v), (_, w) in zip(method.state_dict().items(), clone.state_dict().items()):
        assert torch.equal(v, w), k
