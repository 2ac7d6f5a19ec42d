"""The dynamic-capacity ViT's token-count-keyed latency units, registered in the op registry (``nas.arch.ops``).

Each unit is built from its key alone (dimension = ``c_in``, token count = ``tokens``, the rest in ``extra``; see
``nas.search.capacity.latency`` for the keys), out of the model's own modules, so what is profiled is what runs. The
experts unit also takes the ``pool`` of tokens its experts select from (default: its own token count). The units
have no analytic cost (the fallback uses their measured MACs and params) and form the latency family ``token``.
"""

from __future__ import annotations

from nas.arch.opkey import OpKey
from nas.arch.ops import OpSpec, register_op
from nas.search.capacity.blocks import AttentionBlock, Head, MlpBlock, PatchEmbed, TokenScorer, TokenSelect
from nas.search.capacity.moe import ExpertChoice, Experts, MoERoute


def _arg(key: OpKey, name: str) -> int:
    return int(key.extra_args()[name])


def _tokens(spec: OpSpec, key: OpKey, **options) -> tuple[tuple[int, ...], ...]:
    return ((1, key.tokens, key.c_in),)


def _embed(spec: OpSpec, key: OpKey, **options) -> PatchEmbed:
    return PatchEmbed(key.c_in, key.c_out, _arg(key, "patch"), key.tokens - 1, int(key.extra_args().get("stem", 0)))


def _experts(spec: OpSpec, key: OpKey, **options) -> ExpertChoice:
    return ExpertChoice(Experts(_arg(key, "experts"), key.c_in, _arg(key, "hidden")), key.tokens)


def _experts_input(spec: OpSpec, key: OpKey, pool: int | None = None, **options) -> tuple[tuple[int, ...], ...]:
    """Expert choice reads the routed tokens packed ``[h | gates]``: ``dim + experts`` wide."""
    return ((1, pool or key.tokens, key.c_in + _arg(key, "experts")),)


register_op("vit_embed", family="token", build=_embed)
register_op("token_select", family="token", input_shapes=_tokens,
            build=lambda spec, key, **options: TokenSelect(TokenScorer(key.c_in, _arg(key, "hidden")),
                                                           _arg(key, "keep") - 1))
register_op("vit_attn", family="token", input_shapes=_tokens,
            build=lambda spec, key, **options: AttentionBlock(key.c_in, _arg(key, "heads")))
register_op("vit_mlp", family="token", input_shapes=_tokens,
            build=lambda spec, key, **options: MlpBlock(key.c_in, _arg(key, "hidden")))
register_op("moe_route", family="token", input_shapes=_tokens,
            build=lambda spec, key, **options: MoERoute(key.c_in, key.c_out))  # the predictor is not in its graph
register_op("moe_expert", family="token", build=_experts, input_shapes=_experts_input)
register_op("vit_head", family="token", input_shapes=lambda spec, key, **options: ((1, 1, key.c_in),),
            build=lambda spec, key, **options: Head(key.c_in, key.c_out))
