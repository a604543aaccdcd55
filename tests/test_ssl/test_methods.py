"""Every registered method x every backbone family it supports passes the conformance kit
(sslbench/conformance.py, also `sslbench check-method NAME`): builds on the tiny timm backbone,
finite loss, gradients reach the backbone and never the frozen parts, the loss decreases on a
fixed batch, deterministic under a seed, checkpoint round trip reproduces the next step exactly,
and (slow) one DistributedDataParallel step on 2 gloo processes. A new method is tested the
moment it registers."""
from __future__ import annotations

import pytest
import torch

from sslbench.conformance import Check, assert_conforms, check_ddp, check_method
from sslbench.ssl import METHODS, SSLMethod, register_method

CASES = [(m, fam) for m in METHODS.names() for fam in ("resnet", "vit", "convnet")
         if fam in METHODS.get(m).families]
IDS = [f"{m}-{f}" for m, f in CASES]
# DDP once per method and family kind that has a distinct code path (convnets read the pooled
# feature exactly as ResNets do)
DDP_CASES = [(m, f) for m, f in CASES if f != "convnet"]
DDP_IDS = [f"{m}-{f}" for m, f in DDP_CASES]


@pytest.mark.parametrize("name, family", CASES, ids=IDS)
def test_method_conforms(name, family):
    checks = assert_conforms(name, family, ddp=False)
    ran = {c.name for c in checks if c.ok}
    assert {"build", "views", "finite_loss", "grad_backbone", "frozen", "deterministic",
            "resume"} <= ran


@pytest.fixture(scope="module")
def ddp_checks():
    """The DDP check of every case, all in one pair of gloo processes: spawning two processes
    per case cost ~12 s each, most of it importing torch."""
    return check_ddp(DDP_CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name, family", DDP_CASES, ids=DDP_IDS)
def test_method_ddp_step_on_two_gloo_processes(ddp_checks, name, family):
    ddp = ddp_checks[(name, family)]
    assert ddp.ok, ddp.detail


def test_kit_catches_a_method_that_leaks_gradient_into_its_teacher():
    """The kit must be able to fail: a 'teacher' left trainable but excluded from the optimiser,
    and a loss that never reaches the backbone."""

    @register_method("test_leaky")
    class Leaky(SSLMethod):
        families = ("resnet",)

        def __init__(self, backbone, cfg, data):
            super().__init__(backbone, cfg, data)
            self.teacher = torch.nn.Linear(backbone.num_features, 4)
            self.teacher.weight.requires_grad_(False)

        def make_views(self, images):
            return [images.float() / 255.0]

        def forward(self, views, step):
            with torch.no_grad():
                feats = self.backbone(views[0])
            self.teacher.weight.requires_grad_(True)  # the bug: gradient reaches the teacher
            loss = self.teacher(feats).pow(2).mean()
            return {"loss": loss}

    try:
        checks = {c.name: c for c in check_method("test_leaky", ddp=False)}
    finally:
        METHODS.unregister("test_leaky")
    assert checks["grad_backbone"].ok is False
    assert checks["frozen"].ok is False
    assert isinstance(checks["build"], Check) and checks["build"].ok


DRIFTING_PLUGIN = '''
import torch
from sslbench.ssl import SSLMethod, register_method


@register_method("test_drifting")
class Drifting(SSLMethod):
    """Bug: a parameter nudged outside autograd with this rank's own random numbers, so the
    ranks' copies drift apart although DDP keeps the gradients in step."""
    families = ("resnet",)

    def __init__(self, backbone, cfg, data):
        super().__init__(backbone, cfg, data)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def make_views(self, images):
        return [images.float() / 255.0]

    def forward(self, views, step):
        with torch.no_grad():
            self.scale.add_(torch.randn(1))
        return {"loss": (self.backbone(views[0]) * self.scale).pow(2).mean()}
'''


@pytest.mark.slow
def test_ddp_check_catches_ranks_that_drift_apart_and_still_checks_the_next_case(tmp_path):
    plugin = tmp_path / "drifting.py"
    plugin.write_text(DRIFTING_PLUGIN)
    try:
        checks = check_ddp([("test_drifting", "resnet"), ("simclr", "resnet")],
                           plugins=[str(plugin)])
    finally:
        if "test_drifting" in METHODS.names():
            METHODS.unregister("test_drifting")
    bad, good = checks[("test_drifting", "resnet")], checks[("simclr", "resnet")]
    assert bad.ok is False and "ranks disagree on 'scale'" in bad.detail, bad.detail
    assert good.ok is True, good.detail
