"""The training loop: schedules, resumable checkpoints, non-finite loss handling."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import write_recipe
from sslbench.recipe import load_recipe
from sslbench.engine import StepBatches, TrainingError
from sslbench.run import pretrain
from sslbench.schedules import cosine_momentum, cosine_with_warmup, scaled_lr


def test_cosine_with_warmup_endpoints():
    assert cosine_with_warmup(0, 100, 10, 1.0) == 0.0
    assert cosine_with_warmup(5, 100, 10, 1.0) == pytest.approx(0.5)
    assert cosine_with_warmup(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 100, 10, 1.0, 0.0) == pytest.approx(0.5)
    assert cosine_with_warmup(100, 100, 10, 1.0, 1e-6) == pytest.approx(1e-6)


def test_cosine_momentum_spec_endpoints():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(1 - 0.01 / 2)
    assert cosine_momentum(100, 100, 0.99) == pytest.approx(1.0)


def test_lr_scaling_rules():
    assert scaled_lr(0.3, 512, "linear") == pytest.approx(0.6)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(0.075 * 64)
    assert scaled_lr(0.3, 512, "none") == 0.3


def test_step_batches_deterministic_and_cover_epoch():
    s = StepBatches(100, 20, seed=3, start=0, total=10)
    epoch0 = torch.cat([s.indices(i) for i in range(5)])
    assert sorted(epoch0.tolist()) == list(range(100))
    assert torch.equal(s.indices(7), StepBatches(100, 20, 3, 7, 10).indices(7))
    assert not torch.equal(s.indices(0), s.indices(5))  # new permutation each epoch


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(str(run_dir / "backbone.safetensors"))


def test_killed_run_resumes_bit_identical(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", {"train": {"max_steps": 6, "checkpoint_every": 3}})
    cfg = load_recipe(recipe)
    info = {"path": str(recipe), "sha256": "x", "name": "r"}
    pretrain(cfg, info, tmp_path / "full", quiet=True)

    # the same run, killed during step 4 (after its step-3 checkpoint), then resumed
    from sslbench.ssl.simclr import SimCLR

    def killed(self, step):
        if step.step == 4:
            raise KeyboardInterrupt

    SimCLR.before_step = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            pretrain(cfg, info, tmp_path / "part", quiet=True)
    finally:
        del SimCLR.before_step
    ckpt = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 3
    assert not (tmp_path / "part" / "backbone.safetensors").exists()
    pretrain(cfg, info, tmp_path / "part", quiet=True)

    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert full.keys() == resumed.keys()
    for k in full:
        torch.testing.assert_close(full[k], resumed[k], rtol=0, atol=0, msg=k)
    steps = [json.loads(l)["step"] for l in (tmp_path / "part" / "metrics.jsonl").open()]
    assert steps == sorted(set(steps)), "metric lines duplicated after resume"
    run = json.loads((tmp_path / "part" / "run.json").read_text())
    assert run["status"] == "done" and run["pretrain"]["steps"] == 6


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", {"train": {"max_steps": 8, "checkpoint_every": 2}})
    cfg = load_recipe(recipe)
    info = {"path": str(recipe), "sha256": "x", "name": "r"}
    from sslbench.ssl import simclr

    original = simclr.nt_xent_loss
    calls = {"n": 0}

    def exploding(*a, **k):
        calls["n"] += 1
        loss = original(*a, **k)
        return loss * math.nan if calls["n"] == 5 else loss

    simclr.nt_xent_loss = exploding
    try:
        with pytest.raises(TrainingError, match="loss is nan at step 4"):
            pretrain(cfg, info, tmp_path / "run", quiet=True)
    finally:
        simclr.nt_xent_loss = original
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    # the step-4 weights gave the NaN loss, so their checkpoint is not kept; step 2's gave a
    # finite loss at step 2
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["method"].values() if v.is_floating_point())
    assert not list((tmp_path / "run").glob("*.tmp"))


# -- the loop without host syncs ----------------------------------------------------------------

def test_in_memory_split_is_indexed_without_a_data_loader(tmp_path):
    """train.data_on_device: an in-memory split is indexed where it lives and gives exactly the
    DataLoader's batches, step for step (so results do not depend on the path)."""
    from sslbench.datasets import TensorImageDataset
    from sslbench.engine import _batches

    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    train = TensorImageDataset(images, torch.arange(50) % 3, ["a", "b", "c"]).subset(
        torch.arange(5, 45))  # a subset of an in-memory split is in memory too
    cfg = load_recipe(write_recipe(tmp_path / "r.yaml", {"train": {"batch_size": 16}}))
    fast = list(_batches(train, cfg, 2, 9, torch.device("cpu")))
    assert not isinstance(_batches(train, cfg, 2, 9, torch.device("cpu")),
                          torch.utils.data.DataLoader)
    cfg.train.data_on_device = "never"
    loader = _batches(train, cfg, 2, 9, torch.device("cpu"))
    assert isinstance(loader, torch.utils.data.DataLoader)
    slow = [x for x, _ in loader]
    assert len(fast) == len(slow) == 7
    for (a, _), b in zip(fast, slow):
        assert torch.equal(a, b)


def test_losses_are_read_once_per_log_interval(tmp_path, monkeypatch):
    """No host sync per step: with log_every=4 over 8 steps the losses are read (one collective
    each) at steps 4 and 8 only; a NaN at step 5 is found at the read of step 8, named by its own
    step, and the checkpoint of step 4 (whose weights gave step 4's finite loss) is kept."""
    from sslbench import engine
    from sslbench.ssl import simclr

    reads = []
    real = engine.all_reduce_mean
    monkeypatch.setattr(engine, "all_reduce_mean", lambda t: reads.append(t.numel()) or real(t))
    cfg = load_recipe(write_recipe(tmp_path / "r.yaml", {"train": {
        "max_steps": 8, "checkpoint_every": 4, "log_every": 4}}))
    info = {"path": "r.yaml", "sha256": "x", "name": "r"}
    pretrain(cfg, info, tmp_path / "ok", quiet=True)
    assert reads == [5, 5]  # 4 losses + the SIGTERM flag, twice

    original, calls = simclr.nt_xent_loss, {"n": 0}

    def exploding(*a, **k):
        calls["n"] += 1
        return original(*a, **k) * (math.nan if calls["n"] == 6 else 1.0)

    monkeypatch.setattr(simclr, "nt_xent_loss", exploding)
    with pytest.raises(TrainingError, match="loss is nan at step 5"):
        pretrain(cfg, info, tmp_path / "bad", quiet=True)
    assert torch.load(tmp_path / "bad" / "checkpoint.pt", weights_only=True)["step"] == 4


def _two_steps(tmp_path, name: str, steps: int = 2, **train) -> dict[str, torch.Tensor]:
    cfg = load_recipe(write_recipe(tmp_path / f"{name}.yaml", {"train": {
        "max_steps": steps, "batch_size": 32, **train}}))
    pretrain(cfg, {"path": "r.yaml", "sha256": "x", "name": "r"}, tmp_path / name, quiet=True)
    return _weights(tmp_path / name)


def test_channels_last_step_matches_contiguous(tmp_path):
    """One step in NHWC layout = one step in NCHW, up to summation order (after a few SGD steps
    the two trajectories drift apart the way any two summation orders do)."""
    eager = _two_steps(tmp_path, "nchw", steps=1, channels_last="never")
    nhwc = _two_steps(tmp_path, "nhwc", steps=1, channels_last="always")
    for k in eager:
        torch.testing.assert_close(nhwc[k], eager[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_compiled_steps_match_eager(tmp_path):
    """train.compile: the compiled backbone and head train to the eager weights (inductor on
    CPU; parameter names, and so checkpoints and exports, are unchanged)."""
    eager = _two_steps(tmp_path, "eager")
    compiled = _two_steps(tmp_path, "compiled", compile=True)
    assert compiled.keys() == eager.keys()
    for k in eager:
        torch.testing.assert_close(compiled[k], eager[k], rtol=1e-3, atol=1e-4, msg=k)
