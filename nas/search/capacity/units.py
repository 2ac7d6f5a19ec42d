"""The builders of the dynamic-capacity ViT's token-count-keyed latency units (registered without torch in
``nas.arch.builtin_ops``).

Each unit is built from its key alone (dimension = ``c_in``, token count = ``tokens``, the rest in ``extra``; see
``nas.search.capacity.latency`` for the keys), out of the model's own modules, so what is profiled is what runs.
"""

from __future__ import annotations

from torch import nn

from nas.arch.opkey import OpKey
from nas.arch.ops import OpSpec
from nas.search.capacity.blocks import (
    AttentionBlock,
    ClassAttentionScorer,
    Head,
    MlpBlock,
    PatchEmbed,
    TokenScorer,
    TokenSelect,
)
from nas.search.capacity.moe import ExpertChoice, Experts, MoERoute


def build_embed(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    return PatchEmbed(key.c_in, key.c_out, key.int_arg("patch"), key.tokens - 1, int(key.extra_args().get("stem", 0)))


def build_token_select(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    if key.extra_args().get("scoring") == "cls_attention":
        scorer = ClassAttentionScorer(AttentionBlock(key.c_in, key.int_arg("heads")))
    else:
        scorer = TokenScorer(key.c_in, key.int_arg("hidden"))
    return TokenSelect(scorer, key.int_arg("keep") - 1)


def build_attention(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    return AttentionBlock(key.c_in, key.int_arg("heads"))


def build_mlp(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    return MlpBlock(key.c_in, key.int_arg("hidden"))


def build_moe_route(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    return MoERoute(key.c_in, key.c_out)  # the capacity predictor is not in its graph


def build_experts(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    return ExpertChoice(Experts(key.int_arg("experts"), key.c_in, key.int_arg("hidden")), key.tokens)


def build_head(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    return Head(key.c_in, key.c_out)
