"""A model's precision cost table: what running some layers int8 and the rest fp32 costs on a device.

A quantisable model is described by its keys (``PrecisionGraph``): each layer's key at fp32 and at int8 (the int8
key is measured with its own QuantizeLinear in and DequantizeLinear out), and each edge (a tensor entering or
leaving a layer) with the key of the QuantizeLinear -> DequantizeLinear pair that a precision change on it costs.
``LatencyModel.precision_costs`` fills a ``PrecisionCostTable`` with the corrected costs of those keys, the fp32
model's prediction and the device's fitted ``PrecisionTerms`` (``correction.precision``), and the table's
``expected_ms`` is the one formula from an assignment to milliseconds:

    ms = fp32_model_ms + a * sum_l p8_l (core8_l - fp32_l) + b * sum_e E[transition ms on e] + c * E[#transitions]
         - d * sum_l p8_l saved_mb_l

``p8_l`` is 1 where layer ``l`` runs int8 (or its probability, in a supernet). ``core8`` is the layer's int8 time
without the Q/DQ pair halves it was measured with (on its input and its output edge). An edge needs a
QuantizeLinear where a float producer feeds an int8 reader (``(1 - p8_P) (1 - prod_c (1 - p8_c))``) and a
DequantizeLinear where an int8 producer feeds a float reader (``p8_P (1 - prod_c p8_c)``, or ``p8_P`` when a float op
also reads it); each costs half the measured pair. Choices are independent across layers, as a supernet samples
them, so this is the exact expectation of the fixed-assignment value, and it is differentiable. ``saved_mb_l`` is
the MB layer ``l``'s weights shrink by at int8 (its fp32 bytes less its int8 bytes): inside a model weights stream
from memory, and an int8 layer reads a quarter of them. ``(a, b, c, d)`` are ``PrecisionTerms`` (``(1, 1, 0, 0)``,
the table as it is, until whole mixed models are measured on the device).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch

from nas.arch.opkey import OpKey
from nas.latency.correction import PrecisionTerms
from nas.latency.table import LatencyTable


@dataclass(frozen=True)
class PrecisionLayer:
    """One quantisable layer: its keys at fp32 and int8, its input and output edges (indices), its kind."""

    fp32: OpKey
    int8: OpKey
    input: int
    output: int
    kind: str  # what ``int8_speedups`` groups layers by ("pw", "dw", ...)
    weight_params: int = 0  # its weights (biases stay 32-bit at int8)

    @property
    def weight_saved_mb(self) -> float:
        """MB its weights shrink by at int8: 4 bytes each at fp32, 1 at int8."""
        return self.weight_params * 3 / 1e6


@dataclass(frozen=True)
class PrecisionEdge:
    """A tensor entering or leaving a layer, where a precision transition may be needed."""

    transition: OpKey | None  # the Q -> DQ pair's key; None when the tensor's shape is unknown (costs nothing)
    producer: int | None  # layer index, or None (the model input or a float op)
    consumers: tuple[int, ...]  # layers reading it
    float_readers: bool  # also read by a float op or a model output


@dataclass
class PrecisionGraph:
    """A quantisable model as keys: its layers and the edges between them."""

    layers: list[PrecisionLayer]
    edges: list[PrecisionEdge]

    def keys(self) -> list[OpKey]:
        """Every layer key (fp32 and int8) and every transition key, once each: what the device must measure."""
        keys = [k for layer in self.layers for k in (layer.fp32, layer.int8)]
        keys += [e.transition for e in self.edges if e.transition is not None]
        return list(dict.fromkeys(keys))


@dataclass
class PrecisionCostTable:
    """A model's device costs in ms: the fp32 model, each layer at fp32 and int8, each edge's Q/DQ pair."""

    graph: PrecisionGraph
    fp32_model_ms: float
    fp32_ms: np.ndarray  # per layer
    int8_ms: np.ndarray  # per layer, with its own Q in and DQ out
    transition_ms: np.ndarray  # per edge: the Q + DQ pair
    precision: PrecisionTerms = field(default_factory=PrecisionTerms)
    estimated: list[OpKey] = field(default_factory=list)  # keys answered by the fallback regressor

    def __post_init__(self):
        half = [float(ms) / 2 for ms in self.transition_ms]
        self.core_delta = torch.tensor([float(i8) - half[layer.input] - half[layer.output] - float(f32)
                                        for layer, f32, i8 in zip(self.graph.layers, self.fp32_ms, self.int8_ms)])
        self.saved_mb = torch.tensor([layer.weight_saved_mb for layer in self.graph.layers],
                                     dtype=self.core_delta.dtype)
        self._edges = [(e.producer, list(e.consumers), e.float_readers, h) for e, h in zip(self.graph.edges, half)]

    def terms_from_int8(self, p8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(int8 compute delta ms, transition ms, expected number of Q/DQ transitions, weight MB saved) for
        per-layer int8 probabilities ``p8`` (0/1 for one assignment): ``PrecisionTerms``' terms."""
        compute = (p8 * self.core_delta).sum()
        trans_ms = torch.zeros(())
        count = torch.zeros(())
        for producer, consumers, float_readers, half in self._edges:
            pp = p8[producer] if producer is not None else torch.zeros(())
            pc = p8[consumers] if consumers else torch.zeros(0)
            need_q = (1 - pp) * (1 - torch.prod(1 - pc))
            need_dq = pp if float_readers else pp * (1 - torch.prod(pc))
            trans_ms = trans_ms + half * (need_q + need_dq)
            count = count + need_q + need_dq
        return compute, trans_ms, count, (p8 * self.saved_mb).sum()

    def expected_ms(self, p8: torch.Tensor) -> torch.Tensor:
        """The model's latency (its expectation for int8 probabilities ``p8``), differentiable."""
        return self.precision.model_ms(self.fp32_model_ms, *self.terms_from_int8(p8))

    def ms(self, int8: list[bool]) -> float:
        """The latency of one assignment (``int8[l]``: layer ``l`` runs int8)."""
        return float(self.expected_ms(torch.tensor([1.0 if b else 0.0 for b in int8])))

    def lower_bound_ms(self) -> float:
        """Every layer at its cheaper precision and no transitions (an optimistic bound)."""
        p = self.precision
        per_layer = p.compute * self.core_delta - p.per_saved_weight_mb_ms * self.saved_mb
        best = self.fp32_model_ms + float(torch.clamp(per_layer, max=0).sum())
        return max(best, 1e-3)


def int8_speedups(table: LatencyTable, graph: PrecisionGraph) -> dict[str, dict]:
    """Measured fp32 / int8 time ratio per layer kind, from the table's raw p50s (> 1: int8 is faster).

    ``isolated``: the int8 layer with its own Quantize in and Dequantize out, against the fp32 layer, each a p50 of
    its own session call (the call overhead, ``call_overhead_ms``, is in both: at small sizes it dominates, and
    subtracting an estimate of it from sub-overhead timings gives meaningless ratios).
    ``in_int8_chain``: the int8 time without those two transitions (half the measured Q/DQ pair, net of the call
    overhead, on its input and output), i.e. a layer whose neighbours are int8 too.
    """
    by_kind: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    pair = {}
    for i, edge in enumerate(graph.edges):
        row = table.get(edge.transition) if edge.transition is not None else None
        if row:
            pair[i] = max(row["p50_ms"] - row["overhead_ms"], 0.0)
    seen = set()
    overheads = []
    for layer in graph.layers:
        if str(layer.fp32) in seen:
            continue
        seen.add(str(layer.fp32))
        r32, r8 = table.get(layer.fp32), table.get(layer.int8)
        if not r32 or not r8:
            continue
        overheads.append(r32["overhead_ms"])
        core8 = r8["p50_ms"] - (pair.get(layer.input, 0.0) + pair.get(layer.output, 0.0)) / 2
        by_kind[layer.kind].append((r32["p50_ms"], r8["p50_ms"], max(core8, 1e-6)))
    out = {}
    for kind, rows in sorted(by_kind.items()):
        a = np.asarray(rows)
        iso = a[:, 0] / a[:, 1]
        chain = a[:, 0] / a[:, 2]
        out[kind] = {"layers": len(rows), "fp32_ms": float(a[:, 0].sum()), "int8_ms": float(a[:, 1].sum()),
                     "isolated_speedup": float(a[:, 0].sum() / a[:, 1].sum()),
                     "isolated_speedup_range": [float(iso.min()), float(iso.max())],
                     "in_int8_chain_speedup": float(a[:, 0].sum() / a[:, 2].sum()),
                     "in_int8_chain_speedup_range": [float(chain.min()), float(chain.max())],
                     "call_overhead_ms": float(np.mean(overheads))}
    return out
