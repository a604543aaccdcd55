"""Speed of the frozen-feature protocols: the L-BFGS linear probe with its C sweep, and k-NN,
against scikit-learn's LogisticRegression on the same features, in the same process.

    python benchmarks/linear_probe.py [--n 50000] [--dims 512,2048] [--classes 10]
                                      [--devices cpu,cuda] [--no-sklearn]

Features are synthetic (Gaussian class clusters, so the accuracies are comparable and not at
chance). Both solvers get the same standardised features, the same C grid (sslbench's default,
scikit-learn's convention for C) and the same iteration cap; scikit-learn warm-starts along the
grid like ``sslbench.eval.linear.run_linear``. Timed: the sweep on train + choice on val + the
refit, i.e. everything ``run_linear`` does. Prints a Markdown table; speed targets live here,
never in unit tests.
"""
from __future__ import annotations

import argparse
import time

import torch

from sslbench.config import KNNConfig, LinearConfig
from sslbench.eval.knn import run_knn
from sslbench.eval.linear import run_linear


def make_features(n: int, d: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g) * (4.0 / d ** 0.5)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, d, generator=g)
    return x.relu_(), y  # non-negative like post-ReLU / pooled features


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
    return t_lin, metrics["acc"], settings["chosen_C"], t_knn, knn_metrics["acc"]


def bench_sklearn(feats, c_grid, max_iter):
    import warnings

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
        clf = LogisticRegression(max_iter=max_iter, warm_start=True)
        val = {}
        for c in sorted(c_grid):
            clf.set_params(C=c).fit(xtr_s, ytr)
            val[c] = clf.score(xva_s, yva)
        best = max(sorted(val), key=lambda c: (val[c], -c))
        import numpy as np

        xfit, yfit = np.concatenate([xtr, xva]), np.concatenate([ytr, yva])
        scaler = StandardScaler().fit(xfit)
        clf = LogisticRegression(C=best, max_iter=max_iter).fit(scaler.transform(xfit), yfit)
        acc = clf.score(scaler.transform(xte), yte)
    return time.perf_counter() - t, acc, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=50_000, help="training features")
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--dims", default="512,2048")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--devices", default="cpu,cuda", help="cuda is skipped when absent")
    ap.add_argument("--no-sklearn", action="store_true")
    args = ap.parse_args()
    lin = LinearConfig()
    c_grid, max_iter = list(lin.c_grid), lin.max_iter
    devices = [torch.device(d) for d in args.devices.split(",")
               if d != "cuda" or torch.cuda.is_available()]
    print(f"n = {args.n} train ({lin.val_fraction:.0%} carved as val) + {args.n_test} test, "
          f"{args.classes} classes, C grid {c_grid}, max_iter {max_iter}, "
          f"torch threads {torch.get_num_threads()}")
    print()
    print("| features | solver | device | linear probe (s) | top-1 | chosen C | k-NN (s) | k-NN top-1 |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for d in (int(s) for s in args.dims.split(",")):
        x, y = make_features(args.n + args.n_test, d, args.classes)
        n_val = int(lin.val_fraction * args.n)
        feats = {"train": (x[:args.n - n_val], y[:args.n - n_val]),
                 "val": (x[args.n - n_val:args.n], y[args.n - n_val:args.n]),
                 "test": (x[args.n:], y[args.n:])}
        shape = f"{args.n} x {d}"
        for device in devices:
            bench_sslbench(feats, args.classes, c_grid[:1], 2, device)  # warm-up (CUDA init)
            t_lin, acc, c, t_knn, knn_acc = bench_sslbench(feats, args.classes, c_grid,
                                                           max_iter, device)
            print(f"| {shape} | sslbench L-BFGS (torch) | {device.type} | {t_lin:.2f} | "
                  f"{100 * acc:.2f} | {c:g} | {t_knn:.2f} | {100 * knn_acc:.2f} |", flush=True)
        if not args.no_sklearn:
            t_sk, acc, c = bench_sklearn(feats, c_grid, max_iter)
            print(f"| {shape} | scikit-learn LogisticRegression (lbfgs) | cpu | {t_sk:.2f} | "
                  f"{100 * acc:.2f} | {c:g} | – | – |", flush=True)


if __name__ == "__main__":
    main()
