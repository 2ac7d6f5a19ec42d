"""The block vocabulary: FBNet-style ops as torch modules, each registered in the op registry (``nas.arch.ops``).

Op names follow mobile-vision's FBNet naming, with the expansion folded into the name:

- ``conv_k{K}``          conv KxK + BN + ReLU (stems, heads)
- ``ir_k{K}_e{E}``       inverted residual: [1x1 expand] -> KxK depthwise -> 1x1 project, residual when shapes match
- ``ir_k{K}_e{E}_g{G}``  the same with grouped 1x1 convs (G groups) and a channel shuffle after the expansion
- ``skip``               identity; a 1x1 conv + BN + ReLU where stride or channels change (as mobile-vision's Identity)
- ``pool_fc``            global average pool + dropout + linear classifier

Their registrations (pattern, analytic cost, latency family ``conv``, masked DMasking variants) are declared without
torch in ``nas.arch.builtin_ops``, which names the ``build_*`` functions here by reference.
"""

from __future__ import annotations

import torch
from torch import nn

from nas.arch.builtin_ops import keeps_shape
from nas.arch.channels import mid_channels
from nas.arch.opkey import OpKey
from nas.arch.ops import OpSpec, parse_op
from nas.errors import ArchError
from nas.models.conv import Conv2d


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 relu: bool = True, bias: bool = False):
        layers: list[nn.Module] = [
            Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=bias),
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
    """mobile-vision's IRF block: pw (absent when expansion is 1) -> dw -> pwl, residual when shapes match.

    Its convs have no bias, as in mobile-vision: batch norm follows each, and a bias there has no gradient but
    floating-point noise, which an adaptive optimiser turns into steps (a random walk that made a training depend on
    summation order). A residual block starts as the identity: its last batch norm's scale starts at zero (the
    "zero-gamma" of Goyal et al. 2017, as torchvision's ResNets offer). Without it a freshly built deep net is
    ill-conditioned: a 1e-5 change of one layer's output moved the first gradients of the fbnet_v2 supernet by 5%,
    and its searches trained to a loss 3x higher after 6 epochs (measured, digits)."""

    def __init__(self, spec: OpSpec, c_in: int, c_out: int, stride: int):
        super().__init__()
        mid = mid_channels(spec, c_in)
        g = spec.groups
        for c in (c_in, mid, c_out):
            if c % g:
                raise ArchError(f"op {spec.name}: {c} channels are not divisible into {g} groups")
        self.pw = ConvBNReLU(c_in, mid, 1, groups=g) if mid != c_in else None
        self.shuffle = ChannelShuffle(g) if g > 1 and self.pw is not None else None
        self.dw = ConvBNReLU(mid, mid, spec.kernel, stride, groups=mid)
        self.pwl = ConvBNReLU(mid, c_out, 1, groups=g, relu=False)
        self.residual = stride == 1 and c_in == c_out
        if self.residual:
            nn.init.zeros_(self.pwl[1].weight)

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
    """The module of op ``op`` at this shape (through the op registry, like every builder)."""
    return parse_op(op).build(OpKey(op, c_in, c_out, stride), dropout=dropout)


# ---- the builders of the registered ops (``nas.arch.builtin_ops``) ---------------------------------------------
def build_conv(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    return ConvBNReLU(key.c_in, key.c_out, spec.kernel, key.stride)


def build_inverted_residual(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    return InvertedResidual(spec, key.c_in, key.c_out, key.stride)


def build_skip(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    return nn.Identity() if keeps_shape(spec, key) else ConvBNReLU(key.c_in, key.c_out, 1, key.stride)


def build_pool_fc(spec: OpSpec, key: OpKey, dropout: float = 0.0, **options) -> nn.Module:
    return PoolClassifier(key.c_in, key.c_out, dropout)
