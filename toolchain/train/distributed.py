"""Training on several processes (`torchrun`, or `qtool train --nproc N`): which process this is, its shard of each
batch, and the one gradient average per step.

Data parallel, with the same global batch as one process: every rank draws the same batches (they are a function of
the seed and the epoch), cuts the same width, and trains on its rows `rank::world` of each. The ranks draw the same
LengthDrop sub-models too: the sandwich is sampled from a `random.Random` seeded by the step, identical on every
rank. Each rank's loss is a mean over its rows, so the ranks' averaged gradient is the one-process gradient.

Why not the `DistributedDataParallel` wrapper: a LengthDrop step runs the model several times (the full model, then
each sampled sub-model), each with its own backward, and `drop_and_restore` calls the layers one by one rather than
the wrapped module's forward, whose hooks DDP's reducer needs. So each rank accumulates its gradients over the whole
step and the ranks average them once, in one flat buffer (what DDP's buckets do), before clipping and the optimizer
step: every rank then takes the same step and the weights stay equal. gloo on CPUs, NCCL on CUDA.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist

from ..core.errors import InputError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this machine (they share its cores)

    @property
    def writer(self) -> bool:
        """Rank 0 alone writes checkpoints, snapshots, the model and its record."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def from_environment() -> Ranks:
    """The ranks torchrun sets in the environment (RANK, WORLD_SIZE, LOCAL_RANK); one process without them."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Ranks()
    world = int(os.environ["WORLD_SIZE"])
    return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", 0)),
                 int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def start(ranks: Ranks, device: str, batch_size: int) -> str:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this rank's device."""
    if not ranks.distributed:
        return device
    if batch_size % ranks.world:
        raise InputError(f"--batch-size {batch_size} must divide among {ranks.world} processes: each trains on an "
                         "equal share of every batch, so the average of their gradients is the batch's")
    if device.startswith("cuda"):
        device = f"cuda:{ranks.local_rank}"
        torch.cuda.set_device(device)
    else:  # the machine's cores shared among its processes, as one process would use them all
        torch.set_num_threads(max(1, torch.get_num_threads() // ranks.local_world))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return device


def stop(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(rows: np.ndarray, ranks: Ranks) -> np.ndarray:
    """This rank's rows of a global batch."""
    return rows[ranks.rank :: ranks.world]


def same_start(parameters: Iterable[torch.Tensor], ranks: Ranks) -> None:
    """Every rank starts from rank 0's weights (they are seeded alike; this makes it so whatever a base did)."""
    if ranks.distributed:
        for p in parameters:
            dist.broadcast(p.data, src=0)


def average_gradients(parameters: Sequence[torch.Tensor], ranks: Ranks) -> None:
    """Average the ranks' gradients in one all-reduce of one flat buffer. A parameter no rank gave a gradient keeps
    none (the optimizer skips it, as it would in one process); one some rank did not reach counts zeros there."""
    if not ranks.distributed:
        return
    device = parameters[0].device
    reached = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32, device=device)
    dist.all_reduce(reached, op=dist.ReduceOp.MAX)
    live = [p for p, r in zip(parameters, reached.tolist()) if r]
    if not live:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in live])
    dist.all_reduce(flat)
    flat /= ranks.world
    offset = 0
    for p in live:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def mean_over_ranks(value: float, ranks: Ranks, device: str) -> float:
    """A step's loss as one process would report it: the mean of the ranks' losses."""
    return _reduced(value, ranks, device, dist.ReduceOp.SUM) / ranks.world


def largest_over_ranks(value: float, ranks: Ranks, device: str) -> float:
    """One clock for all ranks (the slowest one's): a --time-budget run then gives every rank the same learning
    rate at each step and stops them at the same step (a rank stopping alone would hang the others)."""
    return _reduced(value, ranks, device, dist.ReduceOp.MAX)


def _reduced(value: float, ranks: Ranks, device: str, op: dist.ReduceOp) -> float:
    if not ranks.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return float(t.item())


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `qtool <argv>` as `nproc` processes on this machine under torchrun; returns its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "toolchain.cli", *argv]
    return subprocess.run(cmd).returncode
