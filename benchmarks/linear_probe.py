"""Speed and convergence of the frozen-feature protocols: the L-BFGS linear probe with its C sweep,
and k-NN, against scikit-learn's LogisticRegression on the same features, in the same process.

    python benchmarks/linear_probe.py [--n 50000] [--dims 512,2048] [--classes 10]
                                      [--devices cpu,cuda] [--no-sklearn] [--max-iter N]
                                      [--threads T]
    python benchmarks/linear_probe.py --embedded [--subset 1500,300] [--devices cpu,cuda]
                                      [--max-iter N] [--repeats 3] [--threads T]

Synthetic features (the default) are Gaussian class clusters, so the accuracies are comparable
and not at chance. Both solvers get the same standardised features, the same C grid (sslbench's
default, scikit-learn's convention for C), the same iteration cap and tolerance (max |gradient|
of the per-example objective, scikit-learn's lbfgs criterion); scikit-learn warm-starts along the
grid like ``sslbench.eval.linear.run_linear``. Timed: the sweep on train + choice on val + the
refit, i.e. everything ``run_linear`` does.

``--embedded`` probes the features the quickstart's ``random_init`` baseline sees: random-init
``test_resnet`` on the embedded benchmark, the eval-seed-0 fit/validation carve (``--subset``
draws that many of each). It prints one row per C of the warm-started path: L-BFGS iterations,
the final max |gradient|, the relative objective gap to the exact optimum (damped Newton on the
exact Hessian) and the validation accuracy of both, then the wall time of ``run_linear`` (best of
``--repeats``) and the C it chooses.

Prints Markdown tables; speed targets live here, never in unit tests.
"""
from __future__ import annotations

import argparse
import time
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from sslbench.config import KNNConfig, LinearConfig
from sslbench.eval.knn import run_knn
from sslbench.eval.linear import TOL, fit_path, run_linear, standardise

Feats = dict[str, tuple[Tensor, Tensor]]


def make_features(n: int, d: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * (4.0 / d ** 0.5)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, d, generator=g)
    return x.relu_(), y  # non-negative like post-ReLU / pooled features


def embedded_features(subset: Optional[tuple[int, int]]) -> tuple[Feats, int]:
    """Random-init ``test_resnet`` features of the embedded benchmark (quickstart recipe) carved
    into fit / val as ``sslbench.run.evaluate`` does for eval seed 0, plus the test split."""
    from sslbench.backbones import create_backbone
    from sslbench.datasets import get_split, load_splits
    from sslbench.eval.features import extract
    from sslbench.eval.sampling import subsample_and_carve
    from sslbench.recipe import load_recipe
    from sslbench.utils import seed_everything
    from sslbench.views import Normalize

    cfg = load_recipe("recipes/quickstart.yaml")
    splits = load_splits(cfg.data)
    train, test = (get_split(splits, s, "evaluation") for s in (cfg.data.train_split,
                                                                cfg.data.test_split))
    seed_everything(cfg.train.seed)
    backbone = create_backbone(cfg.backbone, cfg.data.image_size)
    normalize = Normalize(cfg.data.mean, cfg.data.std)
    fn = lambda x: backbone.features_at(normalize(x), None)  # noqa: E731
    (x, y), test_xy = (extract(fn, ds, torch.device("cpu"), 256, module=backbone)
                       for ds in (train, test))
    _, fit, val = subsample_and_carve(train.labels, train.groups, 1.0,
                                      cfg.eval.linear.val_fraction, 0)
    if subset is not None:
        g = torch.Generator().manual_seed(0)
        fit, val = (idx[torch.randperm(len(idx), generator=g)[:k]]
                    for idx, k in zip((fit, val), subset))
    return {"train": (x[fit], y[fit]), "val": (x[val], y[val]), "test": test_xy}, len(train.classes)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_sslbench(feats, classes, c_grid, max_iter, device):
    sync(device)
    t = time.perf_counter()
    metrics, settings = run_linear(feats, classes, c_grid, max_iter, refit=True, device=device)
    sync(device)
    t_lin = time.perf_counter() - t
    knn_cfg = KNNConfig()
    knn_feats = {k: (x.to(device), y.to(device)) for k, (x, y) in feats.items() if k != "val"}
    sync(device)
    t = time.perf_counter()
    knn_metrics, _ = run_knn(knn_feats, classes, knn_cfg.k, knn_cfg.temperature)
    sync(device)
    t_knn = time.perf_counter() - t
    return t_lin, metrics["acc"], settings, t_knn, knn_metrics["acc"]


def bench_sklearn(feats, c_grid, max_iter):
    import numpy as np
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    (xtr, ytr), (xva, yva), (xte, yte) = (tuple(t.numpy() for t in feats[k])
                                          for k in ("train", "val", "test"))
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scaler = StandardScaler().fit(xtr)
        xtr_s, xva_s = scaler.transform(xtr), scaler.transform(xva)
        clf = LogisticRegression(max_iter=max_iter, tol=TOL, warm_start=True)
        val = {}
        for c in sorted(c_grid):
            clf.set_params(C=c).fit(xtr_s, ytr)
            val[c] = clf.score(xva_s, yva)
        best = max(sorted(val), key=lambda c: (val[c], -c))
        xfit, yfit = np.concatenate([xtr, xva]), np.concatenate([ytr, yva])
        scaler = StandardScaler().fit(xfit)
        clf = LogisticRegression(C=best, max_iter=max_iter, tol=TOL).fit(scaler.transform(xfit),
                                                                          yfit)
        acc = clf.score(scaler.transform(xte), yte)
    return time.perf_counter() - t, acc, best


def objective(x: Tensor, y: Tensor, w: Tensor, b: Tensor, c: float) -> Tensor:
    """``mean CE + ‖W‖² / (2 C n)``, the objective every fit of the probe minimises."""
    return F.cross_entropy(x @ w.T + b, y) + (w * w).sum() / (2 * c * len(y))


def exact_optimum(x: Tensor, y: Tensor, classes: int, c: float, steps: int = 50
                  ) -> tuple[Tensor, Tensor]:
    """The optimum by damped Newton on the exact Hessian (float64; (classes·(d+1))² entries,
    so small d only): quadratic convergence to machine precision in a few dozen steps."""
    theta = torch.zeros(classes, x.shape[1] + 1, dtype=torch.float64, device=x.device)

    def f(t: Tensor) -> Tensor:
        return objective(x, y, t[:, :-1], t[:, -1], c)

    for _ in range(steps):
        g = torch.func.grad(f)(theta)
        if float(g.abs().max()) < 1e-13:
            break
        h = torch.func.hessian(f)(theta).reshape(g.numel(), g.numel())
        h += 1e-10 * torch.eye(g.numel(), dtype=h.dtype, device=h.device)  # b: shift-invariant
        step = torch.linalg.solve(h, g.reshape(-1)).reshape(g.shape)
        t, f0, slope = 1.0, float(f(theta)), float((g * step).sum())
        while float(f(theta - t * step)) > f0 - 1e-4 * t * slope and t > 1e-10:
            t /= 2
        theta = theta - t * step
    return theta[:, :-1], theta[:, -1]


def convergence_rows(feats: Feats, classes: int, c_grid: list[float], max_iter: int,
                     device: torch.device) -> tuple[list[str], float]:
    """One Markdown row per C of the warm-started path, and the C the exact optima choose."""
    (x, y), (xv, yv) = ((a.to(device, torch.float64), b.to(device))
                        for a, b in (feats["train"], feats["val"]))
    mean, std = standardise(x)
    x, xv = (x - mean) / std, (xv - mean) / std
    rows, exact_val = [], {}
    for c, fit in fit_path(x, y, classes, c_grid, max_iter, TOL).items():
        w, b = exact_optimum(x, y, classes, c)
        best = float(objective(x, y, w, b, c))
        gap = (float(objective(x, y, fit.w, fit.b, c)) - best) / best
        exact_val[c] = float(((xv @ w.T + b).argmax(1) == yv).float().mean())
        val = float(((xv @ fit.w.T + fit.b).argmax(1) == yv).float().mean())
        rows.append(f"| {c:g} | {fit.iterations} | {fit.grad:.1e} | {fit.converged} | "
                    f"{gap:.1e} | {100 * val:.2f} | {100 * exact_val[c]:.2f} |")
    return rows, max(sorted(exact_val), key=lambda c: (exact_val[c], -c))


def main_embedded(args: argparse.Namespace, lin: LinearConfig, max_iter: int,
                  devices: list[torch.device]) -> None:
    subset = tuple(int(s) for s in args.subset.split(",")) if args.subset else None
    feats, classes = embedded_features(subset)  # type: ignore[arg-type]
    print(f"embedded, random-init test_resnet: {len(feats['train'][1])} fit / "
          f"{len(feats['val'][1])} val x {feats['train'][0].shape[1]} features, {classes} "
          f"classes, C grid {lin.c_grid}, max_iter {max_iter}, tol {TOL:g}, "
          f"torch threads {torch.get_num_threads()}")
    for device in devices:
        rows, exact_c = convergence_rows(feats, classes, list(lin.c_grid), max_iter, device)
        print(f"\n{device.type}: the warm-started C path against the exact optima\n")
        print("| C | iterations | max abs grad | converged | rel. objective gap | val acc "
              "| exact val acc |")
        print("|---:|---:|---:|---|---:|---:|---:|")
        print("\n".join(rows))
        times, settings = [], {}
        for _ in range(args.repeats):
            t, _, settings, _, _ = bench_sslbench(feats, classes, lin.c_grid, max_iter, device)
            times.append(t)
        print(f"\nrun_linear on {device.type}: {min(times):.2f} s (best of {args.repeats}; all "
              f"{', '.join(f'{t:.2f}' for t in times)}), chosen C {settings['chosen_C']:g} "
              f"(exact optima: {exact_c:g}), converged {settings['chosen_converged']}, refit "
              f"{settings['chosen_refit']['iterations']} iterations", flush=True)


def main_synthetic(args: argparse.Namespace, lin: LinearConfig, max_iter: int,
                   devices: list[torch.device]) -> None:
    c_grid = list(lin.c_grid)
    print(f"n = {args.n} train ({lin.val_fraction:.0%} carved as val) + {args.n_test} test, "
          f"{args.classes} classes, C grid {c_grid}, max_iter {max_iter}, tol {TOL:g}, "
          f"torch threads {torch.get_num_threads()}")
    print()
    print("| features | solver | device | linear probe (s) | top-1 | chosen C | converged "
          "| k-NN (s) | k-NN top-1 |")
    print("|---|---|---|---:|---:|---:|---|---:|---:|")
    for d in (int(s) for s in args.dims.split(",")):
        x, y = make_features(args.n + args.n_test, d, args.classes)
        n_val = int(lin.val_fraction * args.n)
        feats = {"train": (x[:args.n - n_val], y[:args.n - n_val]),
                 "val": (x[args.n - n_val:args.n], y[args.n - n_val:args.n]),
                 "test": (x[args.n:], y[args.n:])}
        shape = f"{args.n} x {d}"
        for device in devices:
            bench_sslbench(feats, args.classes, c_grid[:1], 2, device)  # warm-up (CUDA init)
            t_lin, acc, s, t_knn, knn_acc = bench_sslbench(feats, args.classes, c_grid,
                                                           max_iter, device)
            print(f"| {shape} | sslbench L-BFGS (torch) | {device.type} | {t_lin:.2f} | "
                  f"{100 * acc:.2f} | {s['chosen_C']:g} | {s['chosen_converged']} | "
                  f"{t_knn:.2f} | {100 * knn_acc:.2f} |", flush=True)
        if not args.no_sklearn:
            t_sk, acc, c = bench_sklearn(feats, c_grid, max_iter)
            print(f"| {shape} | scikit-learn LogisticRegression (lbfgs) | cpu | {t_sk:.2f} | "
                  f"{100 * acc:.2f} | {c:g} | – | – | – |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="training features")
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dims", default="512,2048")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--devices", default="cpu,cuda", help="cuda is skipped when absent")
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--max-iter", type=int, help="default: eval.linear.max_iter")
    ap.add_argument("--embedded", action="store_true",
                    help="random-init test_resnet features of the embedded benchmark")
    ap.add_argument("--subset", help="FIT,VAL: random subsets of the embedded carve")
    ap.add_argument("--repeats", type=int, default=3, help="timed run_linear calls (embedded)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lin = LinearConfig()
    max_iter = args.max_iter or lin.max_iter
    devices = [torch.device(d) for d in args.devices.split(",")
               if d != "cuda" or torch.cuda.is_available()]
    (main_embedded if args.embedded else main_synthetic)(args, lin, max_iter, devices)


if __name__ == "__main__":
    main()
