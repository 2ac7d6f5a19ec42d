"""An int8 layer as ONNX Runtime's CPU kernels compute it (QLinearConv / QGemm), for the fake-quant model's evaluation.

The exported layer has its BatchNorm folded in (``w * (gamma / sqrt(var + eps))``, as ``torch.onnx`` folds it), its
weights quantized per channel on ``max|w_c| / qmax`` (float64, stored float32), its bias stored as int32 on
``input scale x weight scale``, and its output requantized from the int32 accumulator as
``round(float32(acc + bias) x float32(input scale x weight scale / output scale)) + zero point``, saturated to uint8.
Computing the same integers in torch (the accumulator in float64, exact) makes the evaluated model the shipped one
to the last rounding, where float arithmetic would flip values lying on a rounding boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas.search.quant.fake import activation_qparams, fake_quantize_weight, weight_qmax

UINT8_MAX = 255


def folded_batchnorm(bn: nn.Module | None, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel of ``weight``, ``(s, t)``: the BatchNorm ``y -> s y + t`` (running statistics) as
    ``torch.onnx`` folds it; ``(1, 0)`` without one."""
    ones, zeros = weight.new_ones(weight.shape[0]), weight.new_zeros(weight.shape[0])
    if bn is None:
        return ones, zeros
    gamma = bn.weight.detach() if bn.weight is not None else ones
    beta = bn.bias.detach() if bn.bias is not None else zeros
    s = gamma / torch.sqrt(bn.running_var + bn.eps)
    return s, beta - bn.running_mean * s


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def integer_output(layer: nn.Module, bn: nn.Module | None, x: torch.Tensor, w_bits: int,
                   in_range: tuple[float, float], in_bits: int, out_range: tuple[float, float],
                   out_bits: int) -> torch.Tensor:
    """The layer's output *before* its BatchNorm, such that BatchNorm (and a following ReLU) give exactly the value
    ONNX Runtime's int8 kernel stores: ``(q - zero point) x output scale``."""
    w = layer.weight.detach()
    s, t = folded_batchnorm(bn, w)
    w_folded = fake_quantize_weight(w, w_bits) * _per_channel(s, w)
    if layer.bias is None:
        b_folded = t
    elif bn is None:
        b_folded = layer.bias.detach()
    else:  # the exporter's order of operations, for the same float32 bias
        beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(s)
        b_folded = (layer.bias.detach() - bn.running_mean) * s + beta
    absmax = w_folded.abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-12)
    w_scale = (absmax.double() / weight_qmax(w_bits)).float()
    q_w = torch.round(w_folded / _per_channel(w_scale, w))

    x_scale, x_zero = activation_qparams(*in_range, in_bits)
    x_scale = torch.tensor(x_scale, dtype=torch.float32)
    q_x = torch.clamp(torch.round(x / x_scale) + x_zero, 0, UINT8_MAX) - x_zero
    bias_scale = x_scale * w_scale
    q_b = torch.round(b_folded.double() / bias_scale.double())
    if isinstance(layer, nn.Linear):
        acc = F.linear(q_x.double(), q_w.double()) + q_b
    else:
        acc = F.conv2d(q_x.double(), q_w.double(), None, layer.stride, layer.padding, layer.dilation, layer.groups)
        acc = acc + q_b.view(1, -1, 1, 1)

    y_scale, y_zero = activation_qparams(*out_range, out_bits)
    y_scale = torch.tensor(y_scale, dtype=torch.float32)
    multiplier = bias_scale / y_scale
    shape = (1, -1) if isinstance(layer, nn.Linear) else (1, -1, 1, 1)
    q_y = torch.clamp(torch.round(acc.float() * multiplier.view(shape)) + y_zero, 0, UINT8_MAX)
    y = (q_y - y_zero) * y_scale
    safe = torch.where(s != 0, s, torch.ones_like(s))
    return (y - t.view(shape)) / safe.view(shape)
