"""SimCLR against a reference loop built from ``lightly``, one component swapped at a time.

    python benchmarks/simclr_reference.py [--seeds 0-7] [--variants ours,reference,views=tv]
                                          [--recipe recipes/quickstart.yaml] [--out FILE.jsonl]
                                          [key=value ...]

Every variant trains through sslbench's own engine (same backbone initialisation for a seed, same
image order, same optimizer, schedule and budget, from the recipe) and is scored by sslbench's own
linear probe and k-NN; only the named components differ:

- ``views=tv``: lightly's ``SimCLRViewTransform`` (torchvision, per image on PIL, with the
  recipe's crop scale, colour strength, grey-scale and flip probabilities, no blur) instead of
  sslbench's batched pipeline (``sslbench.views.simclr_view``);
- ``views=kornia``: the kornia pipeline sslbench used before the batched one (kornia's
  per-image crop and resize, its ``ColorJitter`` with ONE order of the four colour ops per call,
  shared by every image and both views, clamped once at the end);
- ``forward=joint``: one backbone pass over both views (BatchNorm statistics over the 2n
  images, sslbench's SimCLR before ``bn_per_view``) instead of one pass per view (statistics
  per view, as lightly's examples and solo-learn do; ``forward=split`` is the default);
- ``head=lightly``: lightly's ``SimCLRProjectionHead`` (its last BatchNorm has a trainable bias)
  and ``NTXentLoss`` instead of ours.

``ours`` is the recipe's method as it is; ``reference`` is all three swaps. Results are appended to
``--out`` (one JSON line per variant and seed; finished pairs are skipped, so a killed run
resumes) and summarised as a table: mean and standard deviation over seeds, and the paired
difference to ``ours`` with its 95% t-interval. ``lightly`` is a benchmark-only extra
(``pip install -e ".[bench]"``), never a dependency of sslbench.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from sslbench.recipe import load_recipe
from sslbench.ssl import StepInfo, register_method
from sslbench.ssl.simclr import SimCLR, nt_xent_loss

COMPONENTS = {"views": ("batched", "kornia", "tv"), "forward": ("split", "joint"),
              "head": ("ours", "lightly")}
NAMED = {"ours": {}, "reference": {"views": "tv", "forward": "split", "head": "lightly"}}


@register_method("simclr_ablation")
class SimCLRAblation(SimCLR):
    """SimCLR with the components of ``COMPONENTS`` switchable (benchmark only)."""

    @dataclass
    class Config(SimCLR.Config):
        views: str = "batched"
        forward_mode: str = "split"
        head: str = "ours"

    def __init__(self, backbone, cfg, data) -> None:
        super().__init__(backbone, cfg, data)
        if cfg.head == "lightly":
            from lightly.loss import NTXentLoss
            from lightly.models.modules import SimCLRProjectionHead

            self.projector = SimCLRProjectionHead(backbone.num_features,
                                                  cfg.proj_hidden_dim or backbone.num_features,
                                                  cfg.proj_dim)
            self.lightly_loss = NTXentLoss(temperature=cfg.temperature)
        if cfg.views == "kornia":
            assert cfg.blur_p == 0, "the kornia variant reproduces the no-blur pipeline"
            self.augment = kornia_view(data.image_size, cfg.crop_scale, cfg.color_strength,
                                       cfg.flip_p)
        if cfg.views == "tv":
            from lightly.transforms.simclr_transform import SimCLRViewTransform

            self.tv_view = SimCLRViewTransform(
                input_size=data.image_size, cj_strength=cfg.color_strength,
                min_scale=cfg.crop_scale[0], gaussian_blur=cfg.blur_p, hf_prob=cfg.flip_p,
                normalize=None)
            assert cfg.crop_scale[1] == 1.0, "lightly's crop has max scale 1"

    @torch.no_grad()
    def make_views(self, images: Tensor) -> list[Tensor]:
        if self.cfg.views != "tv":
            return super().make_views(images)
        from torchvision.transforms.functional import to_pil_image

        pil = [to_pil_image(img) for img in images.cpu()]
        views = [torch.stack([self.tv_view(p) for p in pil]).to(images.device) for _ in range(2)]
        return [self.normalize(v) for v in views]

    def forward(self, views: list[Tensor], step: StepInfo) -> dict[str, Tensor]:
        n = views[0].shape[0]
        if self.cfg.forward_mode == "split":
            z1, z2 = (self.projector(self.backbone(v)) for v in views)
        else:
            z = self.projector(self.backbone(torch.cat(views)))
            z1, z2 = z[:n], z[n:]
        if self.cfg.head == "lightly":
            return {"loss": self.lightly_loss(z1.float(), z2.float())}
        return {"loss": nt_xent_loss(z1, z2, self.cfg.temperature)}


def kornia_view(size: int, crop_scale, color_strength: float, flip_p: float) -> torch.nn.Module:
    """The SimCLR view pipeline as sslbench built it from kornia until the batched one."""
    import kornia.augmentation as K

    s = color_strength
    return torch.nn.Sequential(K.RandomResizedCrop((size, size), scale=tuple(crop_scale)),
                               K.RandomHorizontalFlip(p=flip_p),
                               K.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=0.8),
                               K.RandomGrayscale(p=0.2))


def variant_overrides(name: str) -> list[str]:
    """``ours`` | ``reference`` | ``views=tv+forward=split+...`` -> recipe overrides."""
    if name == "ours":
        return []
    parts = NAMED.get(name) or dict(p.split("=", 1) for p in name.split("+"))
    out = ["method.name=simclr_ablation"]
    for key, value in parts.items():
        if key not in COMPONENTS or value not in COMPONENTS[key]:
            raise SystemExit(f"unknown component {key}={value} (valid: {COMPONENTS})")
        out.append(f"method.{'forward_mode' if key == 'forward' else key}={value}")
    return out


def run_one(recipe: str, variant: str, seed: int, extra: list[str], work: Path) -> dict:
    from sslbench.run import recipe_info, run

    board = work / "board"
    overrides = [*extra, *variant_overrides(variant), f"train.seed={seed}",
                 "eval.protocols=[linear,knn]", "eval.baselines=[]", "logging.wandb=false",
                 f"leaderboard.dir={board}", "leaderboard.render=false"]
    cfg = load_recipe(recipe, overrides)
    run_dir = work / f"{variant.replace('=', '-').replace('+', '_')}_s{seed}"
    records, _ = run(cfg, recipe_info(recipe), run_dir, quiet=True)
    info = json.loads((run_dir / "run.json").read_text())
    acc = {r["protocol"]: r["metrics"]["acc"] for r in records}
    return {"variant": variant, "seed": seed, "linear": 100 * acc["linear"],
            "knn": 100 * acc["knn"], "final_loss": info["pretrain"]["final_loss"],
            "wall_s": info["pretrain"]["wall_time_s"], "overrides": extra,
            "loss_curve": info["pretrain"].get("loss_curve")}


def t_quantile(df: int) -> float:
    """Two-sided 95% Student-t quantile."""
    from scipy import stats

    return float(stats.t.ppf(0.975, df))


def summarise(rows: list[dict], variants: list[str]) -> str:
    by = {(r["variant"], r["seed"]): r for r in rows}
    out = ["| variant | seeds | linear mean ± sd | k-NN mean ± sd | paired Δ linear vs ours "
           "[95% CI] | wins | paired Δ k-NN |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        seeds = sorted(s for (vv, s) in by if vv == v)
        if not seeds:
            continue
        cells = [f"`{v}`", str(len(seeds))]
        for metric in ("linear", "knn"):
            xs = torch.tensor([by[v, s][metric] for s in seeds], dtype=torch.float64)
            sd = float(xs.std()) if len(xs) > 1 else float("nan")
            cells.append(f"{float(xs.mean()):.1f} ± {sd:.1f}")
        for metric in ("linear", "knn"):
            paired = [s for s in seeds if ("ours", s) in by]
            if v == "ours" or len(paired) < 2:
                cells += ["—", "—"] if metric == "linear" else ["—"]
                continue
            d = torch.tensor([by[v, s][metric] - by["ours", s][metric] for s in paired],
                             dtype=torch.float64)
            half = t_quantile(len(d) - 1) * float(d.std()) / math.sqrt(len(d))
            m = float(d.mean())
            text = f"{m:+.1f} [{m - half:+.1f}, {m + half:+.1f}]"
            cells.append(text)
            if metric == "linear":
                cells.append(f"{int((d > 0).sum())}/{len(d)}")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(s) for s in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--seeds", default="0-7")
    ap.add_argument("--variants", default="ours,reference")
    ap.add_argument("--out", default="runs/simclr_reference.jsonl")
    ap.add_argument("--work", default=None, help="run directories (default: a temp dir)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the run directories in --work (checkpoints, metrics, backbones)")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("overrides", nargs="*", help="recipe overrides for every variant")
    args = ap.parse_args()
    variants = args.variants.split(",")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()] if out.is_file() else []
    rows = [r for r in rows if r.get("overrides", []) == args.overrides]
    done = {(r["variant"], r["seed"]) for r in rows}
    if args.keep and not args.work:
        raise SystemExit("--keep needs --work DIR")
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    workdir = (contextlib.nullcontext(args.work) if args.keep
               else tempfile.TemporaryDirectory(dir=args.work))
    with workdir as work:
        for seed in [] if args.summary_only else parse_seeds(args.seeds):
            for v in variants:  # alternate variants within a seed: drift hits all alike
                if (v, seed) in done:
                    continue
                row = run_one(args.recipe, v, seed, args.overrides, Path(work))
                rows.append(row)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"seed {seed} {v}: linear {row['linear']:.1f} knn {row['knn']:.1f} "
                      f"loss {row['final_loss']:.3f} ({row['wall_s']:.0f} s)", file=sys.stderr)
    print(summarise(rows, variants))


if __name__ == "__main__":
    main()
