"""torch.distributed helpers that are no-ops in a single process (no init needed)."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
from torch import Tensor


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device_type: str) -> None:
    """Initialise the process group when launched by ``torchrun`` (env:// rendezvous)."""
    if is_dist() or not launched_by_torchrun():
        return
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)


def gather_with_grad(x: Tensor) -> Tensor:
    """All-gather along dim 0, keeping the autograd graph (gradients flow back to each rank)."""
    if not is_dist() or world_size() == 1:
        return x
    import torch.distributed.nn.functional as dfn

    return torch.cat(dfn.all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def gather_no_grad(x: Tensor) -> Tensor:
    if not is_dist() or world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    if not is_dist() or world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def free_port() -> int:
    """A free TCP port on localhost for a process group's MASTER_PORT (tests, the conformance
    kit's 2-process check)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
