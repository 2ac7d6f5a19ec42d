"""The dynamic-capacity vision transformer: one set of weights, run with any config of its space.

``forward_train`` is the once-for-all training path (Gumbel token masks with attention masking, batch-pool
expert choice); ``forward(x, plan)`` is the inference path that exports to ONNX (TopK/Gather token pruning,
static per-expert capacities); ``forward_threshold`` is per-image DiffMoE inference, used for calibration.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nas.search.capacity.blocks import (
    AttentionBlock,
    ClassAttentionScorer,
    Head,
    MlpBlock,
    PatchEmbed,
    TokenScorer,
    TokenSelect,
    gumbel_topk_keep,
    topk_keep,
)
from nas.search.capacity.config import StaticPlan, full_plan
from nas.search.capacity.moe import MoEBlock
from nas.search.capacity.space import CapacitySpace


class DynamicViT(nn.Module):
    def __init__(self, space: CapacitySpace):
        super().__init__()
        s = space.spec
        self.space = space
        self.input_shape = space.input_shape
        self.embed = PatchEmbed(space.in_channels, s.dim, s.patch_size, space.patches, s.stem_channels)
        self.attn = nn.ModuleList(AttentionBlock(s.dim, s.heads) for _ in range(s.depth))
        self.mlp = nn.ModuleList(
            MoEBlock(s.dim, s.moe.experts, s.moe.expert_hidden, s.moe.predictor_hidden)
            if b in space.moe_blocks else MlpBlock(s.dim, space.mlp_hidden, s.dropout) for b in range(s.depth))
        self.learned_scoring = s.pruning.scoring == "learned"
        self.scorers = nn.ModuleList(
            TokenScorer(s.dim, s.pruning.predictor_hidden) if self.learned_scoring else ClassAttentionScorer(self.attn[b])
            for b in space.stages)
        self.head = Head(s.dim, space.classes, s.dropout)
        self.apply(_init_weights)

    def _stage_at(self, block: int) -> int | None:
        stages = self.space.stages
        return stages.index(block) if block in stages else None

    # ---- training: masks keep the batch rectangular --------------------------------------------------------
    def forward_train(self, x: torch.Tensor, keep_ratios, capacity: float,
                      generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the summed capacity-predictor loss for one sampled config."""
        x = self.embed(x)
        keep = torch.ones(x.shape[:2], dtype=x.dtype)
        pruned = False
        n_kept = self.space.patches
        aux = x.new_zeros(())
        for b in range(len(self.attn)):
            stage = self._stage_at(b)
            if stage is not None:
                k = max(1, math.ceil(keep_ratios[stage] * n_kept - 1e-9))
                if k < n_kept:
                    scores = self.scorers[stage](x, keep if pruned else None)
                    kept = gumbel_topk_keep(scores, keep[:, 1:], k, generator) if self.learned_scoring else \
                        topk_keep(scores, keep[:, 1:], k)
                    keep = torch.cat([keep[:, :1], kept], 1)
                    pruned = True
                n_kept = k
            x = self.attn[b](x, keep if pruned else None)
            if isinstance(self.mlp[b], MoEBlock):
                x, loss = self.mlp[b].forward_pool(x, keep, capacity)
                aux = aux + loss
            else:
                x = self.mlp[b](x)
        return self.head(x), aux

    # ---- inference: tokens are really removed ----------------------------------------------------------------
    def forward(self, x: torch.Tensor, plan: StaticPlan | None = None, select=None) -> torch.Tensor:
        """The model at ``plan``; ``select(x, stage, block, keep)`` keeps ``keep`` patches at a pruning stage
        (default: the learned scorers' top ones, ``TokenSelect``; ``diagnostics.SelectingViT`` passes others)."""
        plan = plan or full_plan(self.space)
        select = select or self._select
        x = self.embed(x)
        moe = 0
        for b in range(len(self.attn)):
            stage = self._stage_at(b)
            if stage is not None:
                x = select(x, stage, b, plan.kept_patches[stage])
            x = self.attn[b](x)
            if isinstance(self.mlp[b], MoEBlock):
                x = self.mlp[b].forward_static(x, plan.expert_tokens[moe])
                moe += 1
            else:
                x = self.mlp[b](x)
        return self.head(x)

    def _select(self, x: torch.Tensor, stage: int, block: int, keep: int) -> torch.Tensor:
        return TokenSelect(self.scorers[stage], keep)(x)

    @torch.no_grad()
    def forward_threshold(self, x: torch.Tensor, kept_patches, threshold: float) -> tuple[torch.Tensor, list]:
        """Per-image DiffMoE inference at ``threshold``; also returns each MoE block's per-image expert loads."""
        x = self.embed(x)
        loads = []
        for b in range(len(self.attn)):
            stage = self._stage_at(b)
            if stage is not None:
                x = TokenSelect(self.scorers[stage], kept_patches[stage])(x)
            x = self.attn[b](x)
            if isinstance(self.mlp[b], MoEBlock):
                x, load = self.mlp[b].forward_threshold(x, threshold)
                loads.append(load)
            else:
                x = self.mlp[b](x)
        return self.head(x), loads


class ConfiguredViT(nn.Module):
    """A DynamicViT fixed to one static plan: ``forward(x)`` only, for ONNX export and plain evaluation."""

    def __init__(self, model: DynamicViT, plan: StaticPlan):
        super().__init__()
        self.model = model
        self.plan = plan
        self.input_shape = model.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.plan)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
