"""The latency-aware search loss and the controller that steers it to a latency target.

FBNet's loss is ``CE * alpha * (log LAT) ** beta``. There ``alpha`` only scales the loss (a no-op for Adam) and the
accuracy / latency trade-off hides in the unit LAT is expressed in. We make that unit explicit:

    loss = CE * (1 + alpha * log(LAT / LAT_min)) ** beta  =  CE * alpha**beta * (log(LAT / u)) ** beta,

i.e. the paper's loss with latency measured in units ``u = LAT_min * exp(-1 / alpha)`` (``LAT_min``: the fastest arch
of the space on the device, so the log is positive). ``beta`` keeps its meaning; ``alpha`` becomes the trade-off:
the relative weight of latency, ``d log(loss) / d log(LAT) = alpha * beta / (1 + alpha * log(LAT / LAT_min))``,
grows with ``alpha``, so a larger ``alpha`` finds faster archs. ``alpha = 0`` ignores latency.
"""

from __future__ import annotations

import math

import torch


def latency_factor(lat_ms: torch.Tensor, min_ms: float, alpha: float, beta: float) -> torch.Tensor:
    ratio = torch.clamp(lat_ms / min_ms, min=1.0)
    return (1.0 + alpha * torch.log(ratio)) ** beta


def search_loss(ce: torch.Tensor, lat_ms: torch.Tensor, min_ms: float, alpha: float, beta: float) -> torch.Tensor:
    return ce * latency_factor(lat_ms, min_ms, alpha, beta)


class TargetController:
    """Steers ``alpha`` after every architecture step so that the searched arch's latency approaches the target.

    A proportional-integral controller in log space on ``e = log(LAT / target)``:
    ``log alpha = I + p_gain * e`` with ``I += i_gain * e`` (clipped to ``alpha0 * exp(+-window)`` against windup).
    Above the target the latency weight grows, below it shrinks, and the proportional part reverses the push as soon
    as the latency crosses the target.
    """

    def __init__(self, target_ms: float, alpha: float, i_gain: float = 0.15, p_gain: float = 2.0,
                 window: float = 6.0):
        self.target_ms, self.i_gain, self.p_gain = target_ms, i_gain, p_gain
        base = math.log(max(alpha, 1e-3))
        self.lo, self.hi = base - window, base + window
        self.integral = base
        self.alpha = alpha

    def update(self, latency_ms: float) -> float:
        error = math.log(max(latency_ms, 1e-9) / self.target_ms)
        self.integral = min(max(self.integral + self.i_gain * error, self.lo), self.hi)
        self.alpha = float(math.exp(min(max(self.integral + self.p_gain * error, self.lo), self.hi)))
        return self.alpha

    def state(self) -> dict:
        return {"integral": self.integral, "alpha": self.alpha}

    def load(self, state: dict) -> None:
        self.integral, self.alpha = float(state["integral"]), float(state["alpha"])
