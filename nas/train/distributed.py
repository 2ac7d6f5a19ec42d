"""Data parallelism under torchrun: one process per device, gradients averaged across them with torch.distributed
(gloo on the CPU, nccl on CUDA). Every rank holds the same weights, architecture logits and random streams: it
starts from the same seed, takes an equal share of every global batch (so each draws the same random numbers),
and applies the same averaged gradients. Batch norm and dropout act on the whole global batch
(``nas.train.sync_layers``), so the ranks together follow one process's trajectory. Only rank 0 writes the run
directory, measures latency and exports.

Gradients are all-reduced explicitly after ``backward`` rather than through ``DistributedDataParallel``: a
supernet leaves the unsampled paths without gradients every step, which DDP handles only with
``find_unused_parameters`` (a graph walk per step); sampled paths here are identical on every rank, so a plain
all-reduce of the gradients that exist is exact and needs no wrapper around models with extra forward arguments.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist

from nas.errors import AcceleratorError


class FollowerDone(Exception):
    """Raised on ranks above 0 once their share of the training is done: rank 0 alone goes on to write, export
    and measure. The CLI ends such a process quietly (exit 0)."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes files, measures latency and exports."""
        return self.rank == 0

    def device(self, accelerator) -> torch.device:
        return torch.device("cuda", self.local_rank) if accelerator.kind == "cuda" else torch.device("cpu")

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace every existing gradient by its mean over the ranks (one flattened all-reduce)."""
        if self.size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.detach().reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        flat /= self.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def total(self, *values: float) -> tuple[float, ...]:
        """``values`` summed over the ranks (an epoch's loss sums and counts, so that rank 0 reports the whole
        epoch's figures rather than its share's)."""
        if self.size == 1:
            return values
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        summed = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(summed)
        return tuple(summed.tolist())


def current_world() -> World:
    """This process's place in the process group (a world of one when torch.distributed is not running)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def join_process_group(accelerator_kind: str) -> World:
    """Join the torchrun process group named by the environment (WORLD_SIZE, RANK, MASTER_ADDR ...), with gloo on
    the CPU and nccl on CUDA; a world of one outside torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 or (dist.is_available() and dist.is_initialized()):
        return current_world()
    if not dist.is_available():
        raise AcceleratorError("this torch build has no torch.distributed; run without torchrun")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if accelerator_kind == "cuda":
        if local >= torch.cuda.device_count():
            raise AcceleratorError(f"torchrun started {size} processes but this machine has "
                                   f"{torch.cuda.device_count()} GPU(s); use --nproc-per-node at most that")
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if accelerator_kind == "cuda" else "gloo")
    return current_world()


def leave_process_group() -> None:
    """Tear this process's group down once its work is done, before the interpreter exits: a group left to the
    interpreter's teardown can abort the process (gloo's threads destroyed unjoined: SIGABRT, "terminate called
    without an active exception") after every result was written. Not on an error path, where peers may still
    wait in a collective and nccl's teardown would hang."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
