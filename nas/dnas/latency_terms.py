"""A space's latency as a sum of table-cost tensors, one per block, over the decisions that block depends on.

The latency model is additive (``base_ms + sum of block costs``), so the expected latency of a factorised arch
distribution is exact: each block contributes ``sum(joint_probs * costs)``, where the joint is the outer product of
the probabilities of the decisions the block's key depends on:

- stem: the resolution;
- the first layer of a stage: its op, the previous stage's channels (its input), its own channels, the resolution;
- the other layers of a stage: their op, the stage's channels (input = output), the resolution;
- head: the last stage's channels and the resolution; classifier: the resolution.

Every cost is ``lm.block_cost_ms(OpKey.from_block(...))``, and the sum is ``lm.expected_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from nas.dnas.distribution import ArchDistribution, ArchProbs
from nas.latency.opkey import OpKey
from nas.space import Arch, BlockSpec

Dim = tuple  # ("op", layer) | ("ch", stage) | ("res",)


@dataclass
class LatencyTerm:
    name: str
    dims: list[Dim]
    cost_ms: np.ndarray  # float64, one axis per dim
    keys: np.ndarray = field(repr=False)  # the OpKey of every entry (object array, same shape)


class LatencyTerms:
    """The expected latency of an ``ArchDistribution`` on one device, differentiable in its logits."""

    def __init__(self, dist: ArchDistribution, lm):
        self.dist, self.lm = dist, lm
        space = dist.space
        self.terms: list[LatencyTerm] = []
        per_res = [self._blocks_at(r) for r in dist.resolution_options]
        n_res = len(per_res)
        stem = np.empty(n_res, object)
        head = np.empty((len(dist.channel_options[-1]), n_res), object)
        classifier = np.empty(n_res, object)
        for ri, blocks in enumerate(per_res):
            stem[ri] = OpKey.from_block(blocks[0])
            for ci, c in enumerate(dist.channel_options[-1]):
                head[ci, ri] = OpKey.from_block(_with(blocks[-2], c_in=c))
            classifier[ri] = OpKey.from_block(blocks[-1])
        self._add("stem", [("res",)], stem)
        previous = [space.stem_channels]
        for slot in space.layers:
            stage = slot.stage
            ops, outs = dist.op_options[slot.index], dist.channel_options[stage]
            first = slot.index == space.stages[stage].layers[0]
            if first and stage > 0:
                keys = np.empty((len(ops), len(previous), len(outs), n_res), object)
                for oi, op in enumerate(ops):
                    for ai, a in enumerate(previous):
                        for bi, b in enumerate(outs):
                            for ri, blocks in enumerate(per_res):
                                keys[oi, ai, bi, ri] = OpKey.from_block(
                                    _with(blocks[1 + slot.index], op=op, c_in=a, c_out=b))
                self._add(f"L{slot.index}", [("op", slot.index), ("ch", stage - 1), ("ch", stage), ("res",)], keys)
            else:
                keys = np.empty((len(ops), len(outs), n_res), object)
                for oi, op in enumerate(ops):
                    for bi, b in enumerate(outs):
                        for ri, blocks in enumerate(per_res):
                            c_in = previous[0] if stage == 0 and first else b
                            keys[oi, bi, ri] = OpKey.from_block(_with(blocks[1 + slot.index], op=op, c_in=c_in,
                                                                      c_out=b))
                self._add(f"L{slot.index}", [("op", slot.index), ("ch", stage), ("res",)], keys)
            previous = outs
        self._add("head", [("ch", len(space.stages) - 1), ("res",)], head)
        self._add("classifier", [("res",)], classifier)
        self.base_ms = float(lm.base_ms)
        self._torch_costs = [torch.tensor(t.cost_ms, dtype=torch.float32) for t in self.terms]

    def _blocks_at(self, resolution: int) -> list[BlockSpec]:
        space = self.dist.space
        arch = space.fixed_arch()
        arch = Arch(arch.space, arch.ops, arch.channels, resolution if space.searches_resolution else None)
        return space.resolve(arch)

    def _add(self, name: str, dims: list[Dim], keys: np.ndarray) -> None:
        costs = np.vectorize(lambda k: float(self.lm.block_cost_ms(k)), otypes=[np.float64])(keys)
        self.terms.append(LatencyTerm(name, dims, costs, keys))

    # ---- queries ----------------------------------------------------------------------------------------------
    def keys(self) -> list[OpKey]:
        """Every unique key the search can touch."""
        seen: dict[str, OpKey] = {}
        for t in self.terms:
            for k in t.keys.flat:
                seen.setdefault(str(k), k)
        return list(seen.values())

    def estimated_keys(self) -> list[OpKey]:
        return [k for k in self.keys() if self.lm.is_estimated(k)]

    def _vector(self, probs: ArchProbs, dim: Dim) -> torch.Tensor:
        kind = dim[0]
        if kind == "op":
            return probs.ops[dim[1]]
        if kind == "ch":
            return probs.channels[dim[1]]
        return probs.resolution

    def expected_ms(self, probs: ArchProbs | None = None) -> torch.Tensor:
        """E[latency] under ``probs`` (default: the distribution's), differentiable in the logits."""
        probs = probs or self.dist.probs()
        joints = [outer([self._vector(probs, d) for d in t.dims]) for t in self.terms]
        return self.lm.expected_ms(joints, self._torch_costs)

    def arch_ms(self, ops: list[int], channels: list[int], res: int) -> float:
        """Latency of the arch with these decision indices (equals ``lm.predict`` of that arch)."""
        pick = {"op": ops, "ch": channels}
        total = self.base_ms
        for t in self.terms:
            total += float(t.cost_ms[tuple(res if d[0] == "res" else pick[d[0]][d[1]] for d in t.dims)])
        return total

    def argmax_ms(self) -> float:
        return self.arch_ms(*self.dist.argmax_indices())


def outer(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Outer product of 1-D tensors: shape (len(v0), len(v1), ...)."""
    out = vectors[0]
    for v in vectors[1:]:
        out = out.unsqueeze(-1) * v
    return out


def _with(block: BlockSpec, **changes) -> BlockSpec:
    return replace(block, **changes)
