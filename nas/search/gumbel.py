"""Gumbel-softmax relaxations of categorical choices, and the one temperature schedule (exponential annealing).

``gumbel_perturb`` is the one place Gumbel noise is drawn (DNAS and DMasking decisions, the mixed-precision bit
mixture, the capacity search's token top-k); the argmax (top-k) of perturbed logits is a sample (without
replacement) from ``softmax(logits)``. It draws from ``torch.rand`` (the global generator unless one is given),
so seeded runs repeat exactly.

- soft: ``softmax((logits + g) / tau)``; every candidate gets a weight (all paths run).
- hard (straight-through): the value is one-hot at ``argmax(logits + g)``, the gradient is the soft one's, so only the
  sampled candidate has to run (as in GDAS); the gradient still reaches every logit through the softmax.
- top-k sampled paths: the ``k`` largest perturbed logits run, weighted by their soft weights renormalised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DecisionSample:
    """Weights for one decision's candidates and which candidates must run (``None``: all of them)."""

    weights: torch.Tensor
    active: list[int] | None = None


def gumbel_perturb(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``logits`` plus standard Gumbel noise, ``-log(-log(u))`` with ``u ~ U(0, 1)`` (on the logits' device)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-10, 1.0 - 1e-7)
    return logits - torch.log(-torch.log(u))


def soft_weights(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """The soft Gumbel-softmax sample ``softmax((logits + g) / tau)`` over the last dimension."""
    return torch.softmax(gumbel_perturb(logits) / tau, dim=-1)


def sample_decision(logits: torch.Tensor, tau: float, paths: int | None) -> DecisionSample:
    """Gumbel-softmax sample of one decision. ``paths=None``: soft, all run; ``1``: hard straight-through; ``k``: top-k."""
    if logits.numel() == 1:
        return DecisionSample(torch.ones_like(logits), [0])
    perturbed = gumbel_perturb(logits)
    soft = torch.softmax(perturbed / tau, dim=-1)
    if paths is None:
        return DecisionSample(soft, None)
    if paths == 1:
        index = int(torch.argmax(perturbed.detach()))
        hard = torch.zeros_like(soft)
        hard[index] = 1.0
        return DecisionSample(hard - soft.detach() + soft, [index])
    top = torch.topk(perturbed.detach(), min(paths, logits.numel())).indices
    keep = torch.zeros_like(soft)
    keep[top] = 1.0
    kept = soft * keep
    return DecisionSample(kept / kept.sum(), sorted(int(i) for i in top))


def one_hot_decision(size: int, index: int) -> DecisionSample:
    w = torch.zeros(size)
    w[index] = 1.0
    return DecisionSample(w, [index])


@dataclass(frozen=True)
class TemperatureSchedule:
    """The Gumbel-softmax temperature of every search: ``initial * decay ** epoch``, FBNet's schedule (5.0 and 0.956
    in the paper); ``between`` gives the same curve from a start to an end temperature over a number of epochs (the
    bit-width search's)."""

    initial: float = 5.0
    decay: float = 0.956

    @classmethod
    def between(cls, start: float, end: float, epochs: int) -> "TemperatureSchedule":
        """``start`` at the first epoch, ``end`` at the last (``end`` throughout for a single epoch)."""
        if epochs <= 1:
            return cls(end, 1.0)
        return cls(start, (end / start) ** (1.0 / (epochs - 1)))

    def at(self, epoch: int) -> float:
        return float(self.initial * self.decay ** epoch)
