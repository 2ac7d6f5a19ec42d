"""A space's expected latency: the device's cost table of its block positions, weighted by decision probabilities.

The latency model is additive (``base_ms + sum of block costs``) but for its layout term, so the expected latency of a
factorised arch distribution is exact in its blocks: each block position contributes ``sum(joint_probs * costs)``,
where the joint is the outer product of the probabilities of the decisions the block depends on
(``BlockPosition.dims``: its op, input and output channel stages, the resolution). The layout term's expectation
walks the positions in order with the trunk's layout as a probability (``nas.latency.layout``; exact for positions
drawn independently, which positions sharing a channel stage are not quite). The costs and layout codes are
``lm.cost_table`` of ``space.block_positions``, and the sum is ``lm.total_ms``: this module is a view of the
LatencyModel, with no costing of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from nas.arch.opkey import OpKey
from nas.arch.positions import Dim
from nas.latency.layout import ExpectedReorders
from nas.search.dnas.distribution import ArchDistribution, ArchProbs


@dataclass
class LatencyTerm:
    name: str
    dims: list[Dim]
    cost_ms: np.ndarray  # float64, one axis per dim
    keys: np.ndarray = field(repr=False)  # the OpKey of every entry (object array, same shape)
    layout: np.ndarray = field(repr=False, default=None)  # layout codes (nas.latency.layout), same shape


class LatencyTerms:
    """The expected latency of an ``ArchDistribution`` on one device, differentiable in its logits."""

    def __init__(self, dist: ArchDistribution, lm):
        self.dist, self.lm = dist, lm
        positions = dist.space.block_positions(dist.channel_options, dist.resolution_options)
        self.terms = [LatencyTerm(f"L{c.position.layer}" if c.position.role == "layer" else c.position.role,
                                  c.position.dims, c.cost_ms, c.keys, c.layout) for c in lm.cost_table(positions)]
        self.base_ms = float(lm.base_ms)
        self._torch_costs = [torch.tensor(t.cost_ms, dtype=torch.float32) for t in self.terms]
        self._reorders = ExpectedReorders([t.layout for t in self.terms])

    def to(self, device) -> "LatencyTerms":
        """Keep the cost tensors on ``device`` (where the logits are): expected latency stays differentiable there."""
        self._torch_costs = [c.to(device) for c in self._torch_costs]
        return self

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
        return self.lm.expected_ms(joints, self._torch_costs, self._reorders)

    def arch_ms(self, ops: list[int], channels: list[int], res: int) -> float:
        """Latency of the arch with these decision indices (equals ``lm.predict`` of that arch)."""
        pick = {"op": ops, "ch": channels}
        at = [tuple(res if d[0] == "res" else pick[d[0]][d[1]] for d in t.dims) for t in self.terms]
        return float(self.lm.total_ms([float(t.cost_ms[i]) for t, i in zip(self.terms, at)],
                                      np.array([t.layout[i] for t, i in zip(self.terms, at)])))

    def argmax_ms(self) -> float:
        return self.arch_ms(*self.dist.argmax_indices())

    def random_archs_ms(self, n: int, seed: int) -> np.ndarray:
        """Latency of ``n`` archs drawn uniformly from the decisions this search makes (every option of every
        decision equally likely, from ``seed``): what a percentile target is read off."""
        rng = np.random.default_rng(seed)
        picks = {"op": [rng.integers(len(o), size=n) for o in self.dist.op_options],
                 "ch": [rng.integers(len(o), size=n) for o in self.dist.channel_options],
                 "res": rng.integers(len(self.dist.resolution_options), size=n)}
        at = [tuple(picks["res"] if d[0] == "res" else picks[d[0]][d[1]] for d in t.dims) for t in self.terms]
        columns = [np.broadcast_to(t.cost_ms[i], (n,)) for t, i in zip(self.terms, at)]
        codes = [np.broadcast_to(t.layout[i], (n,)) for t, i in zip(self.terms, at)]
        if not columns:
            return self.lm.total_ms(np.zeros((n, 0)))
        return self.lm.total_ms(np.stack(columns, axis=-1), np.stack(codes, axis=-1))


def outer(vectors: list[torch.Tensor]) -> torch.Tensor:
    """Outer product of 1-D tensors: shape (len(v0), len(v1), ...)."""
    out = vectors[0]
    for v in vectors[1:]:
        out = out.unsqueeze(-1) * v
    return out

