"""How large the embedded benchmark's test set must be for a standard error of at most 1 point.

    python benchmarks/test_set_size.py [--run RUN_DIR] [--renders 16] [--test-fraction 0.25]

Fits sslbench's linear probe on the frozen features of a backbone (a pretrained run's
``backbone.safetensors``, or the random-init ``test_resnet`` without ``--run``), predicts ``--renders``
renders of every held-out glyph, and splits the variance of "this render is classified right"
into a between-glyph part sb2 (some glyphs are hard, whatever the render) and a within-glyph part
sw2 (the render's nuisances). A test set of G glyphs x R renders then has a standard error of
about sqrt((sb2 + sw2 / R) / G): more renders only shrink the within part, more glyphs shrink
both. Prints that table and the cluster-bootstrap SE (sslbench.eval.scoring) of the designs it
can build directly.
"""
from __future__ import annotations

import argparse
import math

import torch
from omegaconf import OmegaConf

from sslbench.backbones import create_backbone, load_backbone
from sslbench.config import BackboneConfig, DataConfig, LinearConfig
from sslbench.datasets.embedded import build_embedded
from sslbench.eval.linear import run_linear
from sslbench.eval.scoring import bootstrap_se
from sslbench.utils import seed_everything
from sslbench.views import Normalize


def features(backbone, images: torch.Tensor, normalize: Normalize) -> torch.Tensor:
    backbone.eval()
    with torch.no_grad():
        return torch.cat([backbone(normalize(images[i:i + 512]))
                          for i in range(0, len(images), 512)])


def variance_components(correct: torch.Tensor, groups: torch.Tensor, renders: int
                        ) -> tuple[float, float]:
    """(between-glyph, within-glyph) variance of the 0/1 correctness, R renders per glyph."""
    order = torch.argsort(groups, stable=True)
    per_glyph = correct[order].double().view(-1, renders)  # (G, R)
    within = float(per_glyph.var(dim=1, unbiased=True).mean())
    between = float(per_glyph.mean(1).var(unbiased=True)) - within / renders
    return max(between, 0.0), within


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a run directory with backbone.safetensors")
    ap.add_argument("--renders", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    splits = build_embedded(DataConfig(renders_per_test_glyph=args.renders))
    train, test = splits["train"], splits["test"]
    if args.run:
        backbone = load_backbone(f"{args.run}/backbone.safetensors")
    else:
        seed_everything(args.seed)
        backbone = create_backbone(OmegaConf.structured(
            BackboneConfig(name="test_resnet", small_input=False)), 32)
    norm = Normalize([0.5] * 3, [0.25] * 3)
    xtr, xte = features(backbone, train.images, norm), features(backbone, test.images, norm)
    gen = torch.Generator().manual_seed(0)
    val = torch.rand(len(train), generator=gen) < 0.1
    lin = LinearConfig()
    feats = {"train": (xtr[~val], train.labels[~val]), "val": (xtr[val], train.labels[val])}
    metrics, settings, (w, b) = run_linear(feats, 10, lin.c_grid, lin.max_iter, refit=True,
                                           return_head=True)
    pred = (xte @ w.T + b).argmax(1)
    correct = pred == test.labels
    sb2, sw2 = variance_components(correct, test.groups, args.renders)
    glyphs = int(test.groups.unique().numel())
    print(f"accuracy {100 * float(correct.float().mean()):.1f} % on {glyphs} glyphs x "
          f"{args.renders} renders; between-glyph var {sb2:.4f}, within-glyph var {sw2:.4f}")
    two = torch.cat([torch.nonzero(test.groups == g)[:2, 0] for g in test.groups.unique()])
    print(f"bootstrap SE, today's design ({glyphs} x 2): "
          f"{100 * bootstrap_se(correct[two], test.groups[two]):.2f} points; "
          f"({glyphs} x {args.renders}): {100 * bootstrap_se(correct, test.groups):.2f}")
    print("\n| test glyphs | renders | predicted SE (points) |\n|---:|---:|---:|")
    for g in (glyphs, round(glyphs * 4 / 3), 2 * glyphs):
        for r in (2, 4, 8, 16):
            print(f"| {g} | {r} | {100 * math.sqrt((sb2 + sw2 / r) / g):.2f} |")


if __name__ == "__main__":
    main()
