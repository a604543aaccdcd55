"""How large the embedded benchmark's test set must be for a standard error of at most 1 point.

    python benchmarks/test_set_size.py [--run RUN_DIR] [--protocol linear|knn] [--renders 24]
                                       [--test-fraction 0.5]

Fits sslbench's linear probe (or k-NN, k = 200, T = 0.1) on the frozen features of a backbone (a
pretrained run's ``backbone.safetensors``, or the random-init ``test_resnet`` without ``--run``),
predicts ``--renders`` renders of every held-out glyph, and splits the variance of "this render
is classified right" into a between-glyph part sb2 (some glyphs are hard, whatever the render)
and a within-glyph part sw2 (the render's nuisances). A test set of G glyphs x R renders then
has a standard error of about sqrt((sb2 + sw2 / R) / G): more renders only shrink the within
part, more glyphs shrink both. Prints that table and the cluster-bootstrap SE
(sslbench.eval.scoring) of the designs it can build directly.
"""
from __future__ import annotations

import argparse
import math

import torch
from omegaconf import OmegaConf

from sslbench.backbones import create_backbone, load_backbone
from sslbench.config import BackboneConfig, DataConfig, KNNConfig, LinearConfig
from sslbench.datasets.embedded import build_embedded
from sslbench.eval.knn import knn_predict
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
    ap.add_argument("--protocol", choices=("linear", "knn"), default="linear")
    ap.add_argument("--renders", type=int, default=24)
    ap.add_argument("--test-fraction", type=float, default=DataConfig.test_glyph_fraction)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    default_renders = DataConfig.renders_per_test_glyph
    splits = build_embedded(DataConfig(renders_per_test_glyph=args.renders,
                                       test_glyph_fraction=args.test_fraction))
    train, test = splits["train"], splits["test"]
    if args.run:
        backbone = load_backbone(f"{args.run}/backbone.safetensors")
    else:
        seed_everything(args.seed)
        backbone = create_backbone(OmegaConf.structured(
            BackboneConfig(name="test_resnet", small_input=False)), 32)
    norm = Normalize([0.5] * 3, [0.25] * 3)
    xtr, xte = features(backbone, train.images, norm), features(backbone, test.images, norm)
    if args.protocol == "knn":
        knn = KNNConfig()
        pred = knn_predict(xtr, train.labels, xte, knn.k, knn.temperature, 10)
    else:
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
    print(f"{args.protocol} accuracy {100 * float(correct.float().mean()):.1f} % on {glyphs} "
          f"glyphs x {args.renders} renders; between-glyph var {sb2:.4f}, within-glyph var "
          f"{sw2:.4f}")
    for r in sorted({2, default_renders, args.renders}):
        if r <= args.renders:  # the first r renders of every glyph: a design of r renders
            keep = torch.cat([torch.nonzero(test.groups == g)[:r, 0]
                              for g in test.groups.unique()])
            print(f"bootstrap SE, {glyphs} glyphs x {r} renders: "
                  f"{100 * bootstrap_se(correct[keep], test.groups[keep]):.2f} points")
    print("\n| test glyphs | renders | predicted SE (points) |\n|---:|---:|---:|")
    for g in (glyphs, round(glyphs * 1.2), round(glyphs * 1.3)):
        for r in (4, default_renders, 2 * default_renders, math.inf):
            print(f"| {g} | {'∞' if r == math.inf else r} | "
                  f"{100 * math.sqrt((sb2 + sw2 / r) / g):.2f} |")


if __name__ == "__main__":
    main()
