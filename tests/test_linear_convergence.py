"""The L-BFGS linear probe converges (sslbench/eval/linear.py, "Convergence"): every C of the grid
reaches the exact optimum's objective, warm starts change the cost and not the solution, a fit
that runs out of iterations says so in its record, and ``leaderboard validate`` warns about it."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from conftest import make_record
from sslbench.config import LinearConfig
from sslbench.eval.linear import TOL, LogRegFit, fit_logreg, fit_path, run_linear
from sslbench.leaderboard.aggregation import comparable_settings
from sslbench.leaderboard.record import record_path, write_record
from sslbench.leaderboard.validate import main, validate_dir, validate_warnings

GRID = LinearConfig().c_grid
MAX_ITER = LinearConfig().max_iter
REL_GAP = 1e-6  # the documented objective accuracy of a converged fit


def _sample(n: int, seed: int, k: int = 4, d: int = 12) -> tuple[Tensor, Tensor]:
    """Overlapping Gaussian classes seen through a fixed random mixing: correlated,
    non-negative dimensions like pooled features, so large C is ill-conditioned."""
    g = torch.Generator().manual_seed(0)
    centres, mix = torch.randn(k, d, generator=g), torch.randn(d, d, generator=g)
    g.manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    return ((centres[y] + 1.5 * torch.randn(n, d, generator=g)) @ mix).relu(), y


@pytest.fixture(scope="module")
def feats() -> dict[str, tuple[Tensor, Tensor]]:
    return {"train": _sample(300, 1), "val": _sample(100, 2), "test": _sample(100, 3)}


def _standardised(feats: dict[str, tuple[Tensor, Tensor]]) -> dict[str, tuple[Tensor, Tensor]]:
    """Every split standardised with the training statistics, in float64, as run_linear does."""
    xtr = feats["train"][0].double()
    mean, std = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True).clamp_min(1e-6)
    return {k: ((x.double() - mean) / std, y) for k, (x, y) in feats.items()}


@pytest.fixture(scope="module")
def path(feats) -> dict[float, LogRegFit]:
    """The warm-started C path on the standardised training features."""
    x, y = _standardised(feats)["train"]
    return fit_path(x, y, 4, GRID, MAX_ITER, TOL)


@pytest.fixture(scope="module")
def probe(feats) -> tuple[dict, dict, tuple[Tensor, Tensor]]:
    """``run_linear`` at the defaults: (metrics, settings, head on raw features)."""
    return run_linear(feats, 4, GRID, MAX_ITER, return_head=True)


def _objective(x: Tensor, y: Tensor, w: Tensor, b: Tensor, c: float) -> float:
    """``mean CE + ‖W‖² / (2 C n)``: scikit-learn's ``½‖W‖² + C Σ CE`` divided by ``C n``."""
    return float(F.cross_entropy(x @ w.T + b, y) + (w * w).sum() / (2 * c * len(y)))


def _sklearn_optimum(x: Tensor, y: Tensor, c: float) -> tuple[Tensor, Tensor]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(x.numpy(), y.numpy())
    return torch.from_numpy(clf.coef_), torch.from_numpy(clf.intercept_)


def _logits(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Logits centred per example (the bias is unpenalised: a shift common to every class
    leaves the objective unchanged)."""
    z = x @ w.T + b
    return z - z.mean(1, keepdim=True)


def _accuracy(w: Tensor, b: Tensor, x: Tensor, y: Tensor) -> float:
    return float(((x @ w.T + b).argmax(1) == y).float().mean())


def test_every_c_reaches_the_optimum_and_the_converged_choice(feats, path, probe):
    s = _standardised(feats)
    (x, y), (xv, yv) = s["train"], s["val"]
    ref_val = {}
    for c, fit in path.items():
        w_ref, b_ref = _sklearn_optimum(x, y, c)
        best = _objective(x, y, w_ref, b_ref, c)
        assert fit.converged and fit.grad <= TOL
        assert (_objective(x, y, fit.w, fit.b, c) - best) / best < REL_GAP, c
        ref_val[c] = _accuracy(w_ref, b_ref, xv, yv)
    ref_c = max(sorted(ref_val), key=lambda c: (ref_val[c], -c))
    settings = probe[1]
    assert settings["chosen_C"] == ref_c
    assert settings["chosen_val_acc_by_C"] == {f"{c:g}": a for c, a in ref_val.items()}


def test_warm_start_same_solution_in_fewer_iterations(feats, path):
    x, y = _standardised(feats)["train"]
    cold = {c: fit_logreg(x, y, 4, c, MAX_ITER, TOL) for c in GRID}
    for c in GRID:
        assert path[c].converged and cold[c].converged
        f_warm, f_cold = (_objective(x, y, f.w, f.b, c) for f in (path[c], cold[c]))
        assert abs(f_warm - f_cold) / f_cold < REL_GAP
        torch.testing.assert_close(_logits(x, path[c].w, path[c].b),
                                   _logits(x, cold[c].w, cold[c].b), atol=1e-2, rtol=0)
    assert sum(f.iterations for f in path.values()) < sum(f.iterations for f in cold.values())


def test_refit_on_train_and_val_is_warm_started_and_converges(feats, probe):
    _, settings, (w, b) = probe
    refit = settings["chosen_refit"]
    assert refit["converged"] and refit["grad"] <= TOL
    both = {"train": tuple(torch.cat([feats[k][i] for k in ("train", "val")]) for i in (0, 1))}
    x, y = _standardised(both)["train"]
    cold = fit_logreg(x, y, 4, settings["chosen_C"], MAX_ITER, TOL)
    assert refit["iterations"] < cold.iterations
    raw = both["train"][0]
    torch.testing.assert_close(_logits(raw, w, b), _logits(x, cold.w, cold.b).float(),
                               atol=1e-2, rtol=0)


def test_settings_carry_convergence_per_c_and_do_not_split_board_rows(probe):
    settings = probe[1]
    keys = set(settings["chosen_val_acc_by_C"])
    assert set(settings["chosen_iterations_by_C"]) == set(settings["chosen_grad_by_C"]) == keys
    assert settings["chosen_converged"] is True
    assert settings["tol"] == TOL and settings["max_iter"] == MAX_ITER
    assert all(g <= TOL for g in settings["chosen_grad_by_C"].values())
    assert all(0 < n <= MAX_ITER for n in settings["chosen_iterations_by_C"].values())
    comparable = comparable_settings(settings)
    assert "tol" in comparable and "max_iter" in comparable  # the solver's settings compare
    assert not any(k.startswith("chosen_") for k in comparable)  # per-run outcomes do not


def test_too_small_budget_is_not_converged_and_validate_warns(feats, tmp_path, capsys):
    _, settings = run_linear(feats, 4, GRID, 3)
    assert settings["chosen_converged"] is False
    assert all(n <= 3 for n in settings["chosen_iterations_by_C"].values())
    short = [c for c, g in settings["chosen_grad_by_C"].items() if g > TOL]
    assert short and settings["chosen_refit"]["converged"] is False
    board = tmp_path / "leaderboard"
    write_record(board / "results", make_record(protocol_settings=settings))
    path = record_path(board / "results", make_record(protocol_settings=settings))
    assert validate_dir(board) == []  # a warning, not a problem
    (line,) = validate_warnings(board)
    assert line.startswith(f"{path}: warning: ")
    assert f"at {', '.join(f'C={c}' for c in short)}, the refit" in line
    assert main(board) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == line and out[-1].endswith("all valid, 1 warning(s)")


def test_record_without_convergence_information_is_valid_and_not_warned(tmp_path):
    board = tmp_path / "leaderboard"
    legacy = {"solver": "lbfgs", "c_grid": GRID, "chosen_C": 0.1, "max_iter": 100}
    write_record(board / "results", make_record(protocol_settings=legacy))
    assert validate_dir(board) == [] and validate_warnings(board) == []


# ----------------------------------------------------------------------------- grid extension


def test_winning_edge_rules():
    from sslbench.eval.linear import _winning_edge

    assert _winning_edge({0.01: 0.5, 0.1: 0.6, 1.0: 0.7}) == (1.0, 10.0)  # top end wins
    assert _winning_edge({0.01: 0.7, 0.1: 0.6, 1.0: 0.5}) == (0.01, 0.001)  # bottom end wins
    assert _winning_edge({0.01: 0.5, 0.1: 0.7, 1.0: 0.6}) is None  # interior optimum
    assert _winning_edge({0.01: 0.5, 0.1: 0.7, 1.0: 0.7}) is None  # a tie at the end: not binding
    assert _winning_edge({1.0: 0.7}) is None
    assert _winning_edge({1.0: 0.5, 3.0: 0.6}) == (3.0, 9.0)  # the grid's own ratio


@pytest.mark.parametrize("grid, extend, searched, chosen", [
    ([1e-4, 1e-3], 0, [1e-4, 1e-3], 1e-3),           # no extension: the grid's edge
    ([1e-4, 1e-3], 2, [1e-4, 1e-3, 1e-2, 1e-1], 1e-1),  # grows while the edge wins, 2 at most
    ([1e-3, 1e-2], 5, [1e-3, 1e-2, 1e-1, 1.0, 10.0], 1.0),  # stops at an interior optimum
    ([10.0, 100.0], 2, [10.0, 100.0], 10.0),         # an edge that only ties is not extended
])
def test_grid_extends_while_its_edge_wins(feats, grid, extend, searched, chosen):
    metrics, settings = run_linear(feats, 4, grid, MAX_ITER, extend=extend)
    assert settings["c_grid"] == grid and settings["extend_grid"] == extend
    assert settings["chosen_c_searched"] == searched and settings["chosen_C"] == chosen
    val = settings["chosen_val_acc_by_C"]
    assert list(val) == [f"{c:g}" for c in searched]
    assert metrics["val_acc"] == max(val.values())
    assert settings["chosen_converged"] and len(settings["chosen_iterations_by_C"]) == len(searched)


def test_edge_note_names_the_searched_values():
    from sslbench.eval import grid_edge

    settings = {"c_grid": [1e-4, 1e-3], "chosen_c_searched": [1e-4, 1e-3, 1e-2, 1e-1],
                "chosen_C": 0.1, "chosen_val_acc_by_C": {"0.01": 0.72, "0.1": 0.77}}
    assert grid_edge(settings) == (
        "C 0.1 is the largest of the searched values [0.0001, 0.001, 0.01, 0.1]: extend the grid "
        "upwards; or raise eval.linear.extend_grid")
    assert grid_edge({**settings, "chosen_C": 0.01}) is None  # interior of what was searched


def test_extended_values_are_per_run_not_settings():
    # rows group on the grid and extend_grid, not on the values each run searched
    a = comparable_settings({"c_grid": [1.0], "extend_grid": 2, "chosen_c_searched": [1.0]})
    b = comparable_settings({"c_grid": [1.0], "extend_grid": 2,
                             "chosen_c_searched": [1.0, 10.0]})
    assert a == b == {"c_grid": [1.0], "extend_grid": 2, "label_fraction": 1.0}


# ----------------------------------------------------------------------------- wide features


def test_wide_features_basis_spans_the_row_space():
    from sslbench.eval.linear import second_moment_basis

    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 80, generator=g, dtype=torch.float64)  # d > n: rank 30
    values, vectors = second_moment_basis(x)
    assert vectors.shape == (80, 30) and values.shape == (30,)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(30, dtype=torch.float64))
    sigma = x.T @ x / 30
    torch.testing.assert_close(sigma @ vectors, vectors * values)  # eigenpairs of Σ
    torch.testing.assert_close(x @ vectors @ vectors.T, x)  # the rows lie in their span
    square = second_moment_basis(x[:, :20])  # d <= n: every direction
    assert square[1].shape == (20, 20)


def test_wide_features_reach_the_optimum():
    """More dimensions than images (raw pixels): the fit in the row space reaches the full
    problem's optimum (scikit-learn's, in all 60 dimensions) at every C."""
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (40,), generator=g)
    x = torch.randn(40, 60, generator=g, dtype=torch.float64) + torch.randn(
        3, 60, generator=g, dtype=torch.float64)[y]
    x = (x - x.mean(0)) / x.std(0)
    for c in (1e-2, 1.0, 100.0):
        fit = fit_logreg(x, y, 3, c, MAX_ITER, TOL)
        w_ref, b_ref = _sklearn_optimum(x, y, c)
        best = _objective(x, y, w_ref, b_ref, c)
        assert fit.converged, c
        # absolute: at C = 100 the data are separated and the objective is ~1e-3; a gradient
        # of 1e-6 bounds the gap by ~|g|² C n / 2 (strong convexity 1 / (C n)), ~4e-7 here
        assert _objective(x, y, fit.w, fit.b, c) - best < 1e-7, c
        if c <= 1:  # at C = 100 the objective is too flat to pin the logits this closely
            torch.testing.assert_close(_logits(x, fit.w, fit.b), _logits(x, w_ref, b_ref),
                                       atol=1e-3, rtol=0)
