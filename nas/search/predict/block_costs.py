"""Additive per-block costs of whole populations: MACs, params and predicted latency as array lookups.

A model of a joint space is the chain of its space's block positions (``Space.block_positions``): each block's
shape is fixed by a few genome entries (the decisions of ``BlockPosition.dims``). ``BlockCostTable`` keeps, for every
position, a dense array over those small option indices: filled lazily by a per-block cost function (``count_macs``
of the built block), or taken whole from the device's ``LatencyModel.cost_table``. The cost of n archs is then one
gather and one sum, which is what lets the evolutionary search rank hundreds of thousands of candidates a minute.

The sums equal the whole-model figures exactly: MACs and deployed params are additive over the blocks of a chain,
and a latency is ``LatencyModel.total_ms`` of its block costs and layout codes (the walk over the codes is the
one term that is not a sum).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from nas.arch.space import BlockSpec
from nas.models.builder import build_block, count_macs, count_params
from nas.search.predict.joint_space import JointSpace


class BlockCostTable:
    """Vectorised per-block costs of each genome's arch, over the space's block positions."""

    def __init__(self, joint: JointSpace, cost: Callable[[BlockSpec], float] | None = None,
                 values: list[np.ndarray] | None = None):
        """``cost`` fills entries on demand; ``values`` gives every position's array at once (``dims`` order)."""
        self.joint, self.cost = joint, cost
        space = joint.space
        self.positions = space.block_positions(resolutions=joint.resolutions())
        shapes = [p.shape for p in self.positions]
        sizes = np.asarray([int(np.prod(s)) for s in shapes], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._values = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values]) \
            if values is not None else np.full(int(sizes.sum()), np.nan)
        # each axis of each position reads one column of [ops per layer | channels per stage | resolution | zero]
        n_layers, n_stages = len(space.layers), len(space.stages)
        column = {"op": lambda d: d[1], "ch": lambda d: n_layers + d[1], "res": lambda d: n_layers + n_stages}
        width = max(len(s) for s in shapes)
        self._columns = np.full((len(shapes), width), n_layers + n_stages + 1, dtype=np.int64)
        self._strides = np.zeros((len(shapes), width), dtype=np.int64)
        for i, (position, shape) in enumerate(zip(self.positions, shapes)):
            strides = np.cumprod((shape[1:] + (1,))[::-1])[::-1]
            for j, dim in enumerate(position.dims):
                self._columns[i, j], self._strides[i, j] = column[dim[0]](dim), strides[j]

    @classmethod
    def latency(cls, joint: JointSpace, lm, bits: int = 32) -> tuple["BlockCostTable", "BlockCostTable"]:
        """The device's block costs and layout codes (``lm.cost_table`` of the space's positions); totals are
        ``lm.total_ms`` of the two."""
        positions = joint.space.block_positions(resolutions=joint.resolutions())
        costs = lm.cost_table(positions, bits)
        return cls(joint, values=[c.cost_ms for c in costs]), cls(joint, values=[c.layout for c in costs])

    @property
    def n_filled(self) -> int:
        return int(np.isfinite(self._values).sum())

    def _codes(self, genomes: np.ndarray) -> np.ndarray:
        genomes = np.atleast_2d(genomes)
        n = len(genomes)
        decisions = np.concatenate([self.joint.layer_op_index(genomes), self.joint.stage_channel_index(genomes),
                                    self.joint.resolution_index(genomes)[:, None],
                                    np.zeros((n, 1), dtype=np.int64)], axis=1)
        return (decisions[:, self._columns] * self._strides).sum(axis=2) + self._offsets

    def _block(self, flat: int) -> BlockSpec:
        p = int(np.searchsorted(self._offsets, flat, side="right") - 1)
        position = self.positions[p]
        return position.block(np.unravel_index(flat - int(self._offsets[p]), position.shape))

    def per_block(self, genomes: np.ndarray) -> np.ndarray:
        """n x P cost of every block of every genome's arch, filling unseen block shapes on demand."""
        codes = self._codes(genomes)
        values = self._values[codes]
        missing = np.isnan(values)
        if missing.any():
            for flat in np.unique(codes[missing]):
                self._values[flat] = float(self.cost(self._block(int(flat))))
            values = self._values[codes]
        return values

    def total(self, genomes: np.ndarray) -> np.ndarray:
        """The sum of block costs, per genome (length n)."""
        return self.per_block(genomes).sum(axis=1)


def block_macs(block: BlockSpec) -> float:
    """MACs of one block at batch 1 (torch.utils.flop_counter through ``count_macs``)."""
    return float(count_macs(build_block(block), (block.c_in, block.resolution, block.resolution)))


def block_params(block: BlockSpec) -> float:
    """Deployed (BN-folded) parameters of one block."""
    return float(count_params(build_block(block)))
