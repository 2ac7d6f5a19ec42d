"""Token-count-keyed latency units of the dynamic-capacity ViT, in the same tables as every other space.

A static plan is a sum of units, each keyed by its token count (``nas.arch.opkey.OpKey``):

- ``vit_embed``   patch embedding + class token + positions (input resolution, tokens out)
- ``token_select`` patch scoring + TopK + Gather, ``tokens`` in, ``keep`` (tokens out) in extra; the learned
                  scorer's hidden width, or ``scoring=cls_attention`` and the heads for EViT's rule
- ``vit_attn``    LayerNorm + multi-head self-attention + residual, at ``tokens``
- ``vit_mlp``     LayerNorm + MLP + residual, at ``tokens``
- ``moe_route``   LayerNorm + router gates, packed ``[h | gates]``, at ``tokens``
- ``moe_expert``  a block's experts, each on ``tokens`` tokens (its capacity): TopK of the gates over the
                  pool, Gather of rows, the experts as one batched MatMul, one-hot combine MatMul

The MoE keys carry ``select=gates`` (experts rank tokens by their gates, not by the capacity predictor, since
the predictor left the exported graph), so that a table measured before then is re-profiled, not reused.
- ``vit_head``    class-token LayerNorm + classifier

The units are registered ops (``nas.search.capacity.units``) built from the model's own modules, so what is profiled is
what runs. ``capacity_profile_items`` lists every key the space's options can produce; ``profile_items`` measures
them into the device table (resumable), and ``LatencyModel.predict_keys(plan_keys(space, plan))`` predicts.
"""

from __future__ import annotations

import math

from nas.arch.opkey import OpKey, format_extra
from nas.errors import LatencyTableError
from nas.latency.device import Device
from nas.latency.model import LatencyModel, Prediction
from nas.latency.profile import ProfileItem, block_item
from nas.search.capacity.config import StaticPlan
from nas.search.capacity.space import CapacitySpace


# ---- keys ----------------------------------------------------------------------------------------------------
def embed_key(space: CapacitySpace) -> OpKey:
    s = space.spec
    stem = {"stem": s.stem_channels} if s.stem_channels else {}  # absent when 0: stem-less keys stay as they were
    return OpKey("vit_embed", space.in_channels, s.dim, resolution=s.resolution, tokens=space.tokens,
                 extra=format_extra(patch=s.patch_size, **stem))


def select_key(space: CapacitySpace, tokens_in: int, tokens_out: int) -> OpKey:
    d, pruning = space.spec.dim, space.spec.pruning
    if pruning.scoring == "cls_attention":
        extra = format_extra(heads=space.spec.heads, keep=tokens_out, scoring=pruning.scoring)
    else:  # the learned scorer's keys carry no rule, as before there was a choice
        extra = format_extra(hidden=pruning.predictor_hidden, keep=tokens_out)
    return OpKey("token_select", d, d, tokens=tokens_in, extra=extra)


def attn_key(space: CapacitySpace, tokens: int) -> OpKey:
    d = space.spec.dim
    return OpKey("vit_attn", d, d, tokens=tokens, extra=format_extra(heads=space.spec.heads))


def mlp_key(space: CapacitySpace, tokens: int) -> OpKey:
    d = space.spec.dim
    return OpKey("vit_mlp", d, d, tokens=tokens, extra=format_extra(hidden=space.mlp_hidden))


def route_key(space: CapacitySpace, tokens: int) -> OpKey:
    return OpKey("moe_route", space.spec.dim, space.spec.moe.experts, tokens=tokens, extra=format_extra(select="gates"))


def expert_key(space: CapacitySpace, expert_tokens: int) -> OpKey:
    """A block's experts, keyed by the tokens each processes. The pool they select from changes the time by
    about 1 us (measured), so the unit is profiled at the largest pool and the pool is not in the key."""
    d, m = space.spec.dim, space.spec.moe
    return OpKey("moe_expert", d, d, tokens=expert_tokens,
                 extra=format_extra(experts=m.experts, hidden=m.expert_hidden, select="gates"))


def head_key(space: CapacitySpace) -> OpKey:
    return OpKey("vit_head", space.spec.dim, space.classes, tokens=1)


def plan_keys(space: CapacitySpace, plan: StaticPlan) -> list[OpKey]:
    """The units a static plan runs, in order; their summed costs are its predicted latency."""
    tokens = space.block_tokens(list(plan.kept_patches))
    keys = [embed_key(space)]
    previous, moe = space.tokens, 0
    for b, t in enumerate(tokens):
        if t < previous:
            keys.append(select_key(space, previous, t))
        keys.append(attn_key(space, t))
        if b in space.moe_blocks:
            k = min(plan.expert_tokens[moe], t)
            if k > 0:
                keys += [route_key(space, t), expert_key(space, k)]
            moe += 1
        else:
            keys.append(mlp_key(space, t))
        previous = t
    keys.append(head_key(space))
    return keys


def _require_measured(lm: LatencyModel, space: CapacitySpace, keys: list[OpKey]) -> None:
    missing = [k for k in keys if lm.is_estimated(k)]
    if missing:
        raise LatencyTableError(
            f"device {lm.device_id!r} has no measurement for {missing[0].op} at {missing[0].tokens} tokens "
            f"(key {missing[0]}{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}) and the fallback "
            f"is disabled; run `hwnas latency profile-capacity --space {space.path} --device {lm.device_id}`")


def predict_plan(lm: LatencyModel, space: CapacitySpace, plan: StaticPlan) -> Prediction:
    """Predicted batch-1 latency of a plan on the model's device (``LatencyTableError`` for a missing key
    when the fallback is disabled)."""
    keys = plan_keys(space, plan)
    if not lm.allow_fallback:
        _require_measured(lm, space, keys)
    return lm.predict_keys(keys)


def require_space_covered(lm: LatencyModel, space: CapacitySpace) -> None:
    """With the fallback disabled, ``LatencyTableError`` unless the table holds every unit any config of the
    space can run; a search checks this before it starts, so it cannot fail halfway on a missing token count."""
    if not lm.allow_fallback:
        _require_measured(lm, space, space_keys(space))


# ---- profile items -------------------------------------------------------------------------------------------
def unit_item(space: CapacitySpace, key: OpKey) -> ProfileItem:
    """The module and input shapes that measure ``key`` (registered in ``nas.search.capacity.units``; fresh random
    weights: latency does not depend on them). Experts are timed selecting from the space's largest pool."""
    return block_item(key, pool=space.tokens)


def space_keys(space: CapacitySpace) -> list[OpKey]:
    """Every unit key the space's keep-ratio options and per-expert capacities can produce."""
    keys: dict[str, OpKey] = {}

    def add(key: OpKey) -> None:
        keys.setdefault(str(key), key)

    add(embed_key(space))
    per_block = space.reachable_block_tokens()
    ratios = space.spec.pruning.keep_ratio_options
    for b, tokens in enumerate(per_block):
        if b in space.stages:
            entering = per_block[b - 1]
            for t_in in sorted(entering):
                for r in ratios:
                    t_out = 1 + max(1, math.ceil(r * (t_in - 1) - 1e-9))
                    if t_out < t_in:
                        add(select_key(space, t_in, t_out))
        for t in sorted(tokens):
            add(attn_key(space, t))
            if b in space.moe_blocks:
                add(route_key(space, t))
                for k in space.expert_token_options(t):
                    add(expert_key(space, k))
            else:
                add(mlp_key(space, t))
    add(head_key(space))
    return list(keys.values())


def capacity_profile_items(space: CapacitySpace) -> list[ProfileItem]:
    return [unit_item(space, key) for key in space_keys(space)]


# ---- whole-model calibration (the device's correction) -------------------------------------------------------
def calibration_plans(space: CapacitySpace, count: int, seed: int = 12345) -> list[StaticPlan]:
    """Plans to measure whole (all in the table): no pruning at full capacity, the cheapest, plans that prune
    only some stages or skip the experts (so the number of units varies), then random ones."""
    import numpy as np

    rng = np.random.default_rng(seed)
    options = space.spec.pruning.keep_ratio_options
    experts = space.spec.moe.experts
    stages = len(space.stages)

    def plan(ratios, factor):
        kept = space.kept_patches(ratios)
        tokens = space.block_tokens(kept)
        return StaticPlan(tuple(kept), tuple(space.round_expert_tokens(factor * tokens[b] / experts, tokens[b])
                                             for b in space.moe_blocks))

    low = min(options)
    plans = [plan([1.0] * stages, 2.0), plan([low] * stages, 0.5), plan([1.0] * stages, 0.0),
             plan([low] + [1.0] * (stages - 1), 1.0), plan([1.0] * (stages - 1) + [low], 1.5)]
    seen = {p for p in plans}
    while len(plans) < count:
        p = plan(list(rng.choice(options, stages)), float(rng.choice([0.0, 0.5, 1.0, 1.5, 2.0])))
        if p not in seen or len(seen) >= 4 * count:
            plans.append(p)
            seen.add(p)
    return plans[:count]


def calibrate_capacity(device: Device, space: CapacitySpace, *, models: int = 10, tables_dir=None,
                       on_progress=None):
    """Measure ``models`` whole plans of ``space`` on ``device`` (the set-up its table was profiled with) into its
    calibration set and refit its correction.

    The correction (``base + scale * net + per_block``, see ``nas.latency.correction``) is one per device,
    fitted over every calibration model of every space measured on it (``nas.latency.calibrate.calibrate_models``:
    the table's own set-up, plans timed interleaved). Plans already measured are skipped.
    """
    import json

    from nas.latency.calibrate import CalibrationModel, calibrate_models, profiled_table
    from nas.search.capacity.export import export_plan
    from nas.search.capacity.vit import DynamicViT

    model = DynamicViT(space).eval()  # latency does not depend on the weights
    to_measure = [CalibrationModel(
        json.dumps({"space": space.name, "fingerprint": space.fingerprint(), **space.space_args(), **plan.to_dict()},
                   sort_keys=True),
        space.name, space.space_args(), plan.to_dict(), plan_keys(space, plan),
        lambda path, plan=plan: export_plan(model, plan, path)) for plan in calibration_plans(space, models)]
    return calibrate_models(profiled_table(device, tables_dir), to_measure, on_progress=on_progress)
