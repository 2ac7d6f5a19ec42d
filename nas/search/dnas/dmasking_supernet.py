"""The FBNetV2 DMaskingNAS supernet: op choice per layer, channel masks per stage, resolution masks per input.

Each searchable layer holds one masked block per candidate op, built at the layer's largest channels; the op is
chosen by a Gumbel sample (only the sampled path runs, by default), the channels of every stage and the input
resolution by Gumbel-weighted sums of masks (``nas.search.dnas.masks``), so that all channel and resolution options
share one set of weights and one forward pass. ``child(arch)`` is ``build_model(space, arch)`` with the weights the arch
uses copied in; with one-hot weights the supernet computes exactly that child.
"""

from __future__ import annotations

import torch
from torch import nn

from nas.arch.space import Arch
from nas.models.builder import SpaceModel, build_model
from nas.search.dnas.distribution import ArchDistribution, ArchSample
from nas.search.dnas.masked_blocks import LayerShape, MaskedHead, MaskedStem, SuperLayer, copy_conv_bn
from nas.search.dnas.masks import ResolutionPlan, ResolutionState


class DMaskingSupernet(nn.Module):
    def __init__(self, dist: ArchDistribution, dropout: float | None = None):
        super().__init__()
        space = self.space = dist.space
        object.__setattr__(self, "dist", dist)  # a reference, not a submodule: its logits are not weights
        stem_op, stem_c, stem_stride = space.spec.stem
        level = 1 if stem_stride > 1 else 0
        self.stem = MaskedStem(stem_op, space.in_channels, space.stem_channels, stem_stride)
        self.shapes: list[LayerShape] = []
        layers = []
        previous = [space.stem_channels]
        for slot in space.layers:
            outs = dist.channel_options[slot.stage]
            first = slot.index == space.stages[slot.stage].layers[0]
            level_out = level + (1 if slot.stride > 1 else 0)
            shape = LayerShape(previous if first else outs, outs, not first, slot.stride, level, level_out)
            self.shapes.append(shape)
            layers.append(SuperLayer(dist.op_options[slot.index], shape))
            previous, level = outs, level_out
        self.layers = nn.ModuleList(layers)
        dropout = space.spec.dropout if dropout is None else dropout
        self.head = MaskedHead(space.spec.head[0], max(previous), space.head_channels, space.classes, dropout, level)
        self.plan = ResolutionPlan(dist.resolution_options, level + 1) if len(dist.resolution_options) > 1 else None
        self.input_resolution = max(dist.resolution_options)
        self.input_shape = (space.in_channels, self.input_resolution, self.input_resolution)

    def forward(self, x: torch.Tensor, sample: ArchSample) -> torch.Tensor:
        res, size, scale = None, self.input_resolution, None
        if self.plan is not None:
            if sample.resolution.active is not None and len(sample.resolution.active) == 1:
                # one resolution runs: the whole network runs compactly at that size (the child's own shapes)
                option = sample.resolution.active[0]
                size, scale = self.plan.options[option], sample.resolution.weights[option]
            else:
                res = ResolutionState(self.plan, sample.resolution)
        if res is None and x.shape[-1] != size:
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).contiguous(
                memory_format=torch.channels_last)
        x = self.stem(x, res)
        stem_weight = torch.ones(1)
        for slot, layer, decision in zip(self.space.layers, self.layers, sample.ops):
            u = sample.channels[slot.stage].weights
            shape = self.shapes[slot.index]
            v = u if shape.tied else (sample.channels[slot.stage - 1].weights if slot.stage > 0 else stem_weight)
            x = layer(x, decision, v, u, res)
        logits = self.head(x, res)
        return logits if scale is None or not scale.requires_grad else logits * scale

    @torch.no_grad()
    def child(self, arch: Arch) -> SpaceModel:
        """``build_model(space, arch)`` carrying the supernet weights that ``arch`` uses."""
        space = self.space
        model = build_model(space, arch)
        ops, channels, _ = self.dist.indices(arch)
        chosen = [self.dist.channel_options[s][i] for s, i in enumerate(channels)]
        model[0].load_state_dict(self.stem.block.state_dict())
        c_in = space.stem_channels
        for slot, layer, op_index in zip(space.layers, self.layers, ops):
            c_out = chosen[slot.stage]
            model[1 + slot.index] = layer.child_block(op_index, c_in, c_out)
            c_in = c_out
        copy_conv_bn(self.head.head, model[-2], space.head_channels, c_in)
        model[-1].load_state_dict(self.head.classifier.state_dict())
        return model
