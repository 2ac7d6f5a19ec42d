"""The joint architecture x training-recipe space of FBNetV3, over a model space (space YAML).

The architecture decisions come from ``nas.arch.space.Space``: one categorical decision per layer with several
candidate ops, one ordinal decision per stage with several channel options, one ordinal decision for the input
resolution. The recipe decisions come from the space's ``recipe_space:`` section (``nas.search.predict.recipe_space``).
A genome row decodes to a ``Candidate``: an ``Arch`` and a ``Recipe``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nas.arch.space import Arch, Space
from nas.errors import SpaceError
from nas.search.blackbox.decisions import Decision, DecisionSpace
from nas.search.predict.recipe_space import parse_recipe_space
from nas.train.recipe import Recipe


@dataclass(frozen=True)
class Candidate:
    """One point of the joint space: what to build and how to train it."""

    arch: Arch
    recipe: Recipe


class JointSpace(DecisionSpace):
    """Architecture decisions of ``space`` followed by the recipe decisions of its ``recipe_space``."""

    def __init__(self, space: Space, base_recipe: Recipe | None = None, recipe_space: dict | None = None):
        self.space = space
        raw = recipe_space if recipe_space is not None else space.spec.recipe_space
        recipe_decisions, fixed = parse_recipe_space(raw, f"space {space.name!r}: recipe_space")
        self.base_recipe = (base_recipe or Recipe()).model_copy(update=fixed)
        arch_decisions: list[Decision] = []
        self._op_layers: list[int] = []  # layer index of each op decision
        for layer in space.layers:
            if len(layer.candidates) > 1:
                arch_decisions.append(Decision(f"op_{layer.index}", "cat", tuple(layer.candidates)))
                self._op_layers.append(layer.index)
        self._channel_stages: list[int] = []
        if space.searches_channels:
            for stage in space.stages:  # every stage, as Space.encode does (a single option is a constant)
                arch_decisions.append(Decision(f"channels_{stage.index}", "ord", tuple(stage.channel_options)))
                self._channel_stages.append(stage.index)
        if space.searches_resolution:
            arch_decisions.append(Decision("resolution", "ord", tuple(space.resolution_options)))
        self.n_arch = len(arch_decisions)
        self.recipe_names = [d.name for d in recipe_decisions]
        if not arch_decisions and not recipe_decisions:
            raise SpaceError(f"space {space.name!r} has nothing to search: a fixed model and no recipe_space")
        super().__init__(arch_decisions + recipe_decisions)

    # ---- decoding ------------------------------------------------------------------------------------------
    def arch(self, genome: np.ndarray) -> Arch:
        ops = [layer.candidates[0] for layer in self.space.layers]
        col = 0
        for layer_index in self._op_layers:
            ops[layer_index] = self.decisions[col].value(genome[col])
            col += 1
        channels = None
        if self.space.searches_channels:
            channels = [s.channel_options[-1] for s in self.space.stages]
            for stage_index in self._channel_stages:
                channels[stage_index] = int(self.decisions[col].value(genome[col]))
                col += 1
        resolution = int(self.decisions[col].value(genome[col])) if self.space.searches_resolution else None
        return Arch(self.space.name, tuple(ops), tuple(channels) if channels else None, resolution)

    def recipe(self, genome: np.ndarray) -> Recipe:
        update = {d.name: _plain(d.value(g)) for d, g in zip(self.decisions[self.n_arch:], genome[self.n_arch:])}
        return self.base_recipe.model_copy(update=update)

    def candidate(self, genome: np.ndarray) -> Candidate:
        return Candidate(self.arch(genome), self.recipe(genome))

    def genome_of(self, arch: Arch, recipe: Recipe | None = None) -> np.ndarray:
        """The genome of an arch (and a recipe whose searched fields lie in the ranges)."""
        arch = self.space._normalise(self.space.validate(arch))
        values: dict[str, Any] = {}
        for layer_index in self._op_layers:
            values[f"op_{layer_index}"] = arch.ops[layer_index]
        for stage_index in self._channel_stages:
            values[f"channels_{stage_index}"] = arch.channels[stage_index]
        if self.space.searches_resolution:
            values["resolution"] = arch.resolution
        recipe = recipe or self.base_recipe
        for name in self.recipe_names:
            values[name] = getattr(recipe, name)
        return self.genome(values)

    # ---- genome columns the cost tables need (vectorised) ----------------------------------------------------
    def layer_op_index(self, genomes: np.ndarray) -> np.ndarray:
        """n x L option indices of each layer's op (0 for single-candidate layers)."""
        out = np.zeros((len(genomes), len(self.space.layers)), dtype=np.int64)
        for col, layer_index in enumerate(self._op_layers):
            out[:, layer_index] = np.rint(genomes[:, col]).astype(np.int64)
        return out

    def stage_channel_index(self, genomes: np.ndarray) -> np.ndarray:
        """n x S option indices of each stage's channels (the largest when channels are not searched)."""
        out = np.tile(np.asarray([len(s.channel_options) - 1 for s in self.space.stages], dtype=np.int64),
                      (len(genomes), 1))
        base = len(self._op_layers)
        for k, stage_index in enumerate(self._channel_stages):
            out[:, stage_index] = np.rint(genomes[:, base + k]).astype(np.int64)
        return out

    def resolution_index(self, genomes: np.ndarray) -> np.ndarray:
        """n option indices of the input resolution (0 when resolution is not searched)."""
        if not self.space.searches_resolution:
            return np.zeros(len(genomes), dtype=np.int64)
        return np.rint(genomes[:, self.n_arch - 1]).astype(np.int64)

    def resolutions(self) -> list[int]:
        return list(self.space.resolution_options) if self.space.searches_resolution else [self.space.resolution]


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
