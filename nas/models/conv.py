"""2-D convolution without the heap corruption of oneDNN's strided 1x1 weight gradient on the CPU.

In the torch 2.13 CPU build (oneDNN 3.12) on AVX-512 machines, the backward-weights kernel oneDNN picks for a 1x1
convolution with stride > 1 (``jit_1x1:avx512_core``, which first copies the strided input to unit stride, "rtus")
writes past its buffers when it runs on several threads with a channels-last input of fewer than 16 channels and a
batch that does not split evenly over the threads (the last, partial batch of an epoch): ``free(): invalid next
size``, ``double free or corruption``, segmentation faults and bus errors. Such a convolution is the ``skip`` op of a
down-sampling layer (a strided 1x1 ConvBNReLU), so every search and training that samples one was pinned to one thread.

A 1x1 convolution with stride ``s`` and no padding reads only every ``s``-th pixel, so it is the unit-stride
convolution of the sub-sampled input: the same numbers, through oneDNN's unit-stride kernels. ``conv2d`` takes that
route when the weight's gradient will be computed on the CPU; inference and ONNX export (tracing) keep the strided
convolution that latency tables measure.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _needs_unit_stride(x: torch.Tensor, weight: torch.Tensor, stride, padding) -> bool:
    """A strided 1x1 convolution without padding whose weight gradient oneDNN would compute on the CPU."""
    return (weight.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing()
            and x.device.type == "cpu" and tuple(weight.shape[-2:]) == (1, 1) and max(_pair(stride)) > 1
            and padding != "same" and not any(_pair(padding)))


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> torch.Tensor:
    """``F.conv2d``, but a strided 1x1 convolution that will be differentiated in its weight runs at unit stride
    on the sub-sampled input (see the module docstring)."""
    if _needs_unit_stride(x, weight, stride, padding):
        sh, sw = _pair(stride)
        return F.conv2d(x[:, :, ::sh, ::sw], weight, bias, 1, 0, 1, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, state dict and export) whose training forward goes through ``conv2d``."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            return super()._conv_forward(input, weight, bias)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
