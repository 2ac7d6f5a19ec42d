"""The resolution decision's accuracy signal when one sampled resolution runs per step (DMasking's default).

Running one resolution per step keeps a step as cheap as the child network at that size, but it leaves one path from
the loss to the resolution's logits: the straight-through weight (value 1) that scales the output logits. Its
gradient says whether sharper logits would lower the loss of this batch, not which resolution classifies better, and
Adam turns a gradient of steady sign into a full step whatever its size (on all 70,000 Fashion-MNIST images, one
architecture epoch of that signal took the smallest resolution from 0.33 to 0.999 with the latency weight near 0).

Instead the scale carries no gradient, every step draws its resolution uniformly (the supernet trains every
resolution alike, so that their losses compare), and each resolution's validation loss is kept as a running mean of
the steps that ran it, from the warm-up on. The arch loss then holds the expected
loss ``sum_r p_r * L_r``, whose gradient ``p_r (L_r - E[L])`` compares the resolutions by what they measured.
"""

from __future__ import annotations

import torch


class ResolutionLosses:
    """Running mean validation loss of every resolution option: a plain mean over its first ``1 / rate`` steps,
    then an exponential mean with weight ``rate`` (the supernet's weights keep training, so old steps fade)."""

    def __init__(self, options: int, rate: float = 0.03):
        self.rate = rate
        self.loss: list[float | None] = [None] * options
        self.steps = [0] * options

    def observe(self, option: int, loss: float) -> None:
        self.steps[option] += 1
        weight = max(1.0 / self.steps[option], self.rate)
        old = self.loss[option]
        self.loss[option] = loss if old is None else old + weight * (loss - old)

    def expected(self, probs: torch.Tensor) -> torch.Tensor:
        """``sum_r p_r L_r``, differentiable in ``probs``; a resolution never run counts at the mean of those run
        (no push either way), and with none run the term is 0."""
        known = [v for v in self.loss if v is not None]
        if not known:
            return probs.sum() * 0
        fill = sum(known) / len(known)
        losses = torch.tensor([fill if v is None else v for v in self.loss], dtype=probs.dtype, device=probs.device)
        return (probs * losses).sum()

    def state(self) -> dict:
        return {"loss": self.loss, "steps": self.steps}

    def load(self, state: dict) -> None:
        self.loss = [None if v is None else float(v) for v in state["loss"]]
        self.steps = [int(v) for v in state["steps"]]
