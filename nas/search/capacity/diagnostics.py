"""Why a dynamic config does or does not beat a dense model: figures on what the method learned and what it costs.

- ``random_selection_accuracy``: the model at a plan with its token scorers replaced by random scores. The gap to
  ``plan_accuracy`` is what the learned keep decisions (DynamicViT's prediction modules) are worth; no gap means
  the scorers did not learn which tokens matter.
- ``expert_choice_overlap``: how often the capacity predictor's ranking of tokens agrees with the router gates'
  (the exported graph ranks by the gates; see ``nas.search.capacity.moe``).
- ``latency_breakdown``: a plan's predicted latency split by unit kind (embedding and head, blocks at full token
  count, blocks after pruning, token selection, MoE routing and experts), from the device's token-count table:
  how much of the latency token pruning can reach at all.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from nas.data.splits import Split
from nas.latency.model import LatencyModel
from nas.search.capacity.blocks import TokenSelect
from nas.search.capacity.config import StaticPlan
from nas.search.capacity.latency import plan_keys
from nas.search.capacity.moe import MoEBlock
from nas.search.capacity.space import CapacitySpace
from nas.search.capacity.training import plan_accuracy
from nas.search.capacity.vit import DynamicViT


class RandomScorer(nn.Module):
    """A stand-in for a ``TokenScorer``: uniform random scores from its own seeded generator."""

    def __init__(self, seed: int):
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, patches: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return torch.rand(patches.shape[:2], generator=self.generator).to(patches.device, patches.dtype)


def random_selection_accuracy(model: DynamicViT, plan: StaticPlan, split: Split, seed: int = 0) -> float:
    """Accuracy of ``model`` at ``plan`` when each pruning stage keeps random tokens instead of its scorer's top
    ones (the class token is always kept); the model itself is not changed."""
    probe = copy.deepcopy(model)
    probe.scorers = nn.ModuleList(RandomScorer(seed + i) for i in range(len(model.scorers)))
    return plan_accuracy(probe, plan, split)


@torch.no_grad()
def expert_choice_overlap(model: DynamicViT, x: torch.Tensor, kept_patches, expert_tokens) -> list[float]:
    """Per MoE block, the mean share of each expert's ``k`` tokens (its capacity in the plan) that the capacity
    predictor's top ``k`` and the router gates' top ``k`` have in common, over the images ``x``."""
    model.eval()
    h = model.embed(x)
    shares, moe = [], 0
    for b in range(len(model.attn)):
        stage = model._stage_at(b)
        if stage is not None:
            h = TokenSelect(model.scorers[stage], kept_patches[stage])(h)
        h = model.attn[b](h)
        block = model.mlp[b]
        if isinstance(block, MoEBlock):
            k = min(int(expert_tokens[moe]), h.shape[1])
            moe += 1
            if k > 0:
                _, gates, scores = block.route.parts(h)
                by_gate = gates.transpose(1, 2).topk(k, dim=2).indices
                by_score = scores.transpose(1, 2).topk(k, dim=2).indices
                common = (by_gate[..., :, None] == by_score[..., None, :]).any(-1).float()
                shares.append(float(common.mean()))
            else:
                shares.append(float("nan"))
            h = block.forward_static(h, k)
        else:
            h = block(h)
    return shares


def latency_breakdown(lm: LatencyModel, space: CapacitySpace, plan: StaticPlan) -> dict[str, float]:
    """A plan's predicted ms by part: ``base`` (the device's per-model overhead), ``embed+head``,
    ``blocks at full tokens`` (before the first pruning stage), ``blocks after pruning`` (attention and MLPs),
    ``token select``, ``moe route`` and ``moe experts``; they sum to the prediction. Blocks count as pruned from
    the first stage that drops a token on."""
    parts = {"base": lm.base_ms, "embed+head": 0.0, "blocks at full tokens": 0.0, "blocks after pruning": 0.0,
             "token select": 0.0, "moe route": 0.0, "moe experts": 0.0}
    pruned = False
    for key in plan_keys(space, plan):
        ms = lm.block_cost_ms(key)
        if key.op == "token_select":
            pruned = True
            parts["token select"] += ms
        elif key.op in ("vit_embed", "vit_head"):
            parts["embed+head"] += ms
        elif key.op == "moe_route":
            parts["moe route"] += ms
        elif key.op == "moe_expert":
            parts["moe experts"] += ms
        else:
            parts["blocks after pruning" if pruned else "blocks at full tokens"] += ms
    return parts
