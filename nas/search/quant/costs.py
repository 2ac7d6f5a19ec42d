"""The three costs of a bit assignment (Wu et al. 2018), each exact for a fixed assignment and differentiable in
expectation over a supernet's choice probabilities:

- ``size``: model bits, ``sum params x weight bits`` (biases stay 32-bit), in MB;
- ``bitops``: ``sum MACs x weight bits x activation bits``, in G bit-ops;
- ``latency``: milliseconds on a device, from its LatencyModel's precision cost table (see ``LatencyCost``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from nas.latency.precision import PrecisionCostTable
from nas.search.quant.fake import FLOAT_BITS
from nas.search.quant.graph import QuantGraph
from nas.search.quant.mixed import BitOption

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


class LatencyCost(Cost):
    """Expected latency of a mixed-precision model on a device: a view of the LatencyModel's precision cost table.

    ``table`` (``LatencyModel.precision_costs``, see ``nas.latency.precision``) holds the numbers and the formula;
    this cost turns choice probabilities over the bit options into per-layer int8 probabilities for it.
    """

    name, unit = "latency", "ms"

    def __init__(self, graph: QuantGraph, options: list[BitOption], table: PrecisionCostTable):
        super().__init__(graph, options)
        self.table = table
        self.int8_mask = torch.tensor([1.0 if o.runs_int8 else 0.0 for o in options])

    def expected(self, probs):
        return self.table.expected_ms(torch.stack([(p * self.int8_mask).sum() for p in probs]))

    def lower_bound(self) -> float:
        return self.table.lower_bound_ms()


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
