"""FBNetV2's masks: channel masks over one max-width conv, and resolution masks over one largest feature map.

Channels. A layer is built once at its largest channel count; an option keeping the first ``c`` channels is the
binary mask ``[i < c]``, and a Gumbel sample's feature map is multiplied by ``sum_k w_k * mask_k``. One conv serves
every option, so memory and compute stay flat as options are added.

Resolution. Every option's feature map lives inside the largest map, interleaved: pixel ``i`` of an ``r``-pixel map
sits at ``floor((i + 0.5) * R / r)`` of the ``R``-pixel map (nearest-neighbour sub-sampling, so pixels of different
options that see the same image region share a position, and so the same weights). Point-wise ops run once on the
largest map. A spatial op (kernel or stride > 1) gathers each option's sub-sampled map, runs the op on it at its own
size, and interleaves (scatters) the results, weighted by the option's Gumbel weight, back into the largest map.
Batch-norm statistics and the final pooling are weighted averages over each option's pixels. With one-hot weights the
result equals the child network run at that resolution exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nas.models.conv import conv2d
from nas.search.gumbel import DecisionSample
from nas.train import sync_layers as shares


def prefix_masks(options: list[int], width: int | None = None) -> torch.Tensor:
    """(len(options), width) matrix: row k keeps the first ``options[k]`` channels."""
    width = width or max(options)
    return (torch.arange(width)[None, :] < torch.tensor(options)[:, None]).float()


def channel_mask(weights: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """``sum_k weights[k] * prefix[k]`` shaped (1, C, 1, 1) for broadcasting over a feature map."""
    return (weights @ prefix).view(1, -1, 1, 1)


def batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d, omega: torch.Tensor | None = None,
               channel_scale: torch.Tensor | None = None, relu: bool = False,
               channels: int | None = None) -> torch.Tensor:
    """``bn(x) * channel_scale`` (then ReLU), the scale folded into the affine so that a mask costs nothing.

    ``channels``: ``x`` holds only the first ``channels`` of ``bn``'s channels (a slice of a wider block).
    With ``omega`` (H x W position weights summing to 1 per image) and in training mode, the statistics are the
    ``omega``-weighted mean and variance over positions (the pixels of the resolution options), as a child network
    at that resolution computes them. Under data parallelism the statistics span every rank's share
    (``nas.train.sync_layers``).
    """
    gamma, beta, running_mean, running_var = bn.weight, bn.bias, bn.running_mean, bn.running_var
    if channels is not None and channels < bn.num_features:  # (no slice otherwise: its backward costs a copy)
        c = channels
        gamma, beta, running_mean, running_var = gamma[:c], beta[:c], running_mean[:c], running_var[:c]
    if channel_scale is not None:
        gamma, beta = gamma * channel_scale, beta * channel_scale
    if not bn.training or (omega is None and shares.share_of(bn) is None):
        y = F.batch_norm(x, running_mean, running_var, gamma, beta, bn.training,
                         bn.momentum if bn.momentum is not None else 0.1, bn.eps)
        if bn.training:
            bn.num_batches_tracked += 1
    else:  # moments weighted by the positions, or over every rank's share
        y = shares.batch_norm_training(x, bn, gamma, beta, running_mean, running_var, omega)
    return torch.relu_(y) if relu else y  # in place: neither backward needs its output


class ResolutionPlan(nn.Module):
    """Interleaving indices of every resolution option at every down-sampling level of the network."""

    def __init__(self, options: list[int], levels: int):
        super().__init__()
        self.options = list(options)
        self.full = [self._size(max(options), j) for j in range(levels)]
        for j in range(levels):
            big = self.full[j]
            index = torch.full((len(options), big, big), big * big, dtype=torch.long)  # big*big: the zero slot
            lattice = torch.zeros(len(options), big, big)
            for o, r in enumerate(options):
                small = self._size(r, j)
                pos = torch.tensor([math.floor((i + 0.5) * big / small) for i in range(small)])
                index[o, :small, :small] = pos[:, None] * big + pos[None, :]
                lattice[o][pos[:, None], pos[None, :]] = 1.0 / (small * small)
            self.register_buffer(f"index{j}", index.reshape(len(options), -1), persistent=False)
            self.register_buffer(f"lattice{j}", lattice, persistent=False)

    @staticmethod
    def _size(r: int, level: int) -> int:
        for _ in range(level):
            r = math.ceil(r / 2)
        return r

    def size(self, option: int, level: int) -> int:
        return self._size(self.options[option], level)

    def index(self, level: int) -> torch.Tensor:
        return getattr(self, f"index{level}")

    def lattice(self, level: int) -> torch.Tensor:
        return getattr(self, f"lattice{level}")


class ResolutionState:
    """One forward pass's resolution weights over a ``ResolutionPlan``."""

    def __init__(self, plan: ResolutionPlan, sample: DecisionSample):
        self.plan = plan
        self.active = list(range(len(plan.options))) if sample.active is None else list(sample.active)
        self.weights = sample.weights[self.active]
        self._omega: dict[int, torch.Tensor] = {}

    def omega(self, level: int) -> torch.Tensor:
        """(1, 1, H, W) position weights of the level: the options' pixels, each option summing to its weight."""
        if level not in self._omega:
            lattice = self.plan.lattice(level)[self.active]
            self._omega[level] = (self.weights.view(-1, 1, 1) * lattice).sum(0)[None, None]
        return self._omega[level]

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(n, h * w, c)

    def _option_index(self, option: int, level: int) -> torch.Tensor:
        small = self.plan.size(option, level)
        return self.plan.index(level)[option].view(self.plan.full[level], -1)[:small, :small].reshape(-1)

    def _is_full(self, option: int, level: int) -> bool:
        return self.plan.size(option, level) == self.plan.full[level]

    def spatial_conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                     padding: int, groups: int, level_in: int, level_out: int) -> torch.Tensor:
        """A spatial conv run on every active option's sub-sampled map at its own size, the results interleaved into
        the level's largest map, each scaled by its option's weight (folded into the conv's weight and bias)."""
        return self._mix(lambda o: x if self._is_full(o, level_in) else self.gather(x, o, level_in),
                         weight, bias, stride, padding, groups, level_out)

    def stem(self, conv: nn.Conv2d, x: torch.Tensor, level_out: int) -> torch.Tensor:
        """The stem conv on each option's input (bilinear resize, as ``fit_input`` does for a child)."""
        def source(o):
            r = self.plan.options[o]
            if x.shape[-1] == r:
                return x
            return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False).contiguous(
                memory_format=torch.channels_last)
        return self._mix(source, conv.weight, conv.bias, conv.stride[0], conv.padding[0], conv.groups, level_out)

    def gather(self, x: torch.Tensor, option: int, level: int) -> torch.Tensor:
        """Sub-sample one option's pixels out of the level's largest map: (N, C, r, r)."""
        n, c = x.shape[:2]
        small = self.plan.size(option, level)
        picked = self._flat(x).index_select(1, self._option_index(option, level))
        return picked.view(n, small, small, c).permute(0, 3, 1, 2)

    def _mix(self, source, weight, bias, stride, padding, groups, level_out: int) -> torch.Tensor:
        out = None
        order = sorted(range(len(self.active)), key=lambda i: not self._is_full(self.active[i], level_out))
        for i in order:
            o, g = self.active[i], self.weights[i]
            y = conv2d(source(o), weight * g, bias * g if bias is not None else None, stride, padding, 1, groups)
            if self._is_full(o, level_out):
                out = y if out is None else out + y
                continue
            if out is None:
                big = self.plan.full[level_out]
                out = y.new_zeros(y.shape[0], y.shape[1], big, big).contiguous(memory_format=torch.channels_last)
            out = out.contiguous(memory_format=torch.channels_last)
            self._flat(out).index_add_(1, self._option_index(o, level_out), self._flat(y))
        return out
