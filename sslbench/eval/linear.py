"""Linear probe on frozen features: L-BFGS multinomial logistic regression.

docs/methods.md#linear-probe, variant 3.

SimCLR's transfer protocol: L2-regularised multinomial logistic regression fitted with L-BFGS on
pre-extracted features (no augmentation), the regularisation chosen on a held-out validation split
carved from the training data (never the test set), then refitted on train + validation with the
chosen value. ``C`` follows scikit-learn's convention (objective ``0.5‖W‖² + C Σ CE``), features
are standardised per dimension with training statistics, and the fit runs full-batch on the
features' device (GPU when present).

Convergence. Each fit minimises the per-example objective ``f = mean CE + ‖W‖² / (2 C n)``
(scikit-learn's objective divided by ``C n``) and has converged when the largest absolute entry
of its gradient over ``(W, b)`` is at most :data:`TOL` = 1e-6: scikit-learn's lbfgs criterion
(its ``tol``, default 1e-4) a hundred times tighter. On random-init ``test_resnet`` features of
the embedded benchmark this leaves a relative objective gap to the exact (Newton) optimum below
1e-7 at every C of the default grid (``benchmarks/linear_probe.py --embedded``). A fit stops
when it converges, after ``eval.linear.max_iter`` L-BFGS iterations (``2 max_iter`` objective
evaluations), or when it stalls (an objective change below :data:`_STALL`); only the first
counts as converged.

Speed. Random-init and pretrained features are strongly correlated, which makes the large-C
fits ill-conditioned: plain L-BFGS needed up to ~1,000 iterations per C there. L-BFGS therefore
runs in preconditioned coordinates ``U = W V (Λ + λ I)^(1/2)`` (``Σ = V Λ Vᵀ`` the features'
second moment, one eigendecomposition per feature matrix; :func:`_scale`): the same objective
and optimum, reached in under ~120 iterations per C on those features. Where features outnumber
images (raw pixels: 3,072 dimensions on ~1,600 images) ``V`` spans only the row space of the
features, found from the ``n × n`` Gram matrix (:func:`second_moment_basis`; exact, since the
optimum lies there), and no ``d × d`` matrix is formed per C. The C path runs in ascending
C (strongest regularisation first), each fit warm-started from the previous C's solution; the
refit on train + validation starts from the chosen C's solution, re-expressed for the new
standardisation. The solve runs in float64: float32's rounding of the objective (~1e-7
relative) stalls the line search near max |∇f| ≈ 1e-5–1e-4.

Each linear record says how its fits ended (``chosen_converged``, ``chosen_iterations_by_C``,
``chosen_grad_by_C``, ``chosen_refit``; per-run values, so ``chosen_``-prefixed) and under which
``tol``; ``sslbench leaderboard validate`` warns about a record that did not converge.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from . import beaten_neighbour
from .protocol import EvalContext, Result, register_protocol
from .scoring import score

# max |∂f/∂(W, b)| at which a fit has converged (module docstring)
TOL = 1e-6
# an objective change below this ends a fit that can make no more progress (not converged)
_STALL = 1e-12
_HISTORY = 20  # L-BFGS memory (pairs of vectors)

Scale = tuple[Tensor, Tensor]  # per-dimension (mean, std) of the standardisation
Basis = tuple[Tensor, Tensor]  # eigenvalues, eigenvectors (columns) of the features' second moment


@dataclass(frozen=True)
class LogRegFit:
    """One L-BFGS fit: the head on standardised features and how the solve ended."""
    w: Tensor
    b: Tensor
    iterations: int
    grad: float  # max |∂f/∂(W, b)| at (w, b)
    converged: bool  # grad <= the tolerance of the fit


def second_moment_basis(x: Tensor) -> Basis:
    """Eigenvalues and orthonormal eigenvectors (columns, ``d × r``) of ``Σ = xᵀx / n`` that
    span the row space of ``x``: the preconditioner's basis, one per feature matrix, shared by
    every C. With ``d <= n`` all ``d`` of them (``eigh`` of Σ); with ``d > n`` (raw pixels, wide
    features on few images) the ``r <= n`` of the row space, from the ``n × n`` Gram matrix at a
    cost of ``n² d`` instead of ``d³``. Fitting in that span is exact: the L2-regularised optimum
    lies in the row space of ``x`` (every gradient does), and a fit started there stays there."""
    n, d = x.shape
    if d <= n:
        values, vectors = torch.linalg.eigh(x.T @ x / n)
        return values.clamp_min(0), vectors
    values, u = torch.linalg.eigh(x @ x.T / n)
    keep = values > values.max().clamp_min(1e-300) * 1e-12  # the numerically nonzero ones
    values, u = values[keep], u[:, keep]
    return values, (x.T @ u) / (n * values).sqrt()  # Σ v = λ v with v = xᵀu / √(nλ)


def _scale(basis: Basis, c: float, n: int, num_classes: int) -> Tensor:
    """The per-direction scale ``√(λ_i + λ)``, ``λ = 1 / (s C n)``: the Hessian of ``f`` in ``W``
    is about ``s Σ + I / (C n)`` per class, ``s = (K − 1) / K²`` the softmax curvature at
    uniform predictions, so in ``U`` with ``W = (U / scale) Vᵀ`` the problem is close to
    isotropic (``V`` the basis's eigenvectors)."""
    lam = num_classes ** 2 / (max(num_classes - 1, 1) * c * n)
    return (basis[0] + lam).sqrt()


def _objective(x: Tensor, y: Tensor, w: Tensor, b: Tensor, reg: float) -> Tensor:
    return F.cross_entropy(x @ w.T + b, y) + reg * (w * w).sum()


def _grad_max(x: Tensor, y: Tensor, w: Tensor, b: Tensor, reg: float) -> float:
    """max |∂f/∂(W, b)| at ``(w, b)``: the convergence criterion."""
    w, b = w.detach().requires_grad_(True), b.detach().requires_grad_(True)
    with torch.enable_grad():
        _objective(x, y, w, b, reg).backward()
    return float(torch.maximum(w.grad.abs().max(), b.grad.abs().max()))


def fit_logreg(x: Tensor, y: Tensor, num_classes: int, c: float, max_iter: int, tol: float,
               init: Optional[tuple[Tensor, Tensor]] = None,
               basis: Optional[Basis] = None) -> LogRegFit:
    """Minimise ``mean CE + ‖W‖² / (2 C n)`` (= sklearn's objective / (C n)); bias unpenalised.

    L-BFGS (strong Wolfe line search) in the preconditioned coordinates ``U`` with
    ``W = (U / scale) Vᵀ`` (see :func:`_scale`; ``basis`` = (λ, V) from
    :func:`second_moment_basis`, computed when None) from ``init`` (zeros when None; its part
    outside the span of ``V`` is dropped) in ``x``'s dtype, for at most ``max_iter`` iterations
    and ``2 max_iter`` objective evaluations (line search included); converged when
    max |∂f/∂(W, b)| <= ``tol``."""
    n, d = x.shape
    if basis is None:
        basis = second_moment_basis(x)
    vectors = basis[1]
    scale = _scale(basis, c, n, num_classes)
    w0, b0 = init if init is not None else (x.new_zeros(num_classes, d),
                                            x.new_zeros(num_classes))
    u, b = ((w0 @ vectors) * scale).requires_grad_(True), b0.clone().requires_grad_(True)
    # torch's own test (tolerance_grad) would see the gradient in U: the closure ends the
    # solve itself by reporting a zero gradient once the criterion holds in (W, b)
    opt = torch.optim.LBFGS([u, b], lr=1.0, max_iter=max_iter, max_eval=2 * max_iter,
                            tolerance_grad=0.0, tolerance_change=_STALL,
                            history_size=_HISTORY, line_search_fn="strong_wolfe")
    reg = 1.0 / (2.0 * c * n)

    def closure() -> Tensor:
        opt.zero_grad()
        w = (u / scale) @ vectors.T
        w.retain_grad()
        loss = _objective(x, y, w, b, reg)
        loss.backward()
        if torch.maximum(w.grad.abs().max(), b.grad.abs().max()) <= tol:
            u.grad.zero_()
            b.grad.zero_()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w = ((u / scale) @ vectors.T).detach()
    grad = _grad_max(x, y, w, b, reg)
    return LogRegFit(w, b.detach(), int(opt.state[u]["n_iter"]), grad, grad <= tol)


def fit_path(x: Tensor, y: Tensor, num_classes: int, c_grid: Sequence[float], max_iter: int,
             tol: float, basis: Optional[Basis] = None) -> dict[float, LogRegFit]:
    """One fit per C in ascending order (strongest regularisation first), each warm-started
    from the previous C's solution."""
    fits: dict[float, LogRegFit] = {}
    init, basis = None, basis if basis is not None else second_moment_basis(x)
    for c in sorted(c_grid):
        fits[c] = fit_logreg(x, y, num_classes, c, max_iter, tol, init, basis)
        init = (fits[c].w, fits[c].b)
    return fits


def _choose(val_acc: dict[float, float]) -> float:
    """The C of the best validation accuracy; ties go to the stronger regularisation."""
    return max(sorted(val_acc), key=lambda c: (val_acc[c], -c))


def _winning_edge(val_acc: dict[float, float]) -> Optional[tuple[float, float]]:
    """``(edge C, next C beyond it)`` when the chosen C is an end of the searched values and
    strictly beats its inner neighbour (the optimum may lie beyond), else None. The step beyond
    repeats the grid's ratio at that end."""
    best = _choose(val_acc)
    inner = beaten_neighbour(sorted(val_acc), best, val_acc.get)
    if inner is None:
        return None
    return best, float(f"{best * best / inner:.12g}")  # 0.01, not 0.009999999999999998


def extend_path(x: Tensor, y: Tensor, xva: Tensor, yva: Tensor, num_classes: int,
                path: dict[float, LogRegFit], val_acc: dict[float, float], steps: int,
                max_iter: int, tol: float, basis: Basis) -> None:
    """Grow the C path beyond an end of the grid while the C at that end wins on validation:
    at most ``steps`` more values, each warm-started from the edge's fit (``path`` and
    ``val_acc`` are extended in place)."""
    for _ in range(steps):
        edge = _winning_edge(val_acc)
        if edge is None:
            return
        c, new = edge
        path[new] = fit_logreg(x, y, num_classes, new, max_iter, tol, (path[c].w, path[c].b),
                               basis)
        val_acc[new] = accuracy(path[new].w, path[new].b, xva, yva)


def standardise(train: Tensor) -> Scale:
    """Per-dimension (mean, std) of ``train``: features become ``(x − mean) / std``."""
    mean = train.mean(0, keepdim=True)
    std = train.std(0, keepdim=True).clamp_min(1e-6)
    return mean, std


def accuracy(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> float:
    return float(((x @ w.T + b).argmax(1) == y).float().mean())


def unstandardise(w: Tensor, b: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """The head on standardised features as a head on raw features: ``W' = W / σ``,
    ``b' = b − W'·μ``, so ``x W'ᵀ + b' == ((x − μ) / σ) Wᵀ + b`` (LP-FT head init,
    docs/methods.md#lp-ft)."""
    w2 = w / std.reshape(1, -1)
    return w2, b - w2 @ mean.reshape(-1)


def _restandardise(w: Tensor, b: Tensor, old: Scale, new: Scale) -> tuple[Tensor, Tensor]:
    """The head on features standardised with ``old`` as the same function of the raw features
    standardised with ``new`` (the refit's warm start)."""
    w_raw, b_raw = unstandardise(w, b, *old)
    return w_raw * new[1].reshape(1, -1), b_raw + w_raw @ new[0].reshape(-1)


def _refit(xfit: Tensor, yfit: Tensor, num_classes: int, c: float, start: LogRegFit,
           scale: Scale, max_iter: int, tol: float) -> tuple[LogRegFit, Scale]:
    """Fit C on ``xfit`` (train + val, standardised with its own statistics) from ``start``."""
    new = standardise(xfit)
    init = _restandardise(start.w, start.b, scale, new)
    return fit_logreg((xfit - new[0]) / new[1], yfit, num_classes, c, max_iter, tol, init), new


def _convergence_settings(path: dict[float, LogRegFit],
                         refit: Optional[LogRegFit]) -> dict[str, Any]:
    """The per-run record of how the fits ended; ``chosen_``-prefixed so the board treats it
    like the other per-run choices (aggregation.comparable_settings ignores it)."""
    fits = [*path.values(), *([refit] if refit is not None else [])]
    out: dict[str, Any] = {
        "chosen_converged": all(f.converged for f in fits),
        "chosen_iterations_by_C": {f"{c:g}": f.iterations for c, f in path.items()},
        "chosen_grad_by_C": {f"{c:g}": f.grad for c, f in path.items()},
    }
    if refit is not None:
        out["chosen_refit"] = {"iterations": refit.iterations, "grad": refit.grad,
                               "converged": refit.converged}
    return out


def run_linear(feats: dict[str, tuple[Tensor, Tensor]], num_classes: int, c_grid: Sequence[float],
               max_iter: int, refit: bool = True,
               device: Optional[torch.device] = None, return_head: bool = False,
               predictions: Optional[dict[str, Tensor]] = None, extend: int = 0):
    """Choose C on ``feats["val"]``, refit, report accuracy on every other split.

    ``feats`` maps split -> (features, labels) and must hold "train" and "val". While the
    chosen C is an end of the searched values and beats its neighbour, up to ``extend`` more
    values beyond that end are fitted (:func:`extend_path`; the record lists every searched C
    in ``chosen_c_searched``). Without
    ``refit`` the head is the C path's fit of the chosen C. Returns ``(metrics, settings)``,
    plus the final head on un-standardised features ``(W', b')`` in float32 (see
    :func:`unstandardise`) when ``return_head``. The predictions go to ``predictions`` when
    given (:mod:`sslbench.eval.scoring`).
    """
    dev = device or torch.device("cpu")
    f = {k: (x.to(dev, torch.float64), y.to(dev)) for k, (x, y) in feats.items()}
    (xtr, ytr), (xva, yva) = f["train"], f["val"]
    scale = standardise(xtr)
    xtr_s = (xtr - scale[0]) / scale[1]
    basis = second_moment_basis(xtr_s)
    path = fit_path(xtr_s, ytr, num_classes, c_grid, max_iter, TOL, basis)
    xva_s = (xva - scale[0]) / scale[1]
    val_acc = {c: accuracy(p.w, p.b, xva_s, yva) for c, p in path.items()}
    extend_path(xtr_s, ytr, xva_s, yva, num_classes, path, val_acc, extend, max_iter,
                TOL, basis)
    best_c = _choose(val_acc)
    final, refitted = path[best_c], None
    if refit:
        refitted, scale = _refit(torch.cat([xtr, xva]), torch.cat([ytr, yva]), num_classes,
                                 best_c, final, scale, max_iter, TOL)
        final = refitted
    metrics = {"val_acc": val_acc[best_c]}
    for split, (x, y) in f.items():
        if split not in ("train", "val"):
            logits = ((x - scale[0]) / scale[1]) @ final.w.T + final.b
            score(metrics, split, logits.argmax(1), y, predictions)
    settings = {"solver": "lbfgs", "standardise": "per-dimension (train stats)",
                "c_grid": [float(c) for c in sorted(c_grid)], "extend_grid": int(extend),
                "chosen_C": float(best_c), "max_iter": max_iter, "tol": TOL,
                "refit_on_train_and_val": refit,
                "chosen_c_searched": [float(c) for c in sorted(path)],
                "chosen_val_acc_by_C": {f"{c:g}": val_acc[c] for c in sorted(val_acc)},
                **_convergence_settings(path, refitted)}
    if return_head:
        head = unstandardise(final.w, final.b, *scale)
        return metrics, settings, (head[0].float(), head[1].float())
    return metrics, settings


@register_protocol("linear", frozen_features=True, order=10)
def linear(ctx: EvalContext) -> Result:
    """The L-BFGS probe on the fit split's frozen features, C chosen on the validation split."""
    c = ctx.cfg.eval.linear
    metrics, settings = run_linear(ctx.features(), ctx.num_classes, c.c_grid, c.max_iter,
                                   c.refit_on_train_and_val, ctx.device,
                                   predictions=ctx.predictions, extend=c.extend_grid)
    settings["val_split"] = ctx.val_split
    return metrics, settings


def carve_validation(labels: Tensor, groups: Optional[Tensor], fraction: float,
                     seed: int) -> tuple[Tensor, Tensor]:
    """Split training indices into (train, val). When ``groups`` is given (e.g. the source glyph
    of each render) whole groups go to one side, so validation never sees a training group."""
    g = torch.Generator().manual_seed(seed)
    n = labels.numel()
    if groups is None:
        perm = torch.randperm(n, generator=g)
        n_val = max(1, round(fraction * n))
        return perm[n_val:].sort().values, perm[:n_val].sort().values
    uniq = groups.unique()
    perm = uniq[torch.randperm(uniq.numel(), generator=g)]
    n_val = max(1, round(fraction * uniq.numel()))
    is_val = torch.isin(groups, perm[:n_val])
    return (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)
