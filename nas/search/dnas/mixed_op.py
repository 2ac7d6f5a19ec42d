"""A searchable layer: its candidate blocks, mixed by the weights of one Gumbel sample.

With all paths (FBNet DNAS) every candidate runs and the output is ``sum_i w_i * op_i(x)``. With sampled paths only
the candidates in ``sample.active`` run (one under hard straight-through Gumbel, so a step costs about one model).
"""

from __future__ import annotations

import torch
from torch import nn

from nas.search.gumbel import DecisionSample


class MixedOp(nn.Module):
    def __init__(self, candidates: list[nn.Module]):
        super().__init__()
        self.candidates = nn.ModuleList(candidates)

    def forward(self, x: torch.Tensor, sample: DecisionSample) -> torch.Tensor:
        active = range(len(self.candidates)) if sample.active is None else sample.active
        out = None
        for i in active:
            y = self.candidates[i](x) * sample.weights[i]
            out = y if out is None else out + y
        return out
