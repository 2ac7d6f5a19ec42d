"""The blocks of a space's models: each position in the chain and the decisions its shape depends on.

A model of a space is a chain of blocks: stem, one block per layer, head, classifier. A block's shape (its op, input
and output channels, stride and input resolution) is fixed by a few decisions of the arch:

- stem: the input resolution;
- a layer: its op, the channels of the stage before it (its input; the stem's fixed channels for the first layer
  of the network, its own stage's for every layer after a stage's first), its own stage's channels, the resolution;
- head: the last stage's channels and the resolution; classifier: the resolution.

``Space.block_positions()`` walks the space once and yields these positions. Everything that costs an arch takes them
from here: the profiler lists every key they can produce, the latency model turns them into cost arrays (one axis
per decision), DNAS takes expectations over them and the predictor searches gather population costs from them.
``Space.resolve(arch)`` is the same chain for one arch. This module holds the types only; it imports no space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

Dim = tuple  # a decision: ("op", layer) | ("ch", stage) | ("res",)


@dataclass(frozen=True)
class BlockSpec:
    """One concrete block of a resolved arch: what the builder builds and the latency table keys."""

    role: str  # "stem" | "layer" | "head" | "classifier"
    op: str
    c_in: int
    c_out: int
    stride: int
    resolution: int  # input height = width
    index: int = -1  # layer index for role "layer"

    @property
    def out_resolution(self) -> int:
        return math.ceil(self.resolution / self.stride)


@dataclass(frozen=True)
class BlockPosition:
    """One block of the chain, over the options of the decisions it depends on."""

    role: str
    layer: int  # layer index, -1 for stem / head / classifier
    ops: tuple[str, ...]
    cin_options: tuple[int, ...]
    cin_stage: int  # stage whose channel choice is the input; -1 when fixed
    cout_options: tuple[int, ...]
    cout_stage: int  # -1 when fixed
    stride: int
    res_by_option: tuple[int, ...]  # this block's input resolution for each input-resolution option

    @property
    def tied(self) -> bool:
        """Input and output channels are the same decision (a stage's layer after its first)."""
        return self.cin_stage >= 0 and self.cin_stage == self.cout_stage

    @property
    def axes(self) -> list[str]:
        """The block's option axes: ``op``, ``cin`` (untied input channels), ``cout``, ``res``."""
        return [a for a, present in (("op", self.role == "layer"), ("cin", self.cin_stage >= 0 and not self.tied),
                                     ("cout", self.cout_stage >= 0), ("res", True)) if present]

    @property
    def dims(self) -> list[Dim]:
        """The decisions this block depends on, one per axis of its cost arrays."""
        decision = {"op": ("op", self.layer), "cin": ("ch", self.cin_stage), "cout": ("ch", self.cout_stage),
                    "res": ("res",)}
        return [decision[a] for a in self.axes]

    @property
    def shape(self) -> tuple[int, ...]:
        sizes = {"op": len(self.ops), "cin": len(self.cin_options), "cout": len(self.cout_options),
                 "res": len(self.res_by_option)}
        return tuple(sizes[a] for a in self.axes)

    def block(self, index: tuple[int, ...]) -> BlockSpec:
        """The block at one option index per axis (aligned with ``dims``)."""
        chosen = dict(zip(self.axes, (int(i) for i in index)))
        cout = chosen.get("cout", 0)
        cin = cout if self.tied else chosen.get("cin", 0)
        return BlockSpec(self.role, self.ops[chosen.get("op", 0)], self.cin_options[cin], self.cout_options[cout],
                         self.stride, self.res_by_option[chosen["res"]], self.layer)

    def blocks(self) -> Iterator[tuple[tuple[int, ...], BlockSpec]]:
        """Every (index, block) this position can take."""
        for index in np.ndindex(*self.shape):
            yield tuple(int(i) for i in index), self.block(index)
