"""Why a dynamic config does or does not beat a dense model: figures on what the method learned and what it costs.

- ``selection_accuracy``: the model at a plan with its own token scoring (the space's rule, as exported) replaced
  by random scores, or by EViT's rule (the class token's attention). The gap to random is what the keep decisions
  are worth (none: the scorers did not learn which tokens matter); for a model with learned scorers, a gain from the
  class token's attention says that rule is the better one (``pruning.scoring: cls_attention``).
- ``expert_choice_overlap``: how often the capacity predictor's ranking of tokens agrees with the router gates'
  (the exported graph ranks by the gates; see ``nas.search.capacity.moe``).
- ``latency_breakdown``: a plan's predicted latency split by unit kind (embedding and head, blocks at full token
  count, blocks after pruning, token selection, MoE routing and experts), from the device's token-count table:
  how much of the latency token pruning can reach at all.
"""

from __future__ import annotations

import torch
from torch import nn

from nas.data.splits import Split
from nas.latency.model import LatencyModel
from nas.search.capacity.blocks import ClassAttentionScorer, TokenSelect
from nas.search.capacity.config import StaticPlan
from nas.search.capacity.latency import plan_keys
from nas.search.capacity.moe import MoEBlock
from nas.search.capacity.space import CapacitySpace
from nas.search.capacity.vit import DynamicViT
from nas.train.evaluation import split_accuracy


SELECTIONS = ("own", "random", "cls_attention")


class SelectingViT(nn.Module):
    """``model`` at ``plan`` with another rule choosing the kept patches at each pruning stage: ``own`` (the
    model's own scoring, as exported), ``random`` (uniform scores from a seeded generator) or ``cls_attention``
    (EViT's rule: the patches the class token attends to most in the block that follows, mean over heads)."""

    def __init__(self, model: DynamicViT, plan: StaticPlan, how: str, seed: int = 0):
        super().__init__()
        if how not in SELECTIONS:
            raise ValueError(f"selection {how!r} is not one of {', '.join(SELECTIONS)}")
        self.model, self.plan, self.how = model, plan, how
        self.input_shape = model.input_shape
        self.generator = torch.Generator().manual_seed(seed)

    def scores(self, x: torch.Tensor, stage: int, block: int) -> torch.Tensor:
        if self.how == "own":
            return self.model.scorers[stage](x)
        if self.how == "random":
            return torch.rand(x.shape[0], x.shape[1] - 1, generator=self.generator)
        return ClassAttentionScorer(self.model.attn[block])(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.plan, select=self._select)

    def _select(self, x: torch.Tensor, stage: int, block: int, keep: int) -> torch.Tensor:
        if keep >= x.shape[1] - 1:
            return x
        idx = self.scores(x, stage, block).topk(keep, dim=1).indices
        return torch.cat([x[:, :1], torch.gather(x[:, 1:], 1, idx[..., None].expand(-1, -1, x.shape[-1]))], 1)


def selection_accuracy(model: DynamicViT, plan: StaticPlan, split: Split, how: str, seed: int = 0) -> float:
    """Accuracy of ``model`` at ``plan`` when the kept patches are chosen by ``how`` (see ``SelectingViT``); the class
    token is always kept and the model itself is not changed."""
    return split_accuracy(SelectingViT(model, plan, how, seed), split)


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
