"""Mixture-of-experts MLP blocks with dynamic capacity, after DiffMoE (Shi et al., 2025).

Training: the tokens of the whole batch form one global pool. Each expert chooses the ``C`` pool tokens with
the highest router affinity (expert-choice routing, ``C = capacity * pool / experts``, the capacity factor
sampled per batch), so hard images can get more expert compute than easy ones. A capacity predictor, a small
MLP on the (detached) token features, learns which tokens each expert chose.

Inference: there is no batch pool. Each expert of a block processes the ``k`` tokens of the image with the
highest router gates, the criterion it chose by in training (TopK, a Gather of rows, the experts as one
batched MatMul, a one-hot MatMul that sums the gated outputs back onto their tokens). ``k`` comes from the
threshold: it is the mean number of tokens per expert whose predicted probability exceeds it, measured on
calibration images (``nas.search.capacity.planning``), so a lower threshold means more tokens per expert, more
compute and usually more accuracy. Per-image variable loads (``forward_threshold``) are what DiffMoE runs; the
exported graph fixes the calibrated mean so its latency is static and predictable.

The capacity predictor decides how many tokens each expert takes, not which: within an image, ranking tokens by
the predicted probability can only approximate ranking them by the gate (a token is chosen in training when its
gate is among the pool's highest), so the exported graph ranks by the gates and leaves the predictor out. At
dim 64 that is 12-15% of an MoE block's ONNX Runtime latency at batch 1 (measured at 25-101 tokens).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MoERoute(nn.Module):
    """LayerNorm, router gates (softmax over experts) and capacity-predictor logits, one per token and expert.

    ``forward`` is the inference route: ``[h | gates]`` packed into one tensor (B x T x (D + E)), so that the route
    and the experts are two single-input, single-output units of the latency table, exactly as in the model. The
    predictor's logits (``parts``) serve training and the threshold's calibration only.
    """

    def __init__(self, dim: int, experts: int, predictor_hidden: int = 32):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.router = nn.Linear(dim, experts)
        self.predictor = nn.Sequential(nn.Linear(dim, predictor_hidden), nn.GELU(),
                                       nn.Linear(predictor_hidden, experts))

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.norm(x)
        return h, self.router(h).softmax(-1), self.predictor(h.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return torch.cat([h, self.router(h).softmax(-1)], -1)


class Experts(nn.Module):
    """``experts`` two-layer GELU MLPs with stacked weights, applied to inputs of shape (..., experts, n, dim)."""

    def __init__(self, experts: int, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(experts, dim, hidden))
        self.b1 = nn.Parameter(torch.zeros(experts, 1, hidden))
        self.w2 = nn.Parameter(torch.empty(experts, hidden, dim))
        self.b2 = nn.Parameter(torch.zeros(experts, 1, dim))
        nn.init.trunc_normal_(self.w1, std=0.02)
        nn.init.trunc_normal_(self.w2, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x @ self.w1 + self.b1) @ self.w2 + self.b2


class ExpertChoice(nn.Module):
    """Inference: every expert takes the ``k`` tokens with its highest gates; returns the gated, scattered-back sum.

    Input: the packed route output ``[h | gates]``; output: B x T x D (zero for untaken tokens).
    """

    def __init__(self, experts: Experts, k: int):
        super().__init__()
        self.experts = experts
        self.k = k

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        e, d = self.experts.w1.shape[:2]  # weight shapes: the slices get constant bounds in the graph
        h, gates = packed[..., :d], packed[..., d:d + e]
        b, t = h.shape[0], h.shape[1]
        gate, idx = gates.transpose(1, 2).topk(min(self.k, t), dim=2)  # B x E x k: each expert's chosen tokens
        # dispatch: one Gather of whole rows on a flattened index; combine: a one-hot MatMul. ONNX Runtime runs
        # both faster at batch 1 than Expand + GatherElements + ScatterElements-add (the combine adds the same
        # terms: each expert takes a token at most once)
        tokens = h.reshape(-1, d)[(idx + torch.arange(b, device=h.device)[:, None, None] * t).reshape(-1)]
        y = self.experts(tokens.reshape(b, e, -1, d)) * gate[..., None]
        combine = (idx.reshape(b, -1, 1) == torch.arange(t, device=h.device)).to(h.dtype)  # B x E*k x T
        return combine.transpose(1, 2) @ y.reshape(b, -1, d)  # B x T x D


class MoEBlock(nn.Module):
    """``x + sum_e gate_e * expert_e(LN(x))`` over the tokens each expert takes."""

    def __init__(self, dim: int, experts: int, expert_hidden: int, predictor_hidden: int):
        super().__init__()
        self.route = MoERoute(dim, experts, predictor_hidden)
        self.experts = Experts(experts, dim, expert_hidden)

    @property
    def num_experts(self) -> int:
        return self.experts.w1.shape[0]

    def forward_pool(self, x: torch.Tensor, keep: torch.Tensor, capacity: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: expert-choice routing over the batch-level pool of kept tokens.

        Returns the block output and the capacity predictor's BCE loss against the experts' choices.
        """
        b, t, d = x.shape
        h, gates, pred_logits = self.route.parts(x)
        flat_h, flat_g = h.reshape(b * t, d), gates.reshape(b * t, -1)
        valid = keep.reshape(-1) > 0.5
        n_valid = int(valid.sum())
        experts = self.num_experts
        per_expert = max(1, min(n_valid, math.ceil(capacity * n_valid / experts)))
        choose = flat_g.detach().masked_fill(~valid[:, None], float("-inf")).t()  # E x N
        idx = choose.topk(per_expert, dim=1).indices  # E x C
        y = self.experts(flat_h[idx]) * torch.gather(flat_g.t(), 1, idx)[..., None]
        out = torch.zeros_like(flat_h).index_add(0, idx.reshape(-1), y.reshape(-1, d))
        chosen = torch.zeros_like(choose).scatter(1, idx, 1.0).t()
        pred_loss = F.binary_cross_entropy_with_logits(pred_logits.reshape(b * t, -1)[valid], chosen[valid])
        return x + out.reshape(b, t, d), pred_loss

    def forward_static(self, x: torch.Tensor, expert_tokens: int) -> torch.Tensor:
        """Inference with ``expert_tokens`` tokens per expert, chosen by their gates."""
        if expert_tokens <= 0:  # no expert takes a token: the block is the identity
            return x
        return x + ExpertChoice(self.experts, expert_tokens)(self.route(x))

    @torch.no_grad()
    def forward_threshold(self, x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image DiffMoE inference: each expert processes exactly the tokens whose predicted probability
        exceeds ``threshold``. Returns the output and the per-image, per-expert loads (B x E)."""
        h, gates, scores = self.route.parts(x)
        take = torch.sigmoid(scores) > threshold  # B x T x E
        e = self.num_experts
        y = self.experts(h[:, None].expand(-1, e, -1, -1))  # B x E x T x D (dense; calibration only)
        weight = (gates * take).transpose(1, 2)[..., None]
        return x + (y * weight).sum(1), take.sum(1)
