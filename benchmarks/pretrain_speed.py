"""End-to-end pretraining speed: sslbench's loop against a reference loop built from ``lightly``.

    python benchmarks/pretrain_speed.py [--cells quickstart,simclr_r18_32,...] [--steps 40]
                                        [--rounds 3] [--out FILE.json] [--compile]

For each cell (a recipe at an image size and batch), sslbench's own ``engine.fit`` pretrains on
random uint8 images held in memory (so the figure is the loop's, not a disk's) and the script
reports, after ``--warmup`` steps:

- images/s end to end (source images per second; every view a method makes is its own work),
- model FLOPs per image (forward + backward of every view, ``torch.utils.flop_counter``) and MFU
  against the device's dense bf16 peak (a table for H100/H200/A100; otherwise a measured matmul
  peak, in the precision the cell trains in),
- peak memory, and the share of step time spent making views (indexing + augmentation),

and, where a reference exists (SimCLR, DINO: ``REFERENCES``), the same work through a loop built
the way lightly's own benchmarks and examples run: its transforms (``SimCLRTransform``,
``DINOTransform`` with the local crops) per sample on PIL images in DataLoader workers, its heads
and losses (``SimCLRProjectionHead`` + ``NTXentLoss``; ``DINOProjectionHead`` + ``DINOLoss`` with
an EMA teacher), the same backbone and initialisation, batch, optimizer and precision.
Ours and the reference alternate ``--rounds`` times; medians are reported with their ratio.
``lightly`` is a benchmark-only extra (``pip install -e ".[bench]"``).

Speed targets live here, never in unit tests. ``scripts/gpu_check.sh`` runs the GPU table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from sslbench.datasets import TensorImageDataset
from sslbench.engine import fit, resolve_precision
from sslbench.recipe import load_recipe
from sslbench.run import build_method, resolve_device

# (recipe, image size, batch, overrides): the speed table of issue 13
CELLS: dict[str, tuple[str, int, int, list[str]]] = {
    "quickstart": ("recipes/quickstart.yaml", 32, 128, []),
    # CPU-sized DINO multi-crop (test_vit, 2 x 32 px + 4 x 16 px crops): the CPU's DINO ratio
    "dino_vit_embedded": ("recipes/embedded/dino_vit.yaml", 32, 128, []),
    "simclr_r18_32": ("recipes/cifar10/simclr_resnet18.yaml", 32, 256, []),
    "moco_v2_r18_32": ("recipes/cifar10/moco_v2_resnet18.yaml", 32, 256, []),
    "dino_vits16_224": ("recipes/imagenet100/dino_vit_small.yaml", 224, 128, []),
    "mae_vits16_224": ("recipes/imagenet100/mae_vit_small.yaml", 224, 256, []),
    "simclr_r18_224": ("recipes/imagenet100/simclr_resnet18.yaml", 224, 256, []),
}
# dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets (SXM parts)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}


@dataclass
class Figures:
    cell: str
    loop: str  # "sslbench" | "reference"
    img_per_s: list[float] = field(default_factory=list)  # one per round
    flops_per_image: Optional[float] = None
    peak_memory_gib: Optional[float] = None
    views_share: Optional[float] = None  # of step time: indexing + augmentation

    @property
    def median(self) -> float:
        return statistics.median(self.img_per_s) if self.img_per_s else float("nan")


class _Capture:
    """The engine's tracker: keeps the logged lines."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def log(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        self.lines.append({"step": step, **metrics})


def _config(cell: str, steps: int, warmup: int, extra: list[str]) -> Any:
    recipe, size, batch, overrides = CELLS[cell]
    return load_recipe(recipe, [f"data.image_size={size}", f"train.batch_size={batch}",
                                f"train.max_steps={warmup + steps}", f"train.log_every={warmup}",
                                "train.checkpoint_every=1000000", "logging.wandb=false",
                                "data.name=embedded", *overrides, *extra])


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(cell: str, steps: int, warmup: int, extra: list[str], fig: Figures) -> None:
    cfg = _config(cell, steps, warmup, extra)
    device = resolve_device(cfg)
    size, batch = cfg.data.image_size, cfg.train.batch_size
    train = TensorImageDataset(_images(max(4 * batch, 512), size), torch.zeros(
        max(4 * batch, 512), dtype=torch.long), ["x"], name="random")
    method = build_method(cfg)
    tracker = _Capture()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as d:
        result = fit(method, train, cfg, Path(d), device, tracker, quiet=True)
    # the first log line covers warm-up (compilation, FLOP counting): the rest is steady state
    rates = [line["train/img_per_s"] for line in tracker.lines[1:]]
    fig.img_per_s.append(statistics.median(rates) if rates else result.img_per_s)
    fig.flops_per_image = result.flops_per_image
    fig.peak_memory_gib = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    # views alone: index the held split and augment, as the loop does
    held = train.in_memory().to(device)
    method.train()
    times = []
    for i in range(warmup + 5):
        _sync(device)
        t = time.perf_counter()
        method.make_views(held[torch.randint(0, len(held), (batch,)).to(device)])
        _sync(device)
        times.append(time.perf_counter() - t)
    step_s = batch / fig.img_per_s[-1]
    fig.views_share = statistics.median(times[warmup:]) / step_s


def _timed_loop(loader: Any, step: Any, device: torch.device, steps: int, warmup: int,
                batch: int, fig: Figures) -> None:
    """Run ``step(batch_of_views)`` over ``loader`` for ``warmup + steps`` steps; img/s of the
    last ``steps`` into ``fig``."""
    done, t0 = 0, 0.0
    while done < warmup + steps:
        for views in loader:
            if done == warmup:
                _sync(device)
                t0 = time.perf_counter()
            step([v.to(device, non_blocking=True) for v in views])
            done += 1
            if done == warmup + steps:
                break
    _sync(device)
    fig.img_per_s.append(steps * batch / (time.perf_counter() - t0))


def _pil_loader(transform: Any, n: int, size: int, batch: int, workers: int,
                device: torch.device) -> Any:
    """A DataLoader of ``transform`` applied per sample to PIL images (uint8 noise in memory),
    in ``workers`` processes, as lightly's benchmarks feed their loops."""
    from torchvision.transforms.functional import to_pil_image

    images = _images(n, size)

    class Pil(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(images)

        def __getitem__(self, i: int):
            return transform(to_pil_image(images[i]))

    return torch.utils.data.DataLoader(Pil(), batch_size=batch, shuffle=True, drop_last=True,
                                       num_workers=workers, pin_memory=device.type == "cuda",
                                       persistent_workers=workers > 0)


def run_reference_dino(cell: str, steps: int, warmup: int, extra: list[str], fig: Figures,
                       workers: int) -> None:
    """DINO the way lightly's example trains it: ``DINOTransform`` per sample (2 global + L
    local crops) in DataLoader workers, ``DINOProjectionHead`` (its last-layer freezing),
    ``DINOLoss`` with its centring and teacher-temperature warm-up, an EMA teacher updated by
    ``update_momentum``, each view through the student on its own; the same backbone and
    initialisation as ours, the recipe's head sizes, crops, jitter, blur and solarisation,
    per-parameter gradient clipping and AdamW."""
    import copy

    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import DINOTransform

    cfg = _config(cell, steps, warmup, extra)
    m = cfg.method
    device = resolve_device(cfg)
    precision = resolve_precision(cfg.train.precision, device)
    size, batch = cfg.data.image_size, cfg.train.batch_size
    ours = build_method(cfg)
    student = ours.backbone.to(device)
    teacher = copy.deepcopy(student)
    deactivate_requires_grad(teacher)
    def dino_head(**kw: Any) -> Any:
        return DINOProjectionHead(student.num_features, m.head_hidden_dim, m.head_bottleneck_dim,
                                  m.out_dim, batch_norm=m.head_batch_norm,
                                  norm_last_layer=m.norm_last_layer, **kw).to(device)

    head = dino_head(freeze_last_layer=m.freeze_last_layer)
    # built, not deep-copied (weight norm's derived weight cannot be), then given its weights,
    # as lightly's DINO example does
    teacher_head = dino_head()
    teacher_head.load_state_dict(head.state_dict())
    deactivate_requires_grad(teacher_head)
    criterion = DINOLoss(output_dim=m.out_dim, warmup_teacher_temp=m.warmup_teacher_temp,
                         teacher_temp=m.teacher_temp,
                         warmup_teacher_temp_epochs=m.warmup_teacher_temp_epochs,
                         student_temp=m.student_temp, center_momentum=m.center_momentum
                         ).to(device)
    params = list(student.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    jitter = list(m.jitter)
    transform = DINOTransform(
        global_crop_size=size,
        global_crop_scale=tuple(m.global_crop_scale or (0.4, 1.0)),
        local_crop_size=type(ours).local_size(m, size), local_crop_scale=tuple(m.local_crop_scale),
        n_local_views=m.num_local_crops, hf_prob=m.flip_p, cj_prob=m.color_p, cj_strength=1.0,
        cj_bright=jitter[0], cj_contrast=jitter[1], cj_sat=jitter[2], cj_hue=jitter[3],
        random_gray_scale=m.gray_p,
        gaussian_blur=(m.global_blur_p[0], m.global_blur_p[1], m.local_blur_p),
        solarization_prob=m.solarize_p,
        normalize=dict(mean=list(cfg.data.mean), std=list(cfg.data.std)))
    loader = _pil_loader(transform, max(4 * batch, 512), size, batch, workers, device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else torch.autocast(device.type, enabled=False))

    def step(views: list[torch.Tensor]) -> None:
        update_momentum(student, teacher, m.momentum_teacher)
        update_momentum(head, teacher_head, m.momentum_teacher)
        with autocast:
            with torch.no_grad():
                t_out = [teacher_head(teacher(v)).float() for v in views[:2]]
            s_out = [head(student(v)).float() for v in views]
            loss = criterion(t_out, s_out, epoch=0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        head.cancel_last_layer_gradients(current_epoch=0)
        if m.clip_grad:
            for p in params:
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_(p, m.clip_grad)
        opt.step()

    _timed_loop(loader, step, device, steps, warmup, batch, fig)


def run_reference_simclr(cell: str, steps: int, warmup: int, extra: list[str], fig: Figures,
                  workers: int) -> None:
    """SimCLR the way lightly's benchmarks train it (see the module docstring)."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    cfg = _config(cell, steps, warmup, extra)
    m = cfg.method
    device = resolve_device(cfg)
    precision = resolve_precision(cfg.train.precision, device)
    size, batch = cfg.data.image_size, cfg.train.batch_size
    ours = build_method(cfg)  # the same backbone and initialisation
    backbone = ours.backbone.to(device)
    head = SimCLRProjectionHead(backbone.num_features, m.proj_hidden_dim or backbone.num_features,
                                m.proj_dim).to(device)
    criterion = NTXentLoss(temperature=m.temperature)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = (torch.optim.AdamW(params, lr=1e-4) if cfg.optim.name == "adamw"
           else torch.optim.SGD(params, lr=1e-4, momentum=0.9))
    transform = SimCLRTransform(input_size=size, cj_strength=m.color_strength,
                                min_scale=m.crop_scale[0], gaussian_blur=m.blur_p,
                                hf_prob=m.flip_p, normalize=dict(mean=list(cfg.data.mean),
                                                                 std=list(cfg.data.std)))
    loader = _pil_loader(transform, max(4 * batch, 512), size, batch, workers, device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else torch.autocast(device.type, enabled=False))

    def step(views: list[torch.Tensor]) -> None:
        x0, x1 = views
        with autocast:
            loss = criterion(head(backbone(x0)).float(), head(backbone(x1)).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    _timed_loop(loader, step, device, steps, warmup, batch, fig)


# the reference loop of each method that has one
REFERENCES = {"simclr": run_reference_simclr, "dino": run_reference_dino}


def device_peak(device: torch.device, precision: str) -> tuple[float, str]:
    """(FLOP/s, where the figure comes from) for MFU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in PEAK_BF16.items():
            if key in name and precision == "bf16":
                return peak, f"{key} dense bf16 data-sheet peak"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ a
    _sync(device)
    reps, t = 10, time.perf_counter()
    for _ in range(reps):
        a @ a
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t), f"measured {n}^3 {precision} matmul"


def table(figs: list[Figures], peak: float) -> str:
    rows = ["| cell | loop | img/s (median) | rounds | GFLOP/img | MFU | peak mem (GiB) | "
            "views share | ours / reference |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(f.cell, f.loop): f for f in figs}
    for f in figs:
        mfu = (f"{100 * f.flops_per_image * f.median / peak:.1f}%" if f.flops_per_image
               else "")
        ratio = ""
        ref = by.get((f.cell, "reference"))
        if f.loop == "sslbench" and ref is not None and ref.img_per_s:
            ratio = f"{f.median / ref.median:.2f}x"
        rows.append(
            f"| {f.cell} | {f.loop} | {f.median:,.0f} | {len(f.img_per_s)} | "
            f"{'' if f.flops_per_image is None else f'{f.flops_per_image / 1e9:.2f}'} | {mfu} | "
            f"{'' if f.peak_memory_gib is None else f'{f.peak_memory_gib:.1f}'} | "
            f"{'' if f.views_share is None else f'{100 * f.views_share:.0f}%'} | {ratio} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="quickstart")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="ours and reference alternate")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                    help="DataLoader workers of the reference loop")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--compile", action="store_true", help="train.compile=true for ours")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    ap.add_argument("overrides", nargs="*", help="recipe overrides for every cell")
    args = ap.parse_args()
    extra = [*args.overrides, *(["train.compile=true"] if args.compile else [])]
    figs: list[Figures] = []
    for cell in args.cells.split(","):
        if cell not in CELLS:
            sys.exit(f"unknown cell {cell!r}; one of {', '.join(CELLS)}")
        ours = Figures(cell, "sslbench")
        ref = Figures(cell, "reference")
        reference = (None if args.no_reference
                     else REFERENCES.get(_config(cell, 1, 1, args.overrides).method.name))
        for _ in range(args.rounds):
            run_ours(cell, args.steps, args.warmup, extra, ours)
            if reference:
                reference(cell, args.steps, args.warmup, args.overrides, ref, args.workers)
            print(f"{cell}: ours {ours.img_per_s[-1]:,.0f} img/s"
                  + (f", reference {ref.img_per_s[-1]:,.0f} img/s" if reference else ""),
                  file=sys.stderr, flush=True)
        figs += [ours, *([ref] if reference else [])]
    cfg = _config(args.cells.split(",")[0], 1, 1, args.overrides)
    device = resolve_device(cfg)
    precision = resolve_precision(cfg.train.precision, device)
    peak, source = device_peak(device, precision)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU ({torch.get_num_threads()} threads)")
    shown = f"{peak / 1e12:.1f} TFLOP/s" if peak >= 1e12 else f"{peak / 1e9:.0f} GFLOP/s"
    print(f"# pretraining speed on {where}, {precision}, torch {torch.__version__}; MFU against "
          f"{shown} ({source})")
    print(table(figs, peak))
    if args.out:
        Path(args.out).write_text(json.dumps({
            "device": where, "precision": precision, "peak_flops": peak, "peak_source": source,
            "torch": torch.__version__, "args": vars(args),
            "figures": [{**asdict(f), "median": f.median} for f in figs]}, indent=1))


if __name__ == "__main__":
    main()
