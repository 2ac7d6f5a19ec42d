"""The three costs of a bit assignment (Wu et al. 2018), each exact for a fixed assignment and differentiable in
expectation over a supernet's choice probabilities:

- ``size``: model bits, ``sum params x weight bits`` (biases stay 32-bit), in MB;
- ``bitops``: ``sum MACs x weight bits x activation bits``, in G bit-ops;
- ``latency``: milliseconds on a device, from its latency table (see ``LatencyCost``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from nas.latency.correction import PrecisionTerms
from nas.quant.fake import FLOAT_BITS
from nas.quant.graph import QuantGraph
from nas.quant.mixed import BitOption

COSTS = ("latency", "size", "bitops")


class Cost(ABC):
    """A cost over per-layer options. ``expected`` takes one probability vector per layer (over ``options``)."""

    name = ""
    unit = ""

    def __init__(self, graph: QuantGraph, options: list[BitOption]):
        self.graph = graph
        self.options = list(options)

    @abstractmethod
    def expected(self, probs: list[torch.Tensor]) -> torch.Tensor:
        ...

    def of(self, assignment: list[BitOption]) -> float:
        """The exact cost of one assignment."""
        return float(self.expected([one_hot(self.options, o) for o in assignment]))

    @abstractmethod
    def lower_bound(self) -> float:
        """No assignment costs less than this."""

    def describe(self, value: float) -> str:
        return f"{value:.4g} {self.unit}"


def one_hot(options: list[BitOption], option: BitOption) -> torch.Tensor:
    t = torch.zeros(len(options))
    t[options.index(option)] = 1.0
    return t


class SizeCost(Cost):
    name, unit = "size", "MB"

    def __init__(self, graph: QuantGraph, options: list[BitOption]):
        super().__init__(graph, options)
        self.w_bits = torch.tensor([float(o.w_bits) for o in options])
        self.weights = torch.tensor([float(layer.weight_params) for layer in graph.layers])
        self.bias_bits = float(sum(layer.bias_params for layer in graph.layers) * FLOAT_BITS)

    def expected(self, probs):
        bits = torch.stack([(p * self.w_bits).sum() for p in probs])
        return ((bits * self.weights).sum() + self.bias_bits) / 8e6

    def lower_bound(self) -> float:
        return self.of([min(self.options, key=lambda o: o.w_bits)] * len(self.graph.layers))


class BitopsCost(Cost):
    name, unit = "bitops", "G bit-ops"

    def __init__(self, graph: QuantGraph, options: list[BitOption]):
        super().__init__(graph, options)
        self.bitops = torch.tensor([float(o.w_bits * o.a_bits) for o in options])
        self.macs = torch.tensor([float(layer.macs) for layer in graph.layers])

    def expected(self, probs):
        per_layer = torch.stack([(p * self.bitops).sum() for p in probs])
        return (per_layer * self.macs).sum() / 1e9

    def lower_bound(self) -> float:
        return self.of([min(self.options, key=lambda o: o.w_bits * o.a_bits)] * len(self.graph.layers))


@dataclass
class LayerTimes:
    """Device costs of one layer, in ms, as the latency model states them."""

    fp32_ms: float
    int8_ms: float  # the layer quantized alone: QuantizeLinear in, int8 op, DequantizeLinear out


class LatencyCost(Cost):
    """Expected latency of a mixed-precision model on a device, from the device table.

    ``ms = fp32_model_ms + a * sum_l p8_l (core8_l - fp32_l) + b * sum_T E[transition ms on T] + c * E[#transitions]``

    ``fp32_model_ms`` is the table's prediction for the float model (its blocks). A layer's int8 time was measured
    with its own QuantizeLinear in and DequantizeLinear out; ``core8`` removes them (half the measured Q+DQ pair on
    the input and output tensors each). A transition is needed on a tensor ``T`` where a float producer feeds an int8
    reader (a QuantizeLinear: ``(1 - p8_P) (1 - prod_c (1 - p8_c))``) or an int8 producer feeds a float reader (a
    DequantizeLinear: ``p8_P (1 - prod_c p8_c)``, or ``p8_P`` when a float op also reads ``T``). Choices are independent
    across layers, as the supernet samples them, so this is the exact expectation of the fixed-assignment value and it
    is differentiable. ``(a, b, c)`` are the device correction's ``PrecisionTerms`` (``(1, 1, 0)``, the pure table,
    until whole mixed models are measured on the device, see ``nas.quant.latency_fit``).
    """

    name, unit = "latency", "ms"

    def __init__(self, graph: QuantGraph, options: list[BitOption], fp32_model_ms: float,
                 layer_times: list[LayerTimes], transition_ms: dict[str, float],
                 coef: tuple[float, float, float] = (1.0, 1.0, 0.0)):
        super().__init__(graph, options)
        self.fp32_model_ms = fp32_model_ms
        self.coef = tuple(float(c) for c in coef)
        self.int8_mask = torch.tensor([1.0 if o.runs_int8 else 0.0 for o in options])
        half = {name: ms / 2 for name, ms in transition_ms.items()}
        self.core_delta = torch.tensor([t.int8_ms - half.get(layer.input_tensor, 0.0)
                                        - half.get(layer.output_tensor, 0.0) - t.fp32_ms
                                        for t, layer in zip(layer_times, graph.layers)])
        self.layer_times = layer_times
        self.transitions = [(t.producer, t.consumers, t.float_consumers, half.get(t.name, 0.0))
                            for t in graph.tensors]

    def terms_from_int8(self, p8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(int8 compute delta ms, transition ms, expected number of Q/DQ transitions)."""
        compute = (p8 * self.core_delta).sum()
        trans_ms = torch.zeros(())
        count = torch.zeros(())
        for producer, consumers, float_readers, half in self.transitions:
            pp = p8[producer] if producer is not None else torch.zeros(())
            pc = p8[consumers] if consumers else torch.zeros(0)
            need_q = (1 - pp) * (1 - torch.prod(1 - pc))
            need_dq = pp if float_readers else pp * (1 - torch.prod(pc))
            trans_ms = trans_ms + half * (need_q + need_dq)
            count = count + need_q + need_dq
        return compute, trans_ms, count

    def expected_from_int8(self, p8: torch.Tensor) -> torch.Tensor:
        return PrecisionTerms(*self.coef).model_ms(self.fp32_model_ms, *self.terms_from_int8(p8))

    def expected(self, probs):
        p8 = torch.stack([(p * self.int8_mask).sum() for p in probs])
        return self.expected_from_int8(p8)

    def lower_bound(self) -> float:
        """Every layer at its cheaper precision, and no transitions (an optimistic bound)."""
        best = self.fp32_model_ms + self.coef[0] * float(torch.clamp(self.core_delta, max=0).sum())
        return max(best, 1e-3)


def mean_weight_bits(graph: QuantGraph, assignment: list[BitOption]) -> float:
    """Weight bits averaged over parameters (32 for float layers)."""
    total = sum(layer.weight_params for layer in graph.layers)
    return sum(layer.weight_params * o.w_bits for layer, o in zip(graph.layers, assignment)) / max(total, 1)


def bitops_g(graph: QuantGraph, assignment: list[BitOption]) -> float:
    """G bit-ops of one forward pass: sum of MACs x weight bits x activation bits."""
    return sum(layer.macs * o.w_bits * o.a_bits for layer, o in zip(graph.layers, assignment)) / 1e9


def size_mb(graph: QuantGraph, assignment: list[BitOption], storage: bool = False) -> float:
    """Model size in MB (1e6 bytes): effective (each layer at its own bits) or, with ``storage``, as stored in
    ONNX (sub-8-bit layers take 8 bits)."""
    bits = 0
    for layer, o in zip(graph.layers, assignment):
        w = o.w_bits if not storage or o.is_float else 8
        bits += layer.weight_params * w + layer.bias_params * FLOAT_BITS
    return bits / 8e6
