"""Batches of a split: in a seeded order, sharded over ranks, decoded by DataLoader workers that persist.

``SplitLoader`` serves every pass over one split (training, in a shuffled order; evaluation, in order) through one
``DataLoader`` with ``persistent_workers``: its batch sampler (``PassOrder``) is told the next pass's batches
before each pass, as ``DistributedSampler.set_epoch`` is told the epoch, and the DataLoader reads it anew at every
pass, so the worker processes start once per split rather than once per epoch and evaluation. The order comes from
the trainer's own generator (saved in its checkpoints), so a resumed run sees the batches an uninterrupted one sees.
In-memory splits are indexed directly (no DataLoader overhead).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from nas.data.splits import Split, TensorSplit
from nas.errors import HwnasError
from nas.train.distributed import World


def pass_batches(n: int, batch_size: int, generator: torch.Generator | None, world: World | None = None
                 ) -> list[torch.Tensor]:
    """The index batches of one pass over ``n`` samples, shuffled by ``generator`` (None: in order); under data
    parallelism this rank's equal share of every global batch of ``batch_size`` (a remainder of fewer samples than
    ranks is left out)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if world is not None and world.size > 1:  # equal shares, so that every rank draws the same random numbers
        chunks = [c[:len(c) - len(c) % world.size][world.rank::world.size] for c in chunks]
        chunks = [c for c in chunks if len(c)]
    return chunks


class PassOrder(Sampler[list[int]]):
    """The batch sampler of a persistent DataLoader: the batches of the pass about to start (``set_pass``)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def set_pass(self, batches: list[torch.Tensor]) -> None:
        self.batches = [b.tolist() for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class SplitLoader:
    """Every pass over ``split``: ``workers`` DataLoader processes (kept between passes) decode a streamed split,
    into pinned memory when ``pin_memory``; an in-memory split is sliced."""

    def __init__(self, split: Split, workers: int = 0, pin_memory: bool = False):
        self.split, self.workers, self.pin_memory = split, workers, pin_memory
        self.order = PassOrder()
        self.loader = None if isinstance(split, TensorSplit) else self._dataloader(self.order, workers > 0)
        self.in_pass = False

    def _dataloader(self, order: PassOrder, persistent: bool) -> DataLoader:
        return DataLoader(self.split, batch_sampler=order, num_workers=self.workers, pin_memory=self.pin_memory,
                          persistent_workers=persistent, generator=torch.Generator().manual_seed(0))

    def batches(self, batch_size: int, generator: torch.Generator | None = None, world: World | None = None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) batches of one pass (``pass_batches``; the order is drawn when the first batch is asked for)."""
        chunks = pass_batches(len(self.split), batch_size, generator, world)
        if self.loader is None:
            split = self.split
            for idx in chunks:
                yield split.x[idx], split.labels[idx]
            return
        if self.in_pass:  # a pass over this split inside another one: a DataLoader of its own
            order = PassOrder()
            order.set_pass(chunks)
            yield from worker_errors_as_one_line(self._dataloader(order, False))
            return
        self.order.set_pass(chunks)
        self.in_pass = True
        try:
            yield from worker_errors_as_one_line(self.loader)
        finally:
            self.in_pass = False


def worker_errors_as_one_line(loader: DataLoader) -> Iterator:
    """``loader``'s batches; an HwnasError raised in a worker process (which the loader re-raises with the worker's
    traceback in its message) raised again with its own one line."""
    try:
        yield from loader
    except HwnasError as e:
        raise type(e)(str(e).strip().splitlines()[-1].split(f"{type(e).__name__}: ", 1)[-1]) from None
