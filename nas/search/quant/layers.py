"""The builders of mixed precision's measured units (registered without torch in ``nas.arch.builtin_ops``; keys in
``nas.search.quant.profile``): one conv or linear layer alone, and the QuantizeLinear -> DequantizeLinear pair of a
precision transition. Their int8 keys are quantized by the profiler like any other key.
"""

from __future__ import annotations

import torch
from torch import nn

from nas.arch.opkey import OpKey
from nas.arch.ops import OpSpec


class QuantDequantPair(nn.Module):
    """Exports to ONNX as QuantizeLinear -> DequantizeLinear (uint8), the cost of one precision transition."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, 0.05, 128, 0, 255)


def build_conv_layer(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    """``qlayer_{conv,pw,dw,gconv}``: ``extra`` holds ``k`` kernel, ``g`` groups and ``relu`` 0/1."""
    kernel, groups = key.int_arg("k"), key.int_arg("g")
    conv = nn.Conv2d(key.c_in, key.c_out, kernel, key.stride, kernel // 2, groups=groups)
    return nn.Sequential(conv, nn.ReLU()) if key.int_arg("relu") else conv


def build_linear_layer(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    return nn.Linear(key.c_in, key.c_out)


def build_transition(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    return QuantDequantPair()
