"""Backbone throughput at 32 px: training (forward + backward + SGD step) and inference img/s.

    python benchmarks/throughput.py [--batch 128] [--steps 5] [--backbones resnet18,vit_tiny_patch16_224]

Uses the same 32 px variants as the recipes (ResNet 3x3/s1 stem without max-pool, ViT patch 4),
bf16 autocast on CUDA, fp32 on CPU. Prints a Markdown table; speed targets live here, never in
unit tests.
"""
from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from sslbench.backbones import create_backbone
from sslbench.config import BackboneConfig


def bench(name: str, small_input: bool, batch: int, steps: int, device: torch.device) -> tuple:
    bb = create_backbone(OmegaConf.structured(BackboneConfig(name=name, small_input=small_input)),
                         32).to(device)
    opt = torch.optim.SGD(bb.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else \
        torch.autocast("cpu", enabled=False)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def train_step():
        with amp:
            loss = bb(x).float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def infer_step():
        with amp:
            bb(x)

    rates = []
    for fn in (train_step, infer_step):
        bb.train(fn is train_step)
        fn()  # warm-up
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            fn()
        sync()
        rates.append(batch * steps / (time.perf_counter() - t))
    params = sum(p.numel() for p in bb.parameters()) / 1e6
    return params, rates[0], rates[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--backbones", default="resnet18,vit_tiny_patch16_224,test_resnet,test_vit")
    ap.add_argument("--stock-stem", default="test_resnet",
                    help="comma list of ResNets to run with their stock (strided) stem")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    stock = set(args.stock_stem.split(","))
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    print(f"# backbone throughput at 32 px, batch {args.batch}, {where}, torch {torch.__version__}")
    print("| backbone | variant | params (M) | train img/s | inference img/s |")
    print("|---|---|---:|---:|---:|")
    for name in args.backbones.split(","):
        small = name not in stock
        p, tr, inf = bench(name, small, args.batch, args.steps, device)
        variant = ("stock stem" if not small else
                   "patch 4" if "vit" in name else "3x3/s1 stem, no max-pool")
        print(f"| {name} | {variant} | {p:.2f} | {tr:.0f} | {inf:.0f} |", flush=True)


if __name__ == "__main__":
    main()
