"""Faults in training and in files: non-finite training, SIGTERM, stale temp files, file modes,
byte-identical weights, corrupt files (one line, no traceback) and a full disk."""
from __future__ import annotations

import errno
import hashlib
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import write_recipe
from sslbench.checkpoint import load_checkpoint, save_checkpoint
from sslbench.recipe import load_recipe
from sslbench.engine import Preempted, TrainingError, _sigterm_flag, fit
from sslbench.errors import UserError

THREADS = min(2, os.cpu_count() or 1)
# tiny SimCLR on the embedded data; the thread count is fixed so that runs in other processes
# compute bit for bit the same
SMALL = {"train": {"max_steps": 6, "batch_size": 32, "checkpoint_every": 2, "log_every": 1,
                   "threads": THREADS}}
INFO = {"path": "r.yaml", "sha256": "x", "name": "r"}


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cfg(path: Path, extra: dict | None = None):
    """SMALL, with the sections of ``extra`` updated, written to ``path`` and loaded."""
    overrides = {section: dict(values) for section, values in SMALL.items()}
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    return load_recipe(write_recipe(path, overrides))


def _fit(cfg, run_dir: Path):
    """``engine.fit`` on a freshly built method, seeded as ``run.pretrain`` seeds rank 0."""
    from sslbench.datasets import get_split, load_splits
    from sslbench.run import build_method
    from sslbench.tracking import Tracker
    from sslbench.utils import seed_everything

    train = get_split(load_splits(cfg.data), cfg.data.train_split, "pretraining")
    method = build_method(cfg)
    seed_everything(cfg.train.seed * 1000)
    run_dir.mkdir(parents=True, exist_ok=True)
    return fit(method, train, cfg, run_dir, torch.device("cpu"), Tracker(None), quiet=True)


def _finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# -- non-finite training ------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("warmup", [0.0, 0.1], ids=["issue-scenario", "warmup-keeps-step-1"])
def test_non_finite_training_leaves_a_checkpoint_that_resumes_with_lower_lr(tmp_path, warmup):
    """lr 1e30 with a checkpoint every step: the loss is finite at step 0 and NaN at step 1
    (without warmup) or 2 (with warmup: step 0 has lr 0). A checkpoint whose weights never gave
    a finite loss is not kept; continuing the run directory with lr 0.01 completes."""
    run = tmp_path / "run"
    bad = _cfg(tmp_path / "bad.yaml", {"optim": {"lr": 1e30, "warmup_epochs": warmup},
                                       "train": {"checkpoint_every": 1, "max_steps": 4}})
    with pytest.raises(TrainingError, match=r"^loss is (nan|inf|-inf) at step \d") as e:
        _fit(bad, run)
    message = str(e.value)
    assert "\n" not in message
    assert f"sslbench pretrain {run} optim.lr=<lower" in message
    ckpt = run / "checkpoint.pt"
    if warmup:  # step 0 (lr 0) left the initial weights, which gave a finite loss at step 1
        assert f"checkpoint (step 1) is kept in {ckpt}" in message
        state = torch.load(ckpt, weights_only=True)
        assert state["step"] == 1 and _finite(state["method"])
    else:  # the weights after step 0 (~1e28) gave NaN at once: nothing passed the check
        assert "loss is nan at step 1" in message and not ckpt.exists()

    (run / ".checkpoint.pt.k2j9x_0a.tmp").write_bytes(b"half a file")  # a killed write's leftover
    good = _cfg(tmp_path / "good.yaml", {"optim": {"lr": 0.01, "warmup_epochs": warmup},
                                         "train": {"checkpoint_every": 1, "max_steps": 4}})
    result = _fit(good, run)
    assert result.steps == 4 and math.isfinite(result.final_loss)
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    assert not list(run.glob("*.tmp"))


# -- SIGTERM ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted tiny pretraining (``run.pretrain``) of SMALL."""
    from sslbench.run import pretrain

    root = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        cfg = _cfg(root / "r.yaml")
        pretrain(cfg, INFO, root / "run", quiet=True)
    return root / "run"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_resumes_bit_identical(tmp_path,
                                                                        reference_run):
    """`sslbench pretrain` gets SIGTERM after its first checkpoint: one line, exit 143, a
    checkpoint of the step it was in; continuing gives the uninterrupted run's bytes."""
    from safetensors.torch import load_file

    from sslbench.cli import main

    _cfg(tmp_path / "r.yaml")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "sslbench", "pretrain", "r.yaml", "--out",
                             "run", "-q"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoint.pt").exists():  # the first checkpoint (step 2) is on disk
            assert proc.poll() is None, f"exited early ({proc.returncode}): {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert err.count("\n") == 1 and err.startswith("sslbench: "), err[-2000:]
    assert "SIGTERM" in err and "sslbench pretrain run" in err
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert 2 < state["step"] < 6, "SIGTERM must stop the run at the end of the current step"
    assert not (run / "backbone.safetensors").exists()
    assert not list(run.glob("*.tmp"))

    assert main(["pretrain", "run", "-q"]) == 0  # continue the pre-empted run
    resumed, full = load_file(str(run / "backbone.safetensors")), load_file(
        str(reference_run / "backbone.safetensors"))
    assert resumed.keys() == full.keys()
    assert all(torch.equal(resumed[k], full[k]) for k in full)
    assert _sha(run / "backbone.safetensors") == _sha(reference_run / "backbone.safetensors")


def test_sigterm_in_process_raises_preempted_and_restores_the_handler(tmp_path, monkeypatch):
    from sslbench.ssl.simclr import SimCLR

    def term_at_step_0(self, info):
        if info.step == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(SimCLR, "before_step", term_at_step_0)

    def mine(signum, frame):
        raise AssertionError("fit must handle SIGTERM itself")

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        with pytest.raises(Preempted) as e:
            _fit(_cfg(tmp_path / "r.yaml", {"train": {"max_steps": 3, "checkpoint_every": 100}}),
                 tmp_path / "run")
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert isinstance(e.value, TrainingError) and e.value.exit_code == 143
    assert e.value.step == 1 and e.value.checkpoint == tmp_path / "run" / "checkpoint.pt"
    assert str(e.value).startswith("stopped by SIGTERM after step 1; checkpoint saved in ")
    assert torch.load(e.value.checkpoint, weights_only=True)["step"] == 1


def test_sigterm_handler_only_in_the_main_thread():
    seen = {}

    def worker():
        with _sigterm_flag() as flag:
            seen["handler"] = signal.getsignal(signal.SIGTERM)
            seen["flag"] = flag

    before = signal.getsignal(signal.SIGTERM)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen["handler"] is before and seen["flag"] == {"set": False}
    with _sigterm_flag() as flag:
        assert signal.getsignal(signal.SIGTERM) is not before
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert flag["set"]
    assert signal.getsignal(signal.SIGTERM) is before


def _ddp_sigterm_worker(rank, world, port, recipe, run_dir, out):
    import torch.distributed as dist

    from sslbench.ssl.simclr import SimCLR

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    if rank == 1:  # only one rank gets the signal; both must stop after the same step
        def term_at_step_1(self, info):
            if info.step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

        SimCLR.before_step = term_at_step_1
    try:
        _fit(load_recipe(recipe), Path(run_dir))
        out[rank] = None
    except Preempted as e:
        out[rank] = e.step
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    import torch.multiprocessing as mp

    from sslbench.distributed import free_port

    recipe = write_recipe(tmp_path / "r.yaml", {"train": {**SMALL["train"], "threads": 1,
                                                          "checkpoint_every": 100}})
    out = mp.Manager().dict()
    mp.spawn(_ddp_sigterm_worker, args=(2, free_port(), str(recipe), str(tmp_path / "run"), out),
             nprocs=2, join=True)
    assert dict(out) == {0: 2, 1: 2}
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and len(state["rng"]) == 2


# -- temp files, modes, identical bytes ---------------------------------------------------------

def test_remove_stale_temp_files_only_removes_atomic_write_leftovers(tmp_path):
    from sslbench.utils import remove_stale_temp_files

    stale = [tmp_path / ".checkpoint.pt.a1b2c3d4.tmp", tmp_path / ".run.json.x_9yz0ab.tmp"]
    kept = [tmp_path / "checkpoint.pt", tmp_path / "notes.tmp", tmp_path / ".hidden.tmp",
            tmp_path / ".checkpoint.pt.toolong123.tmp", tmp_path / "sub" / ".m.json.a1b2c3d4.tmp"]
    for p in stale + kept:
        p.parent.mkdir(exist_ok=True)
        p.write_text("x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert remove_stale_temp_files(tmp_path / "missing") == []

    # atomic_write's temp files match the pattern (a SIGKILL mid-write leaves one behind)
    import sslbench.utils as utils

    names: list[str] = []
    utils.atomic_write(tmp_path / "run.json", lambda p: (names.append(p.name), p.write_text("{}")))
    assert utils._TEMP_NAME.match(names[0]) and (tmp_path / "run.json").read_text() == "{}"


def test_written_files_honour_the_umask(tmp_path):
    code = ("import os, sys; os.umask(int(sys.argv[1], 8)); "
            "from sslbench.utils import atomic_write_text, atomic_write_json; "
            "atomic_write_text('t.txt', 'x'); atomic_write_json('j.json', {}); "
            "print(oct(os.stat('t.txt').st_mode & 0o777), oct(os.stat('j.json').st_mode & 0o777))")
    procs = {}
    for mask in ("022", "077"):
        (tmp_path / mask).mkdir()
        procs[mask] = subprocess.Popen([sys.executable, "-c", code, mask], cwd=tmp_path / mask,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    modes = {}
    for mask, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        modes[mask] = out.split()
    assert modes == {"022": ["0o644", "0o644"], "077": ["0o600", "0o600"]}


def _tiny_backbone():
    from omegaconf import OmegaConf

    from sslbench.backbones import create_backbone
    from sslbench.config import BackboneConfig

    torch.manual_seed(0)
    return create_backbone(OmegaConf.structured(BackboneConfig(name="test_resnet")), 32)


def test_save_backbone_gives_the_same_bytes_every_time(tmp_path):
    from sslbench.backbones import load_backbone, save_backbone

    bb = _tiny_backbone()
    digests = {_sha(save_backbone(bb, tmp_path / f"b{i}.safetensors")) for i in range(8)}
    assert len(digests) == 1  # safetensors alone orders the metadata differently each time
    back = load_backbone(tmp_path / "b0.safetensors")
    assert back.name == "test_resnet" and back.metadata() == bb.metadata()
    for k, v in bb.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[k], v), k


@pytest.mark.slow
def test_identical_runs_give_byte_identical_backbones(tmp_path, reference_run):
    from sslbench.run import pretrain

    pretrain(_cfg(tmp_path / "r.yaml"), INFO, tmp_path / "again", quiet=True)
    assert _sha(tmp_path / "again" / "backbone.safetensors") == _sha(
        reference_run / "backbone.safetensors")


# -- corrupt files ------------------------------------------------------------------------------

class _Evil:
    """Unpickling this would run a shell command; weights-only loading must refuse it."""

    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'pwned'}",))


def _valid_checkpoint(path: Path) -> Path:
    return save_checkpoint(path, {"method": {"w": torch.ones(64)}, "optimizer": {},
                                  "scaler": {}, "step": 3, "rng": [], "wall_time_s": 1.0,
                                  "images_seen": 96})


def _corrupt(kind: str, good: Path, target: Path) -> Path:
    data = good.read_bytes()
    if kind == "truncated":
        target.write_bytes(data[:len(data) // 2])
    elif kind == "garbage":
        target.write_bytes(b"\x00\xffnot a file of this kind\n" * 40)
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "pickle":
        torch.save({"method": _Evil()}, target)
    elif kind == "raw-pickle":  # plain pickle, protocol 4 (torch.load warns about it)
        target.write_bytes(pickle.dumps({"method": _Evil()}, protocol=4))
    return target


def _one_line(e: pytest.ExceptionInfo, path: Path, kind: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path} is corrupt or not a {kind} ("), msg
    assert "); " in msg  # <file> is corrupt or not a <kind> (<reason>); <fix>
    return msg


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "pickle", "raw-pickle"])
def test_corrupt_checkpoint_is_one_line_user_error(tmp_path, recwarn, kind):
    good = _valid_checkpoint(tmp_path / "good.pt")
    assert load_checkpoint(good)["step"] == 3
    bad = _corrupt(kind, good, tmp_path / "checkpoint.pt")
    with pytest.raises(UserError) as e:
        load_checkpoint(bad)
    msg = _one_line(e, bad, "valid sslbench checkpoint")
    assert msg.endswith("delete it to restart training from step 0, or restore it from a backup")
    if kind == "pickle":
        assert "(it pickles posix.system, which weights-only loading refuses); " in msg
    assert not (tmp_path / "pwned").exists()
    assert not [str(w.message) for w in recwarn]  # nothing but the one line


def test_checkpoint_without_its_keys_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(UserError, match=r"not a valid sslbench checkpoint \(missing method, "):
        load_checkpoint(path)


def test_fit_on_a_corrupt_checkpoint_refuses_before_training(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    bad = _corrupt("truncated", _valid_checkpoint(tmp_path / "good.pt"), run / "checkpoint.pt")
    before = _sha(bad)
    with pytest.raises(UserError, match="is corrupt or not a valid sslbench checkpoint"):
        _fit(_cfg(tmp_path / "r.yaml"), run)
    assert _sha(bad) == before


def test_checkpoint_of_another_model_is_refused(tmp_path):
    run = tmp_path / "run"
    _valid_checkpoint(run / "checkpoint.pt")  # has the keys, but not this method's weights
    with pytest.raises(UserError, match=r"does not fit this run's method and optimizer \("):
        _fit(_cfg(tmp_path / "r.yaml"), run)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_corrupt_backbone_is_one_line_user_error(tmp_path, kind):
    from sslbench.backbones import load_backbone, load_weights, save_backbone

    bb = _tiny_backbone()
    good = save_backbone(bb, tmp_path / "good.safetensors")
    run = tmp_path / "run"
    run.mkdir()
    bad = _corrupt(kind, good, run / "backbone.safetensors")
    with pytest.raises(UserError) as e:
        load_backbone(bad)
    msg = _one_line(e, bad, "safetensors file")
    assert f"sslbench pretrain {run}" in msg
    with pytest.raises(UserError) as e:
        load_weights(bb, bad)
    assert _one_line(e, bad, "safetensors file").endswith("backbone.checkpoint to a valid "
                                                           "weights file")


@pytest.mark.parametrize("kind", ["truncated", "garbage", "pickle"])
def test_corrupt_torch_weights_file_is_one_line_user_error(tmp_path, kind):
    from sslbench.backbones import load_weights

    bb = _tiny_backbone()
    good = tmp_path / "good.pt"
    torch.save(bb.model.state_dict(), good)
    load_weights(bb, good)
    bad = _corrupt(kind, good, tmp_path / "bad.pt")
    with pytest.raises(UserError) as e:
        load_weights(bb, bad)
    _one_line(e, bad, "weights file")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "pickle", "wrong-shape"])
@pytest.mark.parametrize("quiet", [False, True])
def test_corrupt_feature_cache_is_a_miss(tmp_path, capsys, kind, quiet):
    from sslbench.datasets.base import TensorImageDataset
    from sslbench.eval.features import cached_extract

    g = torch.Generator().manual_seed(0)
    ds = TensorImageDataset(torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=g),
                            torch.arange(10) % 2, ["a", "b"])
    calls = []

    def fn(x):
        calls.append(len(x))
        return x.float().flatten(1)[:, :4]

    feats, labels = cached_extract(fn, ds, torch.device("cpu"), 4, tmp_path, "k")
    path = tmp_path / f"k-{ds.fingerprint()}.pt"
    if kind == "wrong-shape":
        torch.save({"features": feats[:3], "labels": labels[:3]}, path)
    else:
        _corrupt(kind, path, path)
    calls.clear()
    capsys.readouterr()
    again = cached_extract(fn, ds, torch.device("cpu"), 4, tmp_path, "k", quiet=quiet)
    assert calls == [4, 4, 2]  # recomputed
    assert torch.equal(again[0], feats) and torch.equal(again[1], labels)
    err = capsys.readouterr().err
    if quiet:
        assert err == ""
    else:
        assert err.startswith(f"note: feature cache {path} is corrupt (") and err.count("\n") == 1
        assert err.rstrip().endswith("; recomputing it")
    calls.clear()
    cached_extract(fn, ds, torch.device("cpu"), 4, tmp_path, "k")  # the rewritten cache is used
    assert calls == []
    assert not (tmp_path / "pwned").exists()


# -- disk full ----------------------------------------------------------------------------------

def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = _valid_checkpoint(tmp_path / "checkpoint.pt")
    before = _sha(path)

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"the first megabytes of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as e:
        save_checkpoint(path, {"method": {"w": torch.zeros(64)}, "step": 4})
    assert e.value.errno == errno.ENOSPC
    assert _sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 3
