"""The pretraining loop: plain PyTorch, in the MAE/DINO style.

Each step, in this fixed order: set lr / weight decay (pure functions of the step) -> method
hooks (before_step) -> views on the device -> autocast forward -> non-finite check (all ranks
agree) -> backward -> after_backward -> optional clipping -> optimizer step -> after_step (EMA,
queues, centres) -> log. Checkpoints are atomic and hold everything needed to continue
bit-for-bit: model, optimizer, scaler, step, RNG states, accumulated wall time.
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .datasets import ImageDataset
from .distributed import all_reduce_mean, is_dist, is_main, rank, world_size
from .optim import create_optimizer
from .schedules import cosine_with_warmup, scaled_lr
from .ssl.base import SSLMethod, StepInfo
from .tracking import Tracker
from .utils import atomic_write_text


class TrainingError(Exception):
    """The run failed (e.g. non-finite loss); printed as one line, exit code 1."""


@dataclass
class FitResult:
    steps: int
    images_seen: int
    wall_time_s: float
    img_per_s: float
    final_loss: float


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

    def indices(self, step: int) -> torch.Tensor:
        epoch, b = divmod(step, self.steps_per_epoch)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        glob = perm[b * self.global_batch:(b + 1) * self.global_batch]
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


def fit(method: SSLMethod, train: ImageDataset, cfg: Any, run_dir: Path, device: torch.device,
        tracker: Tracker, quiet: bool = False) -> FitResult:
    """Pretrain ``method`` on ``train``; resumes from ``run_dir/checkpoint.pt`` when present."""
    tcfg, ocfg = cfg.train, cfg.optim
    precision = resolve_precision(tcfg.precision, device)
    global_batch = tcfg.batch_size
    if global_batch % world_size():
        raise TrainingError(f"train.batch_size={global_batch} is not divisible by the "
                            f"{world_size()} processes")
    total, spe = total_steps(cfg, len(train))
    peak_lr = scaled_lr(ocfg.lr, global_batch, ocfg.lr_scaling)
    warmup = round(ocfg.warmup_epochs * spe)

    if is_dist() and tcfg.sync_bn and device.type == "cuda":
        # global BN (SimCLR) / SyncBN (MoCo v3, DINO): local BN statistics leak positives.
        # torch's SyncBatchNorm is GPU-only; CPU/gloo runs keep per-process BN.
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    method.to(device)
    groups = method.param_groups(ocfg.weight_decay)
    optimizer = create_optimizer(groups, ocfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    model: nn.Module = method
    if is_dist():
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(method, device_ids=ids)

    ckpt_path = run_dir / "checkpoint.pt"
    start, wall_before, images_before = 0, 0.0, 0
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"][min(rank(), len(state["rng"]) - 1)])
        start, wall_before = int(state["step"]), float(state["wall_time_s"])
        images_before = int(state["images_seen"])
        _truncate_metrics(run_dir / "metrics.jsonl", start)

    def save(step: int, wall: float, images: int) -> None:
        rngs = [rng_state()]
        if is_dist():
            gathered: list[Any] = [None] * world_size()
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if is_main():
            save_checkpoint(ckpt_path, {
                "method": method.state_dict(), "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(), "step": step, "rng": rngs,
                "wall_time_s": wall, "images_seen": images,
                "config": json.dumps(_plain(cfg)),
            })

    sampler = StepBatches(len(train), global_batch, tcfg.seed, start, total)
    loader = torch.utils.data.DataLoader(train, sampler=sampler, batch_size=None,
                                         num_workers=cfg.data.num_workers,
                                         pin_memory=device.type == "cuda",
                                         persistent_workers=False,
                                         # own generator: iterator creation must not consume
                                         # the global RNG (that would break exact resumption)
                                         generator=torch.Generator().manual_seed(tcfg.seed))
    method.train()
    progress = _Progress(start, total, quiet)
    t0, images, last_loss = time.perf_counter(), images_before, float("nan")
    t_log, img_log = t0, images
    step = start
    try:
        for step, (x, _) in enumerate(loader, start=start):
            info = StepInfo(step=step, total_steps=total, steps_per_epoch=spe)
            lr = cosine_with_warmup(step, total, warmup, peak_lr, ocfg.min_lr)
            wd = ocfg.weight_decay if ocfg.weight_decay_end is None else cosine_with_warmup(
                step, total, 0, ocfg.weight_decay, ocfg.weight_decay_end)
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
                if g.get("apply_wd", True):
                    g["weight_decay"] = wd
            method.before_step(info)
            x = x.to(device, non_blocking=True)
            views = method.make_views(x)
            with _autocast(device, precision):
                out = model(views, info)
            loss = out["loss"]
            loss_value = float(all_reduce_mean(loss.detach().float()))
            if not math.isfinite(loss_value):
                raise TrainingError(
                    f"loss is {loss_value} at step {step}; training stopped. The last good "
                    f"checkpoint is kept in {ckpt_path}. Lower optim.lr or set optim.clip_grad, "
                    f"then continue with: sslbench pretrain {run_dir} ")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if scaler.is_enabled():  # fp16: hooks and clipping must see true gradients
                scaler.unscale_(optimizer)
            method.after_backward(info)
            if ocfg.clip_grad:
                nn.utils.clip_grad_norm_(method.parameters(), ocfg.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            method.after_step(info)
            images += global_batch
            last_loss = loss_value
            done = step + 1
            now = time.perf_counter()
            if done % tcfg.log_every == 0 or done == total:
                ips = (images - img_log) / max(1e-9, now - t_log)
                extras = {k: float(v) for k, v in out.items() if k != "loss"}
                tracker.log({"train/loss": loss_value, "train/lr": lr, "train/wd": wd,
                             "train/img_per_s": ips, "train/epoch": done / spe, **extras},
                            step=done)
                t_log, img_log = now, images
            progress.update(loss=f"{loss_value:.3f}", lr=f"{lr:.3g}",
                            img_s=f"{(images - images_before) / max(1e-9, now - t0):.0f}")
            if done % tcfg.checkpoint_every == 0 and done < total:
                save(done, wall_before + now - t0, images)
    finally:
        progress.close()
    wall = wall_before + time.perf_counter() - t0
    if start < total:
        save(total, wall, images)
    run_images = images - images_before
    return FitResult(steps=total, images_seen=images, wall_time_s=wall,
                     img_per_s=run_images / max(1e-9, wall - wall_before) if run_images else 0.0,
                     final_loss=last_loss)


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
