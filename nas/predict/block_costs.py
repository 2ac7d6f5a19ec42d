"""Additive per-block costs of whole populations: MACs, params and predicted latency as array lookups.

A model of a joint space is a chain of blocks (stem, one per layer, head, classifier). Each block's shape is fixed
by a few genome entries: its op, the channel choice of the stage before it (its input channels), the channel
choice of its own stage, and the input resolution. ``BlockCostTable`` keeps, for every block position, a dense
array over those small option indices, filled lazily by a per-block cost function (``count_macs`` of the built
block, or ``LatencyModel.block_cost_ms`` of its op key). The cost of n archs is then one gather and one sum,
which is what lets the evolutionary search rank hundreds of thousands of candidates a minute.

The sums equal the whole-model figures exactly: MACs and deployed params are additive over the blocks of a chain,
and the LatencyModel is additive by contract (``base_ms`` + sum of ``block_cost_ms``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from nas.builder import build_block, count_macs, count_params
from nas.predict.joint_space import JointSpace
from nas.space import BlockSpec


@dataclass
class _Position:
    role: str
    layer: int  # layer index, -1 for stem/head/classifier
    ops: list[str]
    cin_options: list[int]
    cin_stage: int  # stage whose channel choice gives c_in; -1 when fixed
    cout_options: list[int]
    cout_stage: int
    stride: int
    res_by_option: list[int]  # input resolution of this block for each input-resolution option


class BlockCostTable:
    """Vectorised sum of a per-block cost over the blocks of each genome's arch (plus a constant ``base``)."""

    def __init__(self, joint: JointSpace, cost: Callable[[BlockSpec], float], base: float = 0.0):
        self.joint, self.cost, self.base = joint, cost, float(base)
        space = joint.space
        resolutions = joint.resolutions()
        positions: list[_Position] = []
        stem_op, stem_c, stem_stride = space.spec.stem
        res = list(resolutions)
        positions.append(_Position("stem", -1, [stem_op], [space.in_channels], -1, [space.stem_channels], -1,
                                   stem_stride, res))
        res = [math.ceil(r / stem_stride) for r in res]
        prev_stage = -1
        for layer in space.layers:
            stage = space.stages[layer.stage]
            cin_options = [space.stem_channels] if prev_stage < 0 else space.stages[prev_stage].channel_options
            positions.append(_Position("layer", layer.index, list(layer.candidates), list(cin_options), prev_stage,
                                       list(stage.channel_options), layer.stage, layer.stride, res))
            res = [math.ceil(r / layer.stride) for r in res]
            prev_stage = layer.stage
        last = space.stages[prev_stage].channel_options if prev_stage >= 0 else [space.stem_channels]
        positions.append(_Position("head", -1, [space.spec.head[0]], list(last), prev_stage, [space.head_channels],
                                   -1, 1, res))
        positions.append(_Position("classifier", -1, ["pool_fc"], [space.head_channels], -1, [space.classes], -1, 1,
                                   res))
        self.positions = positions
        self._dims = np.asarray([[len(p.ops), len(p.cin_options), len(p.cout_options), len(resolutions)]
                                 for p in positions], dtype=np.int64)
        sizes = self._dims.prod(axis=1)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._values = np.full(int(sizes.sum()), np.nan)
        self._layer_pos = np.asarray([i for i, p in enumerate(positions) if p.role == "layer"], dtype=np.int64)
        self._cin_src = np.asarray([p.cin_stage + 1 for p in positions], dtype=np.int64)
        self._cout_src = np.asarray([p.cout_stage + 1 for p in positions], dtype=np.int64)

    @property
    def n_filled(self) -> int:
        return int(np.isfinite(self._values).sum())

    def _codes(self, genomes: np.ndarray) -> np.ndarray:
        genomes = np.atleast_2d(genomes)
        n, n_pos = len(genomes), len(self.positions)
        op = np.zeros((n, n_pos), dtype=np.int64)
        op[:, self._layer_pos] = self.joint.layer_op_index(genomes)
        stages = np.concatenate([np.zeros((n, 1), dtype=np.int64), self.joint.stage_channel_index(genomes)], axis=1)
        cin, cout = stages[:, self._cin_src], stages[:, self._cout_src]
        cin[:, self._cin_src == 0] = 0
        cout[:, self._cout_src == 0] = 0
        r = self.joint.resolution_index(genomes)[:, None]
        d = self._dims
        return ((op * d[:, 1] + cin) * d[:, 2] + cout) * d[:, 3] + r + self._offsets

    def _block(self, flat: int) -> BlockSpec:
        p = int(np.searchsorted(self._offsets, flat, side="right") - 1)
        pos, local = self.positions[p], flat - int(self._offsets[p])
        n_op, n_cin, n_cout, n_res = (int(v) for v in self._dims[p])
        r = local % n_res
        local //= n_res
        cout = local % n_cout
        local //= n_cout
        cin = local % n_cin
        op = local // n_cin
        return BlockSpec(pos.role, pos.ops[op], pos.cin_options[cin], pos.cout_options[cout], pos.stride,
                         pos.res_by_option[r], pos.layer)

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
        """``base`` + the sum of block costs, per genome (length n)."""
        return self.per_block(genomes).sum(axis=1) + self.base


def block_macs(block: BlockSpec) -> float:
    """MACs of one block at batch 1 (torch.utils.flop_counter through ``count_macs``)."""
    return float(count_macs(build_block(block), (block.c_in, block.resolution, block.resolution)))


def block_params(block: BlockSpec) -> float:
    """Deployed (BN-folded) parameters of one block."""
    return float(count_params(build_block(block)))
