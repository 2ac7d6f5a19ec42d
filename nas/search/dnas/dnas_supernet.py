"""The FBNet supernet: stem, one ``MixedOp`` of every candidate block per layer, head and classifier.

Candidates are built by the block vocabulary (``nas.models.builder.build_block``) at the space's largest channels and
resolution, so a child is ``nas.models.builder.build_model(space, arch)`` with the chosen candidates' weights copied in.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from nas.arch.space import Arch
from nas.models.builder import SpaceModel, build_block, build_model
from nas.search.dnas.distribution import ArchDistribution, ArchSample
from nas.search.dnas.mixed_op import MixedOp


class DNASSupernet(nn.Module):
    def __init__(self, dist: ArchDistribution, dropout: float | None = None):
        super().__init__()
        space = self.space = dist.space
        object.__setattr__(self, "dist", dist)  # a reference, not a submodule: its logits are not weights
        blocks = space.resolve(dist.argmax_arch())  # shapes only: ops are replaced per candidate below
        dropout = space.spec.dropout if dropout is None else dropout
        self.stem = build_block(blocks[0])
        self.layers = nn.ModuleList(
            MixedOp([build_block(replace(blocks[1 + slot.index], op=op)) for op in dist.op_options[slot.index]])
            for slot in space.layers)
        self.head = build_block(blocks[-2])
        self.classifier = build_block(blocks[-1], dropout)
        self.input_shape = (blocks[0].c_in, blocks[0].resolution, blocks[0].resolution)

    def forward(self, x: torch.Tensor, sample: ArchSample) -> torch.Tensor:
        x = self.stem(x)
        for layer, decision in zip(self.layers, sample.ops):
            x = layer(x, decision)
        return self.classifier(self.head(x))

    @torch.no_grad()
    def child(self, arch: Arch) -> SpaceModel:
        """``build_model(space, arch)`` carrying the supernet's weights for the chosen candidates."""
        model = build_model(self.space, arch)
        ops, _, _ = self.dist.indices(arch)
        model[0].load_state_dict(self.stem.state_dict())
        for i, (layer, index) in enumerate(zip(self.layers, ops)):
            model[1 + i].load_state_dict(layer.candidates[index].state_dict())
        model[-2].load_state_dict(self.head.state_dict())
        model[-1].load_state_dict(self.classifier.state_dict())
        return model
