"""Tests of the Barlow Twins plugin: the sslbench contract and exact values of the loss.

Run with ``pytest examples/plugin_method/tests`` once the package is installed
(``pip install -e examples/plugin_method``): the method is found through its entry point.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from sslbench_barlowtwins import BarlowTwins, barlow_twins_loss, cross_correlation

LAMBDA = 0.0051


def decorrelated(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """(n, d) columns with mean 0, biased variance 1 and ``Zᵀ Z / n = I`` (needs n > d)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(a - a.mean(0))  # orthonormal columns, each orthogonal to 1
    return (q * n ** 0.5).float()


# -- the contract -------------------------------------------------------------------------------

def test_registered_through_the_entry_point():
    from sslbench.ssl import METHODS

    assert METHODS.get("barlow_twins") is BarlowTwins
    assert METHODS.origin("barlow_twins") == "plugin sslbench_barlowtwins:BarlowTwins"


def test_conforms():
    from sslbench.conformance import assert_conforms

    checks = assert_conforms("barlow_twins")  # resnet and vit, tiny backbones, CPU
    assert {c.family for c in checks} == {"resnet", "vit"}


def test_recipe_options_build():
    """The embedded recipe's deviations (inversion, strong colour augmentation) build and run."""
    from sslbench.recipe import load_recipe
    from sslbench.conformance import sample_images
    from sslbench.run import build_method

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "embedded.yaml"
    cfg = load_recipe(recipe, ["method.proj_hidden_dim=32", "method.proj_dim=16"])
    assert cfg.method.invert_p == 0.5 and cfg.method.gray_p == 0.8
    method = build_method(cfg)
    assert type(method.augment1[-1]).__name__ == "RandomInvert"
    x = sample_images(8)
    views = method.make_views(x)
    assert len(views) == 2 and all(v.shape == (8, 3, 32, 32) and v.isfinite().all()
                                   for v in views)
    assert BarlowTwins.Config().invert_p == 0.0  # the paper's augmentation by default


# -- exact values of the loss -------------------------------------------------------------------

def test_identical_decorrelated_embeddings_give_zero_loss():
    z = decorrelated(64, 16)
    loss, on, off = barlow_twins_loss(z, z.clone(), LAMBDA, scale_loss=1.0, eps=0.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    assert float(on) == pytest.approx(0.0, abs=1e-6) and float(off) == pytest.approx(0, abs=1e-6)
    # per-dimension positive rescaling and shifts do not matter: the embeddings are standardised
    scale, shift = torch.rand(16) * 5 + 0.1, torch.randn(16) * 3
    loss2, _, _ = barlow_twins_loss(z * scale + shift, z, LAMBDA, 1.0, eps=0.0)
    assert float(loss2) == pytest.approx(0.0, abs=1e-5)
    # with BatchNorm's eps, C = I / (1 + eps): the loss is D (1 - 1/(1 + eps))² ≈ 0
    loss3, _, _ = barlow_twins_loss(z, z, LAMBDA, 1.0)
    assert float(loss3) < 1e-6


def test_uncorrelated_views_give_d():
    d = 16
    q = decorrelated(64, 2 * d)
    z1, z2 = q[:, :d], q[:, d:]  # C = 0
    assert torch.allclose(cross_correlation(z1, z2, eps=0.0), torch.zeros(d, d), atol=1e-5)
    for scale in (1.0, 0.1):
        loss, on, off = barlow_twins_loss(z1, z2, LAMBDA, scale, eps=0.0)
        assert float(on) == pytest.approx(d, rel=1e-5) and float(off) == pytest.approx(0, abs=1e-5)
        assert float(loss) == pytest.approx(scale * d, rel=1e-5)


def test_anticorrelated_views_give_4d():
    z = decorrelated(64, 16)
    loss, _, _ = barlow_twins_loss(z, -z, LAMBDA, 1.0, eps=0.0)  # C = -I
    assert float(loss) == pytest.approx(4 * 16, rel=1e-5)


def test_permuted_dimensions_weigh_off_diagonal_by_lambda():
    d = 16
    z = decorrelated(64, d)
    z2 = z.roll(1, dims=1)  # C is a permutation matrix with an empty diagonal
    loss, on, off = barlow_twins_loss(z, z2, LAMBDA, 1.0, eps=0.0)
    assert float(on) == pytest.approx(d, rel=1e-5) and float(off) == pytest.approx(d, rel=1e-5)
    assert float(loss) == pytest.approx(d * (1 + LAMBDA), rel=1e-5)


def test_matches_the_official_formulation():
    """The official code: ``c = bn(z1).T @ bn(z2) / N`` with BatchNorm1d(affine=False)."""
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(40, 24, generator=g) * 3 + 1
    z2 = 0.5 * z1 + torch.randn(40, 24, generator=g)
    bn = nn.BatchNorm1d(24, affine=False).train()
    c = bn(z1).T @ bn(z2) / 40
    off = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    ref = (torch.diagonal(c) - 1).pow(2).sum() + LAMBDA * off
    loss, _, _ = barlow_twins_loss(z1, z2, LAMBDA, scale_loss=0.1)
    assert float(loss) == pytest.approx(0.1 * float(ref), rel=1e-5)


# -- DDP: the global batch ----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, z1, z2, out) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = z1.shape[0] // world
        a = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        b = z2[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        loss, _, _ = barlow_twins_loss(a, b, LAMBDA, 0.1)
        loss.backward()
        out[rank] = {"loss": float(loss), "g1": a.grad.clone(), "g2": b.grad.clone()}
    except Exception as e:  # reported by the parent
        out[rank] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        dist.destroy_process_group()


def test_ddp_uses_the_global_batch():
    """Two gloo processes on halves of a batch get the single-process loss on the whole batch;
    each rank's gradient is world_size x its share, which DDP's averaging turns into the
    single-process gradient."""
    import torch.multiprocessing as mp

    world = 2
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(32, 12, generator=g) * 2 + 0.5
    z2 = 0.7 * z1 + torch.randn(32, 12, generator=g)
    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    loss, _, _ = barlow_twins_loss(a, b, LAMBDA, 0.1)
    loss.backward()

    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(world, _free_port(), z1, z2, out), nprocs=world, join=True)
    n = 32 // world
    for r in range(world):
        res = out[r]
        assert "error" not in res, res.get("error")
        assert res["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
        sl = slice(r * n, (r + 1) * n)
        assert torch.allclose(res["g1"] / world, a.grad[sl], rtol=1e-4, atol=1e-6)
        assert torch.allclose(res["g2"] / world, b.grad[sl], rtol=1e-4, atol=1e-6)
