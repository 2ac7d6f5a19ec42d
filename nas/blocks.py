"""Block vocabulary: one registry from op names to torch modules.

Op names follow mobile-vision's FBNet naming, with the expansion folded into the name:

- ``conv_k{K}``          conv KxK + BN + ReLU (stems, heads)
- ``ir_k{K}_e{E}``       inverted residual: [1x1 expand] -> KxK depthwise -> 1x1 project, residual when shapes match
- ``ir_k{K}_e{E}_g{G}``  the same with grouped 1x1 convs (G groups) and a channel shuffle after the expansion
- ``skip``               identity; a 1x1 conv + BN + ReLU where stride or channels change (as mobile-vision's Identity)
- ``pool_fc``            global average pool + dropout + linear classifier
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from nas.errors import ArchError

_CONV = re.compile(r"^conv_k(\d+)$")
_IR = re.compile(r"^ir_k(\d+)_e(\d+)(?:_g(\d+))?$")


@dataclass(frozen=True)
class OpSpec:
    """An op name parsed into its arguments."""

    name: str
    kind: str  # "conv" | "ir" | "skip" | "pool_fc"
    kernel: int = 1
    expansion: int = 1
    groups: int = 1


def parse_op(name: str) -> OpSpec:
    """Parse an op name; raise ArchError naming the op if it is not in the vocabulary."""
    if name in ("skip", "pool_fc"):
        return OpSpec(name, name)
    if m := _CONV.match(name):
        return OpSpec(name, "conv", kernel=int(m.group(1)))
    if m := _IR.match(name):
        k, e, g = int(m.group(1)), int(m.group(2)), int(m.group(3) or 1)
        if k % 2 == 0 or e < 1 or g < 1:
            raise ArchError(f"unknown op {name!r}: kernel must be odd, expansion and groups >= 1")
        return OpSpec(name, "ir", kernel=k, expansion=e, groups=g)
    raise ArchError(f"unknown op {name!r} (known: conv_kK, ir_kK_eE, ir_kK_eE_gG, skip, pool_fc)")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10% (MobileNet rule)."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def mid_channels(spec: OpSpec, c_in: int) -> int:
    """Channels inside an inverted-residual block (after expansion)."""
    return make_divisible(c_in * spec.expansion, 8) if spec.expansion > 1 else c_in


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 relu: bool = True, bias: bool = False):
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=bias),
            nn.BatchNorm2d(c_out),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class InvertedResidual(nn.Module):
    """mobile-vision's IRF block: pw (absent when expansion is 1) -> dw -> pwl, residual when shapes match."""

    def __init__(self, spec: OpSpec, c_in: int, c_out: int, stride: int, bias: bool = True):
        super().__init__()
        mid = mid_channels(spec, c_in)
        g = spec.groups
        for c in (c_in, mid, c_out):
            if c % g:
                raise ArchError(f"op {spec.name}: {c} channels are not divisible into {g} groups")
        self.pw = ConvBNReLU(c_in, mid, 1, groups=g, bias=bias) if mid != c_in else None
        self.shuffle = ChannelShuffle(g) if g > 1 and self.pw is not None else None
        self.dw = ConvBNReLU(mid, mid, spec.kernel, stride, groups=mid, bias=bias)
        self.pwl = ConvBNReLU(mid, c_out, 1, groups=g, relu=False, bias=bias)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.pw is not None:
            y = self.pw(y)
        if self.shuffle is not None:
            y = self.shuffle(y)
        y = self.pwl(self.dw(y))
        return y + x if self.residual else y


class PoolClassifier(nn.Module):
    def __init__(self, c_in: int, classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x.mean(dim=(2, 3))))


def make_block(op: str, c_in: int, c_out: int, stride: int = 1, *, dropout: float = 0.0) -> nn.Module:
    """The one place that turns an op name and its shape into a module."""
    spec = parse_op(op)
    if spec.kind == "conv":
        return ConvBNReLU(c_in, c_out, spec.kernel, stride)
    if spec.kind == "ir":
        return InvertedResidual(spec, c_in, c_out, stride)
    if spec.kind == "skip":
        return nn.Identity() if stride == 1 and c_in == c_out else ConvBNReLU(c_in, c_out, 1, stride)
    return PoolClassifier(c_in, c_out, dropout)


def is_identity(op: str, c_in: int, c_out: int, stride: int) -> bool:
    """True when the block is a no-op (costs nothing, nothing to measure)."""
    return op == "skip" and stride == 1 and c_in == c_out
