"""The pretraining loop: plain PyTorch, in the MAE/DINO style.

Each step is :func:`train_step`, in the order of the method contract (``ssl/base.py``): set lr /
weight decay (pure functions of the step) -> before_step -> views on the device -> autocast
forward -> loss kept on the device -> backward -> after_backward -> optional clipping ->
optimizer step -> after_step. The steady state has no host sync: every ``log_every`` steps, at
checkpoint steps and at the last, one collective reads the losses since the previous read (the
non-finite check, all ranks agree, naming the first bad step) and any rank's SIGTERM; then the
loop logs. Data held in memory is indexed where it lives (on the GPU when it fits there,
:func:`_batches`), without a DataLoader. Checkpoints are atomic and hold everything
needed to continue bit-for-bit: model, optimizer, scaler, step, RNG states, accumulated wall
time.

A checkpoint is committed to disk only once it is known to be good: at a checkpoint step the
state is copied to memory, and written after the next step's forward pass on those weights gave
a finite loss (the final checkpoint, whose weights no further step checks, is written at once).
All parameters and buffers must be finite too. After a non-finite loss, the checkpoint on disk
therefore resumes with a lower lr. SIGTERM (Slurm pre-emption) stops training at the
next such read (within ``log_every`` steps), on every rank alike, after writing a checkpoint
(:class:`Preempted`).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .datasets import ImageDataset
from .distributed import all_reduce_mean, is_dist, is_main, rank, world_size
from .errors import UserError
from .optim import create_optimizer
from .schedules import cosine_with_warmup, scaled_lr
from .ssl.base import SSLMethod, StepInfo
from .tracking import Tracker
from .utils import atomic_write_text, remove_stale_temp_files


class TrainingError(Exception):
    """The run failed (e.g. non-finite loss); printed as one line, exit code 1."""


class Preempted(TrainingError):
    """SIGTERM (what Slurm sends before pre-emption) stopped training at the end of a step,
    after a checkpoint of that step was written; ``sslbench pretrain RUN`` continues it exactly.
    The CLI prints the message as one line and exits with code 143 (128 + SIGTERM), the code a
    process killed by SIGTERM reports to a shell."""

    exit_code = 143
    resumable = True

    def __init__(self, step: int, checkpoint: Path, run_dir: Path) -> None:
        self.step, self.checkpoint, self.run_dir = step, checkpoint, run_dir
        super().__init__(f"stopped by SIGTERM after step {step}; checkpoint saved in "
                         f"{checkpoint}; continue with: sslbench pretrain {run_dir}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.step, self.checkpoint, self.run_dir)


@contextlib.contextmanager
def _sigterm_flag() -> Iterator[dict[str, bool]]:
    """While active (main thread only), SIGTERM sets ``flag["set"]`` instead of killing the
    process; the previous handler is restored on exit."""
    flag = {"set": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        flag["set"] = True

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _cpu_copy(x: Any) -> Any:
    """A deep copy of a (nested) state dict with every tensor copied to the CPU."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", copy=True)
    if isinstance(x, dict):
        return type(x)((k, _cpu_copy(v)) for k, v in x.items())
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple
        return type(x)(*(_cpu_copy(v) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(_cpu_copy(v) for v in x)
    return copy.deepcopy(x)


def _all_finite(state: dict[str, Any]) -> bool:
    """Whether every floating-point tensor of a state dict is finite (one device sync)."""
    flags = [torch.isfinite(v).all().reshape(1) for v in state.values()
             if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())]
    return bool(torch.cat([f.to(flags[0].device) for f in flags]).all()) if flags else True


@dataclass
class FitResult:
    steps: int
    images_seen: int
    wall_time_s: float
    img_per_s: float
    final_loss: float
    # model FLOPs (forward + backward, every view) per source image, counted on the first step
    # this process ran (torch.utils.flop_counter: matmuls, convolutions, attention); None when
    # no step ran here (a finished run resumed). total_flops = flops_per_image x images_seen.
    flops_per_image: Optional[float] = None
    total_flops: Optional[float] = None


class StepBatches(torch.utils.data.Sampler):
    """Deterministic, resumable batch sampler: the batch of step ``s`` depends only on
    (seed, s). Each epoch is a fresh permutation; the last incomplete global batch is dropped;
    every process takes its contiguous slice of the global batch."""

    def __init__(self, n: int, global_batch: int, seed: int, start: int, total: int) -> None:
        if global_batch > n:
            raise TrainingError(f"train.batch_size={global_batch} exceeds the {n} training "
                                f"images; lower train.batch_size")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.start, self.total = start, total
        self.steps_per_epoch = n // global_batch
        self.local = global_batch // world_size()
        self._perm: tuple[int, torch.Tensor] = (-1, torch.empty(0, dtype=torch.long))

    def indices(self, step: int) -> torch.Tensor:
        epoch, b = divmod(step, self.steps_per_epoch)
        if self._perm[0] != epoch:  # drawn once per epoch
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        glob = self._perm[1][b * self.global_batch:(b + 1) * self.global_batch]
        return glob[rank() * self.local:(rank() + 1) * self.local]

    def __iter__(self) -> Iterator[list[int]]:
        for s in range(self.start, self.total):
            yield self.indices(s).tolist()

    def __len__(self) -> int:
        return self.total - self.start


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def total_steps(cfg: Any, n_train: int) -> tuple[int, int]:
    spe = max(1, n_train // cfg.train.batch_size)
    total = cfg.train.max_steps if cfg.train.max_steps else max(1, round(cfg.train.epochs * spe))
    return int(total), spe


class _Progress:
    """tqdm bar with img/s and ETA on rank 0 in a terminal; silent under --quiet / in CI logs."""

    def __init__(self, start: int, total: int, quiet: bool) -> None:
        self.bar = None
        if is_main() and not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="pretrain", unit="step",
                            dynamic_ncols=True, smoothing=0.1)

    def update(self, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Every group's lr (times its ``lr_scale``) and, unless ``apply_wd`` is False, its weight
    decay."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
        if g.get("apply_wd", True):
            g["weight_decay"] = weight_decay


def train_step(method: SSLMethod, optimizer: torch.optim.Optimizer, info: StepInfo, *,
               images: Optional[torch.Tensor] = None, views: Any = None,
               model: Optional[nn.Module] = None, device: Optional[torch.device] = None,
               precision: str = "fp32", scaler: Optional[torch.amp.GradScaler] = None,
               clip_grad: Optional[float] = None, lr_wd: Optional[tuple[float, float]] = None,
               check: Optional[Callable[[torch.Tensor, StepInfo], None]] = None,
               flops: Optional[FlopCounterMode] = None) -> dict[str, torch.Tensor]:
    """One optimisation step, in the order of the method contract (``sslbench/ssl/base.py``)::

        [lr / weight decay] -> before_step -> views -> autocast forward -> [check(loss)]
        -> backward -> after_backward -> [global clipping] -> optimizer step -> after_step

    The engine, the conformance kit and the tests all step through here. ``images`` (a uint8
    batch, moved to ``device`` when given) go through ``make_views``; ``views`` made beforehand
    skip it. ``model`` is what is called (the DDP wrapper; default the method). ``check`` sees
    the loss before the backward pass and may raise (the engine's non-finite check). With a
    ``scaler`` (fp16), hooks and clipping see unscaled gradients. ``flops`` (a
    ``torch.utils.flop_counter.FlopCounterMode``) counts the model FLOPs of forward and backward,
    not those of the augmentation or the optimizer. Returns ``forward``'s dict."""
    if lr_wd is not None:
        set_lr_wd(optimizer, *lr_wd)
    method.before_step(info)
    if views is None:
        views = method.make_views(images if device is None
                                  else images.to(device, non_blocking=True))
    with flops if flops is not None else contextlib.nullcontext():
        with _autocast(device, precision):
            out = (method if model is None else model)(views, info)
        loss = out["loss"]
        if check is not None:
            check(loss, info)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
    if scaler is not None and scaler.is_enabled():  # fp16: hooks and clipping see true gradients
        scaler.unscale_(optimizer)
    method.after_backward(info)
    if clip_grad:
        nn.utils.clip_grad_norm_(method.parameters(), clip_grad)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    method.after_step(info)
    return out


def fit(method: SSLMethod, train: ImageDataset, cfg: Any, run_dir: Path, device: torch.device,
        tracker: Tracker, quiet: bool = False) -> FitResult:
    """Pretrain ``method`` on ``train``; resumes from ``run_dir/checkpoint.pt`` when present.

    Raises :class:`TrainingError` when training fails (the last good checkpoint is kept),
    :class:`Preempted` after SIGTERM, and ``UserError`` for an unreadable checkpoint."""
    if is_main():
        remove_stale_temp_files(run_dir)  # left by a process killed while writing
    with _sigterm_flag() as stop:
        return _fit(method, train, cfg, run_dir, device, tracker, quiet, stop)


def _fit(method: SSLMethod, train: ImageDataset, cfg: Any, run_dir: Path, device: torch.device,
         tracker: Tracker, quiet: bool, stop: dict[str, bool]) -> FitResult:
    tcfg, ocfg = cfg.train, cfg.optim
    precision = resolve_precision(tcfg.precision, device)
    global_batch = tcfg.batch_size
    if global_batch % world_size():
        raise TrainingError(f"train.batch_size={global_batch} is not divisible by the "
                            f"{world_size()} processes")
    total, spe = total_steps(cfg, len(train))
    peak_lr = scaled_lr(ocfg.lr, global_batch, ocfg.lr_scaling)
    warmup = round(ocfg.warmup_epochs * spe)
    method, model, optimizer, scaler = _prepare(method, cfg, device, precision)
    ckpt = _Checkpoints(run_dir, method, optimizer, scaler, cfg)
    start, wall_before, images_before, resumed_loss = ckpt.resume()
    loader = _batches(train, cfg, start, total, device)
    method.train()
    progress = _Progress(start, total, quiet)
    guard = _LossGuard(stop, ckpt)
    t0, images, last_loss = time.perf_counter(), images_before, resumed_loss
    log = _StepLog(tracker, tcfg.log_every, total, spe, t0, images)
    counter: Optional[FlopCounterMode] = FlopCounterMode(display=False)
    flops_per_image: Optional[float] = None
    try:
        for step, (x, _) in enumerate(loader, start=start):
            info = StepInfo(step=step, total_steps=total, steps_per_epoch=spe)
            lr, wd = _lr_wd(ocfg, step, total, warmup, peak_lr)
            out = train_step(method, optimizer, info, images=x, model=model, device=device,
                             precision=precision, scaler=scaler, clip_grad=ocfg.clip_grad,
                             lr_wd=(lr, wd), check=guard, flops=counter)
            if counter is not None:  # one step is representative: count it once
                flops_per_image, counter = counter.get_total_flops() / len(x), None
            images += global_batch
            done = step + 1
            if done % tcfg.log_every == 0 or done % tcfg.checkpoint_every == 0 or done == total:
                guard.flush()  # the only host sync of the loop: losses, SIGTERM
                last_loss = guard.loss
            now = time.perf_counter()
            log(done, now, images, last_loss, lr, wd, out)
            progress.update(loss=f"{last_loss:.3f}", lr=f"{lr:.3g}",
                            img_s=f"{(images - images_before) / max(1e-9, now - t0):.0f}")
            if guard.stop_requested:  # SIGTERM on some rank: every rank stops after this step
                ckpt.commit(ckpt.snapshot(done, wall_before + now - t0, images, last_loss), done)
                raise Preempted(done, ckpt.path, run_dir)
            if done % tcfg.checkpoint_every == 0 and done < total:
                ckpt.pending = (ckpt.snapshot(done, wall_before + now - t0, images, last_loss),
                                done)
    finally:
        progress.close()
    wall = wall_before + time.perf_counter() - t0
    if start < total:
        ckpt.commit(ckpt.snapshot(total, wall, images, last_loss), total)
    if stop["set"]:  # SIGTERM after the last step's check: the final checkpoint is written
        raise Preempted(total, ckpt.path, run_dir)
    run_images = images - images_before
    return FitResult(steps=total, images_seen=images, wall_time_s=wall,
                     img_per_s=run_images / max(1e-9, wall - wall_before) if run_images else 0.0,
                     final_loss=last_loss, flops_per_image=flops_per_image,
                     total_flops=None if flops_per_image is None else flops_per_image * images)


def _prepare(method: SSLMethod, cfg: Any, device: torch.device, precision: str
             ) -> tuple[SSLMethod, nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    """The method on ``device``, the module to call (the DDP wrapper when distributed), the
    optimizer and the grad scaler (enabled for fp16 only)."""
    if is_dist() and cfg.train.sync_bn and device.type == "cuda":
        # global BN (SimCLR) / SyncBN (MoCo v3, DINO): local BN statistics leak positives.
        # torch's SyncBatchNorm is GPU-only; CPU/gloo runs keep per-process BN.
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    method.to(device)
    if use_channels_last(cfg.train.channels_last, method, device):
        method.to(memory_format=torch.channels_last)  # 4-D weights NHWC; convs follow
    optimizer = create_optimizer(method.param_groups(cfg.optim.weight_decay), cfg.optim,
                                 fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if cfg.train.compile:  # in place: parameter names (and checkpoints) stay those of eager
        for child in method.children():  # backbone, heads, teachers; not the augmentation,
            if next(child.parameters(), None) is not None:  # whose draws must stay eager's
                child.compile()
    model: nn.Module = method
    if is_dist():
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(method, device_ids=ids)
    return method, model, optimizer, scaler


def use_channels_last(mode: str, method: nn.Module, device: torch.device) -> bool:
    """``train.channels_last``: auto = a convolutional backbone (tensor cores and oneDNN both
    prefer NHWC: the quickstart pretrains ~1.15x faster on 2 CPU cores)."""
    if mode != "auto":
        return mode == "always"
    family = getattr(getattr(method, "backbone", None), "family", "other")
    return family in ("resnet", "convnet")


def _batches(train: ImageDataset, cfg: Any, start: int, total: int,
             device: torch.device) -> Iterable[tuple[torch.Tensor, Any]]:
    """(uint8 images, _) of steps ``start`` .. ``total - 1`` (:class:`StepBatches`). A split held
    in memory is copied to ``device`` once and indexed there (``train.data_on_device``);
    otherwise a DataLoader decodes batches (in ``data.num_workers`` workers, pinned for CUDA)."""
    sampler = StepBatches(len(train), cfg.train.batch_size, cfg.train.seed, start, total)
    images = _on_device(train, cfg.train.data_on_device, device)
    if images is not None:
        return ((images[sampler.indices(s).to(device, non_blocking=True)], None)
                for s in range(start, total))
    return torch.utils.data.DataLoader(train, sampler=sampler, batch_size=None,
                                       num_workers=cfg.data.num_workers,
                                       pin_memory=device.type == "cuda",
                                       persistent_workers=False,
                                       # own generator: iterator creation must not consume
                                       # the global RNG (that would break exact resumption)
                                       generator=torch.Generator().manual_seed(cfg.train.seed))


def _on_device(train: ImageDataset, mode: str, device: torch.device) -> Optional[torch.Tensor]:
    """The training split's uint8 images on ``device``, or None to stream them."""
    if mode == "never":
        return None
    held = train.in_memory()
    if held is None:
        if mode == "always":
            raise UserError(f"train.data_on_device=always, but the split '{train.name}' is "
                            f"read lazily, not held in memory; set train.data_on_device=auto")
        return None
    if device.type == "cuda" and mode == "auto":
        free, _ = torch.cuda.mem_get_info(device)
        if held.numel() > free // 4:
            return None
    return held.to(device)


def _lr_wd(ocfg: Any, step: int, total: int, warmup: int, peak_lr: float) -> tuple[float, float]:
    """(lr, weight decay) of ``step``: pure functions of the step."""
    lr = cosine_with_warmup(step, total, warmup, peak_lr, ocfg.min_lr)
    wd = ocfg.weight_decay if ocfg.weight_decay_end is None else cosine_with_warmup(
        step, total, 0, ocfg.weight_decay, ocfg.weight_decay_end)
    return lr, wd


class _Checkpoints:
    """``run_dir/checkpoint.pt``: resuming from it, and committing a snapshot only once it is
    known to be good (see the module docstring)."""

    def __init__(self, run_dir: Path, method: SSLMethod, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, cfg: Any) -> None:
        self.run_dir, self.path = run_dir, run_dir / "checkpoint.pt"
        self.method, self.optimizer, self.scaler, self.cfg = method, optimizer, scaler, cfg
        self.committed: Optional[int] = None  # the step of the checkpoint on disk
        self.pending: Optional[tuple[dict[str, Any], int]] = None  # a snapshot awaiting its check

    def resume(self) -> tuple[int, float, int, float]:
        """Load the checkpoint on disk into the method, optimizer, scaler and RNG; returns its
        (step, wall time, images seen, loss), or (0, 0.0, 0, nan) without one."""
        if not self.path.is_file():
            return 0, 0.0, 0, float("nan")
        state = load_checkpoint(self.path)
        try:
            self.method.load_state_dict(state["method"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"][min(rank(), len(state["rng"]) - 1)])
            start, wall = int(state["step"]), float(state["wall_time_s"])
            images = int(state["images_seen"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
            raise UserError(f"{self.path} does not fit this run's method and optimizer "
                            f"({reason}); delete it to restart training from step 0, or "
                            f"continue it with the config it was written with") from None
        self.committed = start
        _truncate_metrics(self.run_dir / "metrics.jsonl", start)
        return start, wall, images, float(state.get("loss", float("nan")))

    def hint(self) -> str:
        return _resume_hint(self.path, self.committed, self.run_dir, self.cfg.optim.lr)

    def snapshot(self, step: int, wall: float, images: int, loss: float) -> dict[str, Any]:
        """Everything a checkpoint of ``step`` holds, copied to the CPU (on rank 0; the other
        ranks contribute their RNG state). Every rank calls it at the same step. Raises
        TrainingError on all ranks when any rank's parameters or buffers are non-finite."""
        model_state = self.method.state_dict()
        finite = _all_finite(model_state)
        rngs: list[Any] = [(rng_state(), finite)]
        if is_dist():
            gathered: list[Any] = [None] * world_size()
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if not all(ok for _, ok in rngs):
            raise TrainingError(
                f"parameters or buffers became non-finite by step {step} (loss {loss:.4g}); "
                f"training stopped. {self.hint()}")
        if not is_main():
            return {}
        return {"method": _cpu_copy(model_state),
                "optimizer": _cpu_copy(self.optimizer.state_dict()),
                "scaler": _cpu_copy(self.scaler.state_dict()), "step": step,
                "rng": [r for r, _ in rngs], "wall_time_s": wall, "images_seen": images,
                "loss": loss, "config": json.dumps(_plain(self.cfg))}

    def commit(self, snap: dict[str, Any], step: int) -> None:
        if is_main():
            save_checkpoint(self.path, snap)
        self.committed = step

    def commit_pending(self) -> None:
        """The pending snapshot's weights just gave a finite loss: keep it."""
        if self.pending is not None:
            self.commit(*self.pending)
            self.pending = None


class _LossGuard:
    """The engine's ``check`` for :func:`train_step`, without a host sync per step: each step's
    loss stays on the device; :meth:`flush` (at log, checkpoint and last steps) reads every loss
    since the previous flush and whether any rank got SIGTERM in ONE collective and one sync. A
    non-finite loss stops training there, naming the first step that gave it (all ranks agree);
    the pending checkpoint is committed once the step run on its weights is known finite."""

    def __init__(self, stop: dict[str, bool], ckpt: _Checkpoints) -> None:
        self.stop, self.ckpt = stop, ckpt
        self.loss, self.stop_requested = float("nan"), False
        self.losses: list[torch.Tensor] = []
        self.first_step = 0

    def __call__(self, loss: torch.Tensor, info: StepInfo) -> None:
        if not self.losses:
            self.first_step = info.step
        self.losses.append(loss.detach().float().reshape(()))

    def flush(self) -> None:
        if not self.losses:
            return
        flag = torch.tensor([float(self.stop["set"])], device=self.losses[0].device)
        values = all_reduce_mean(torch.cat([torch.stack(self.losses), flag])).tolist()
        self.losses = []
        *losses, stop_frac = values
        pending = self.ckpt.pending[1] if self.ckpt.pending is not None else None
        for step, value in enumerate(losses, start=self.first_step):
            if not math.isfinite(value):
                raise TrainingError(f"loss is {value} at step {step}; training stopped. "
                                    f"{self.ckpt.hint()}")
            if step == pending:  # the snapshot's weights gave a finite loss: keep it
                self.ckpt.commit_pending()
        self.loss, self.stop_requested = losses[-1], stop_frac > 0


class _StepLog:
    """Logs every ``log_every`` steps and at the last: loss, lr, wd, img/s since the previous
    log line, epoch, and the method's extra scalars."""

    def __init__(self, tracker: Tracker, every: int, total: int, spe: int, t0: float,
                 images: int) -> None:
        self.tracker, self.every, self.total, self.spe = tracker, every, total, spe
        self.t, self.images = t0, images

    def __call__(self, done: int, now: float, images: int, loss: float, lr: float, wd: float,
                 out: dict[str, torch.Tensor]) -> None:
        if done % self.every and done != self.total:
            return
        ips = (images - self.images) / max(1e-9, now - self.t)
        extras = {k: float(v) for k, v in out.items() if k != "loss"}
        self.tracker.log({"train/loss": loss, "train/lr": lr, "train/wd": wd,
                          "train/img_per_s": ips, "train/epoch": done / self.spe, **extras},
                         step=done)
        self.t, self.images = now, images


def _resume_hint(ckpt_path: Path, committed: Optional[int], run_dir: Path, lr: float) -> str:
    if committed is None:
        return (f"No checkpoint passed the finite check; start again with a lower lr: "
                f"sslbench pretrain {run_dir} optim.lr=<lower than {lr:g}> (or set "
                f"optim.clip_grad)")
    return (f"The last good checkpoint (step {committed}) is kept in {ckpt_path}; continue it "
            f"with a lower lr: sslbench pretrain {run_dir} optim.lr=<lower than {lr:g}> "
            f"(or set optim.clip_grad)")


def _plain(cfg: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be re-logged)."""
    if not path.is_file() or not is_main():
        return
    keep = [ln for ln in path.read_text().splitlines()
            if ln.strip() and (json.loads(ln).get("step") or 0) <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))
