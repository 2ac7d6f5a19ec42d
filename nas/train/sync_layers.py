"""Data parallelism as slices of one process: each rank holds an equal share of every global batch (rows
``rank::size``) and computes its rows of what a single process computes on the whole batch.

Two layers see more than their own rows, and the ranks would otherwise part from one process there:

- batch normalisation (training mode) normalises with the moments of the whole global batch: every rank's per-channel
  sums (for the mean, then for the variance about it) are all-reduced, and their gradients on the way back, so
  outputs, gradients and running statistics are those of one process;
- dropout draws one mask for the whole global batch (every rank draws the same one: the ranks share a random stream)
  and applies its rows.

Gradients are averaged by the engine, which gives one process's gradient of the batch mean. So N processes follow one
process's trajectory up to floating-point summation order. torch's ``SyncBatchNorm`` shares batch-norm moments on
GPUs only, and not the weighted moments of the resolution supernet's functional batch norm; this module does both on
any backend (gloo or nccl), with two small all-reduces per batch-norm layer and pass.

``convert_shared_layers`` turns this on once, when the engine places a model on its device (``Engine.place``), as
``nn.SyncBatchNorm.convert_sync_batchnorm`` does, and ``revert_shared_layers`` turns it off for export
(``Engine.release``). Unlike ``convert_sync_batchnorm`` it converts the ``nn.BatchNorm2d`` and ``nn.Dropout`` modules
in place (their class changes; the module objects, their parameters and buffers stay): other code holds references
to them (the quantised layers' folded batch norms, an EMA copy), which new objects would leave behind. Functional
batch norm (``nas.search.dnas.masks``) asks ``share_of`` its module. Nothing changes in a world of one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from nas.train.distributed import World


@dataclass(frozen=True)
class Share:
    rank: int
    size: int


class SharedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that, in training mode, normalises with the whole global batch's moments (``share``: this
    rank's)."""

    share: Share

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        return batch_norm_training(x, self, self.weight, self.bias, self.running_mean, self.running_var)


class SharedDropout(nn.Dropout):
    """``nn.Dropout`` that, in training mode, applies this rank's rows (``share``) of one mask drawn for the whole
    global batch: the mask one process would draw (as torch does on the CPU: ``bernoulli_(1 - p) / (1 - p)``)."""

    share: Share

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return super().forward(x)
        share = self.share
        noise = x.new_empty((x.shape[0] * share.size, *x.shape[1:])).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * noise[share.rank::share.size]


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient: every rank's loss depends on every rank's share.
    (``torch.distributed.nn.functional.all_reduce`` did this and is deprecated, its successor does not carry
    gradients.)"""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


_SHARED = {nn.BatchNorm2d: SharedBatchNorm2d, nn.Dropout: SharedDropout}
_PLAIN = {shared: plain for plain, shared in _SHARED.items()}


def convert_shared_layers(model: nn.Module, world: World) -> nn.Module:
    """``model`` with its batch norms and dropouts acting on ``world``'s whole global batch (converted in place;
    a world of one: unchanged)."""
    if world.size > 1:
        share = Share(world.rank, world.size)
        for m in model.modules():
            if type(m) in _SHARED:
                m.__class__ = _SHARED[type(m)]
            if type(m) in _PLAIN:
                m.share = share
    return model


def revert_shared_layers(model: nn.Module) -> nn.Module:
    """``model`` with plain ``nn.BatchNorm2d`` and ``nn.Dropout`` modules again (in place), for export."""
    for m in model.modules():
        if type(m) in _PLAIN:
            m.__class__ = _PLAIN[type(m)]
            del m.share
    return model


def share_of(bn: nn.Module) -> Share | None:
    """The share of the global batch that ``bn`` normalises over; None for a plain batch norm."""
    return bn.share if isinstance(bn, SharedBatchNorm2d) else None


def batch_moments(x: torch.Tensor, positions: torch.Tensor | None = None, share: Share | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-channel mean and (biased) variance of ``x`` (N x C x H x W) over its images and positions, and the
    effective number of values behind them (for the unbiased running variance). ``positions`` (H x W, summing to 1)
    weights the positions; None: all alike. With ``share``, over the whole global batch.

    Two passes in float32 (the mean, then the mean squared deviation from it): the one-pass ``E[x^2] - E[x]^2``
    loses the variance of a channel whose mean is large against its spread (relative error 1e-3 at mean 3, std
    0.05, against 1.4e-7 in two passes; measured)."""
    xf = x.float()
    if positions is None:
        area = x.shape[2] * x.shape[3]

        def per_channel(t: torch.Tensor) -> torch.Tensor:
            return t.sum((0, 2, 3)) / area
        per_image = float(area)
    else:
        w = positions.reshape(1, *positions.shape[-2:]).float()

        def per_channel(t: torch.Tensor) -> torch.Tensor:
            return (t.sum(0) * w).sum((1, 2))
        per_image = 1.0 / float((positions.detach() ** 2).sum())
    images = x.shape[0] * (share.size if share is not None else 1)
    mean = _over_ranks(per_channel(xf), share) / images
    centred = xf - mean.view(1, -1, 1, 1)
    var = _over_ranks(per_channel(centred * centred), share) / images
    return mean, var, images * per_image


def _over_ranks(t: torch.Tensor, share: Share | None) -> torch.Tensor:
    """``t`` summed over the ranks with a ``share`` (gradients flow back to every rank's share); else ``t``."""
    return _SumOverRanks.apply(t) if share is not None else t


def batch_norm_training(x: torch.Tensor, bn: nn.modules.batchnorm._BatchNorm, gamma: torch.Tensor,
                        beta: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                        positions: torch.Tensor | None = None) -> torch.Tensor:
    """Batch norm in training mode from ``batch_moments`` (``gamma`` ... ``running_var``: ``bn``'s, or slices of
    them; over the global batch when ``bn`` is shared); updates the running statistics as ``nn.BatchNorm2d`` does
    (unbiased variance)."""
    mean, var, count = batch_moments(x, positions, share_of(bn))
    with torch.no_grad():
        m = bn.momentum if bn.momentum is not None else 0.1
        running_mean.mul_(1 - m).add_(mean.detach().to(running_mean.dtype), alpha=m)
        running_var.mul_(1 - m).add_((var.detach() * (count / max(count - 1.0, 1.0))).to(running_var.dtype),
                                     alpha=m)
        bn.num_batches_tracked += 1
    scale = gamma * torch.rsqrt(var + bn.eps)
    return torch.addcmul((beta - mean * scale).view(1, -1, 1, 1), x, scale.view(1, -1, 1, 1)).to(x.dtype)
