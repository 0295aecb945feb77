"""Data-parallel training under ``torchrun``: gloo on the CPU, nccl on GPUs, nothing when run alone.

    torchrun --nproc_per_node N -m recipe.train ...   # the same arguments as one process

Every rank draws the same length-bucketed batches and takes its share of each (``shard``); gradients are
all-reduced by ``DistributedDataParallel``, and each rank's loss is scaled so the averaged gradient is exactly
the one-process gradient of the whole batch (`loss_scale`). Rank 0 alone prepares features, evaluates, snapshots
and exports; the others wait for it where they must (`first_rank_first`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The rank that writes: logs, snapshots, the export."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def shard(self, batch: list[int]) -> list[int]:
        """This rank's utterances of a global batch (every rank holds at least one: see `usable`)."""
        return batch[self.rank :: self.size]

    def usable(self, batch: list[int]) -> bool:
        """Whether every rank gets an utterance of ``batch``; smaller batches are skipped by all ranks alike."""
        return len(batch) >= self.size

    def loss_scale(self, shard: int, batch: int) -> float:
        """DDP averages gradients over ranks, and the loss averages over a shard's utterances: scaling rank r's
        loss by ``size * shard_r / batch`` makes the average the gradient of the whole batch's mean loss."""
        return self.size * shard / batch

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any (a stop decided by one rank's clock stops them all)."""
        if not self.parallel:
            return flag
        value = torch.tensor([int(flag)])
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()

    @contextmanager
    def first_rank_first(self) -> Iterator[None]:
        """Rank 0 runs the block (it writes shared files: features, tokenizer); the others run it after, reading."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()


def start(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE``/``RANK`` in the environment), if any; on
    GPUs each rank takes the one ``LOCAL_RANK`` names."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size()), device


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The module the training step calls: DDP around ``model`` in a parallel run, ``model`` itself alone."""
    if not world.parallel:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def finish(world: World) -> None:
    """Leave the group together: a rank that exits while rank 0 still exports closes its gloo connections under
    rank 0, which gloo may report as a lost peer."""
    if world.parallel:
        dist.barrier()
        dist.destroy_process_group()
