"""Two gloo processes on CPU: gathered-negative NT-Xent and a DDP training step equal the
single-process computation on the same global batch."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslbench.distributed import free_port
from sslbench.ssl.simclr import nt_xent_loss



def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)


def _loss_worker(rank, world, port, z1, z2, out):
    _init(rank, world, port)
    n = z1.shape[0] // world
    a = z1[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    b = z2[rank * n:(rank + 1) * n].clone().requires_grad_(True)
    loss = nt_xent_loss(a, b, 0.2)
    loss.backward()
    t = loss.detach().clone()
    dist.all_reduce(t)
    # DDP averages gradients over ranks; the equivalent for the inputs is grad / world
    out[rank] = {"loss": (t / world).item(), "ga": a.grad / world, "gb": b.grad / world}
    dist.destroy_process_group()


def test_gathered_nt_xent_equals_single_process():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    out = mp.Manager().dict()
    mp.spawn(_loss_worker, args=(2, free_port(), z1, z2, out), nprocs=2, join=True)

    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    ref = nt_xent_loss(a, b, 0.2, gather=False)
    ref.backward()
    assert out[0]["loss"] == pytest.approx(ref.item(), abs=1e-6)
    assert out[1]["loss"] == pytest.approx(ref.item(), abs=1e-6)
    torch.testing.assert_close(torch.cat([out[0]["ga"], out[1]["ga"]]), a.grad, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.cat([out[0]["gb"], out[1]["gb"]]), b.grad, atol=1e-6, rtol=0)


def _build():
    from omegaconf import OmegaConf

    from sslbench.backbones import create_backbone
    from sslbench.config import BackboneConfig
    from sslbench.ssl import DataSpec
    from sslbench.ssl.simclr import SimCLR

    torch.manual_seed(0)
    # test_vit: LayerNorm only, so per-process batch statistics cannot differ from 1 process
    bb = create_backbone(OmegaConf.structured(BackboneConfig(name="test_vit")), 32)
    cfg = SimCLR.Config(proj_hidden_dim=32, proj_dim=16, head_batch_norm=False)
    return SimCLR(bb, cfg, DataSpec(32, (0.5,) * 3, (0.25,) * 3))


def _ddp_worker(rank, world, port, views, out):
    from sslbench.ssl import StepInfo

    _init(rank, world, port)
    method = _build()
    model = torch.nn.parallel.DistributedDataParallel(method)
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    n = views[0].shape[0] // world
    local = [v[rank * n:(rank + 1) * n] for v in views]
    loss = model(local, StepInfo(0, 1, 1))["loss"]
    loss.backward()
    opt.step()
    t = loss.detach().clone()
    dist.all_reduce(t)
    out[rank] = {"loss": (t / world).item(),
                 "w": {k: v.detach().clone() for k, v in method.state_dict().items()}}
    dist.destroy_process_group()


def test_ddp_simclr_step_equals_single_process():
    from sslbench.ssl import StepInfo

    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, free_port(), views, out), nprocs=2, join=True)

    method = _build()
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    loss = method(views, StepInfo(0, 1, 1))["loss"]
    loss.backward()
    opt.step()
    res = [out[0], out[1]]  # copy out of the Manager once (each access re-sends the dict)
    assert res[0]["loss"] == pytest.approx(loss.item(), abs=1e-5)
    for k, v in method.state_dict().items():
        torch.testing.assert_close(res[0]["w"][k], v, atol=1e-5, rtol=1e-4, msg=k)
        torch.testing.assert_close(res[1]["w"][k], v, atol=1e-5, rtol=1e-4, msg=k)


@pytest.mark.slow
def test_torchrun_cli_pretrain_two_processes(tmp_path):
    """`torchrun --nproc_per_node 2 -m sslbench pretrain` on CPU (gloo): rank 0 writes the run."""
    import json
    import subprocess
    import sys

    from conftest import write_recipe

    recipe = write_recipe(tmp_path / "r.yaml", {"train": {"max_steps": 3, "batch_size": 32}})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", str(free_port()), "-m", "sslbench", "pretrain",
                        str(recipe), "--out", "ddp", "-q"],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert info["world_size"] == 2 and info["status"] == "done"
    assert info["pretrain"]["images_seen"] == 3 * 32
    assert (tmp_path / "ddp" / "backbone.safetensors").is_file()
