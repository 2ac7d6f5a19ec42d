"""From a config to a static plan: the threshold becomes per-block expert capacities by calibration.

The keep ratios fix the tokens per stage directly (``ceil(rho * n)``). For the MoE blocks, the model runs the
calibration images with per-image DiffMoE routing at the config's threshold (``DynamicViT.forward_threshold``)
and records how many tokens each expert takes; a block's capacity is that mean load, rounded to the space's
token granularity. The plan is what the ONNX graph computes and what the latency table prices.
"""

from __future__ import annotations

import torch

from nas.search.capacity.config import CapacityConfig, StaticPlan, validate_config
from nas.search.capacity.vit import DynamicViT


@torch.no_grad()
def expert_loads(model: DynamicViT, config: CapacityConfig, x_calib: torch.Tensor,
                 batch_size: int = 256) -> list[float]:
    """Mean tokens per expert in each MoE block under per-image threshold routing."""
    space = model.space
    kept = space.kept_patches(config.keep_ratios)
    model.eval()
    sums = [0.0] * len(space.moe_blocks)
    for i in range(0, len(x_calib), batch_size):
        _, loads = model.forward_threshold(x_calib[i:i + batch_size], kept, config.threshold)
        for j, load in enumerate(loads):
            sums[j] += float(load.float().mean(1).sum())
    return [s / max(len(x_calib), 1) for s in sums]


def plan_for_config(model: DynamicViT, config: CapacityConfig, x_calib: torch.Tensor) -> tuple[StaticPlan, list[float]]:
    """The static plan of ``config`` for this model, and the measured mean loads it was rounded from."""
    space = model.space
    validate_config(space, config)
    kept = space.kept_patches(config.keep_ratios)
    tokens = space.block_tokens(kept)
    loads = expert_loads(model, config, x_calib) if space.moe_blocks else []
    capacities = tuple(space.round_expert_tokens(load, tokens[b]) for load, b in zip(loads, space.moe_blocks))
    return StaticPlan(tuple(kept), capacities), loads
