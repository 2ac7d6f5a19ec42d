"""The DataLoader over a split: batches in a seeded order, decoded by worker processes, sharded over ranks."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader

from nas.data.splits import Split, TensorSplit
from nas.train.distributed import World


def split_batches(split: Split, batch_size: int, generator: torch.Generator | None, *, workers: int = 0,
                  world: World | None = None, pin_memory: bool = False
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of ``split``, shuffled by ``generator`` (None: in order); under data parallelism this rank's
    equal share of every global batch of ``batch_size`` (a remainder of fewer samples than ranks is left out)."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if world is not None and world.size > 1:  # equal shares, so that every rank draws the same random numbers
        chunks = [c[:len(c) - len(c) % world.size][world.rank::world.size] for c in chunks]
        chunks = [c for c in chunks if len(c)]
    if isinstance(split, TensorSplit):
        for idx in chunks:
            yield split.x[idx], split.labels[idx]
        return
    loader = DataLoader(split, batch_sampler=[c.tolist() for c in chunks], num_workers=workers,
                        pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))
    yield from loader
