"""(Space, Arch) -> nn.Module, through the resolved block list."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas.arch.space import Arch, BlockSpec, Space
from nas.models.blocks import ConvBNReLU, make_block


def build_block(block: BlockSpec, dropout: float = 0.0) -> nn.Module:
    return make_block(block.op, block.c_in, block.c_out, block.stride, dropout=dropout)


class SpaceModel(nn.Sequential):
    """A chain of blocks. ``input_shape`` is the (C, H, W) the arch expects."""

    def __init__(self, blocks: list[BlockSpec], dropout: float = 0.0):
        super().__init__(*(build_block(b, dropout) for b in blocks))
        self.input_shape = (blocks[0].c_in, blocks[0].resolution, blocks[0].resolution)


def build_model(space: Space, arch: Arch, dropout: float | None = None) -> SpaceModel:
    return SpaceModel(space.resolve(arch), space.spec.dropout if dropout is None else dropout)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1, from torch.utils.flop_counter (FLOPs / 2)."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    """Parameters of the deployed model: BatchNorm folded into the preceding conv, as in the exported ONNX file."""
    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, ConvBNReLU):
            conv, bn = module[0], module[1]
            total -= sum(p.numel() for p in bn.parameters())
            total += 0 if conv.bias is not None else bn.num_features
    return total
