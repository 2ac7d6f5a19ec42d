"""The built-in op families, declared without torch: name pattern, latency family, analytic cost (MACs, params, fp32
bytes moved at batch 1: the fallback regressor's features), profiling input shapes, identity test and masked
DMasking path. Each builder is named by reference and imported on the first build, so that loading a space or an
arch imports no torch.

- FBNet blocks (``nas.models.blocks``): ``conv_k{K}`` (conv + BN + ReLU), ``ir_k{K}_e{E}[_g{G}]`` (inverted residual,
  optionally grouped), ``skip`` (identity, a 1x1 conv where the shape changes) and ``pool_fc`` (the classifier), in
  the latency family ``conv``; ``ir`` and ``skip`` have masked variants.
- The dynamic-capacity ViT's token-count units (``nas.search.capacity.units``; keys in
  ``nas.search.capacity.latency``): dimension ``c_in``, token count ``tokens``, the rest in ``extra``. The experts
  unit also takes the ``pool`` of tokens its experts select from (default: its own token count).
- Mixed precision's measured units (``nas.search.quant.layers``; keys in ``nas.search.quant.profile``): one conv
  layer alone (``qlayer_{conv,pw,dw,gconv}``, ``extra``: ``g`` groups, ``k`` kernel, ``relu`` 0/1), one linear layer
  (``qlayer_fc``) and the QuantizeLinear -> DequantizeLinear pair of a precision transition (``quant_transition``,
  on a ``(c, r, r)`` tensor with ``rank=3``, else ``(c,)``).

The units have no analytic cost (the fallback uses their measured MACs and params) and form the latency family
``token``, the family of every op outside the block vocabulary.
"""

from __future__ import annotations

import math

from nas.arch.channels import mid_channels
from nas.arch.opkey import OpKey
from nas.arch.ops import OpSpec, Shapes, register_op

TRANSITION_OP = "quant_transition"
CONV_LAYER_KINDS = ("conv", "pw", "dw", "gconv")  # nas.search.quant.graph.LayerInfo.kind, besides "fc"


# ---- FBNet blocks ------------------------------------------------------------------------------------------------
def _out_resolution(key: OpKey) -> int:
    return math.ceil(key.resolution / key.stride) if key.resolution else 0


def _conv_cost(kernel: int, key: OpKey) -> dict:
    r, ro, cin, cout = key.resolution, _out_resolution(key), key.c_in, key.c_out
    macs = kernel * kernel * cin * cout * ro * ro
    return {"macs": macs, "pw_macs": macs, "params": kernel * kernel * cin * cout + cout,
            "traffic": 4 * (cin * r * r + cout * ro * ro)}


def _ir_cost(spec: OpSpec, key: OpKey) -> dict:
    r, ro, cin, cout = key.resolution, _out_resolution(key), key.c_in, key.c_out
    mid, g = mid_channels(spec, cin), spec.groups
    pw = cin * mid // g * r * r if mid != cin else 0
    dw = spec.kernel ** 2 * mid * ro * ro
    pwl = mid * cout // g * ro * ro
    params = (cin * mid // g + mid if mid != cin else 0) + spec.kernel ** 2 * mid + mid + mid * cout // g + cout
    traffic = 4 * (cin * r * r + (mid * r * r if mid != cin else 0) + mid * ro * ro + cout * ro * ro)
    return {"macs": pw + dw + pwl, "dw_macs": dw, "pw_macs": pw + pwl, "params": params, "traffic": traffic}


def _pool_fc_cost(spec: OpSpec, key: OpKey) -> dict:
    cin, cout, r = key.c_in, key.c_out, key.resolution
    return {"macs": cin * cout + cin * r * r, "params": cin * cout + cout, "traffic": 4 * cin * r * r}


def keeps_shape(spec: OpSpec, key: OpKey) -> bool:
    """A skip that changes neither stride nor channels: the identity."""
    return key.stride == 1 and key.c_in == key.c_out


register_op("conv_k{K}", family="conv", build="nas.models.blocks:build_conv",
            cost=lambda spec, key: _conv_cost(spec.kernel, key))
register_op("ir_k{K}_e{E}[_g{G}]", family="conv", build="nas.models.blocks:build_inverted_residual", cost=_ir_cost,
            masked="ir")
register_op("skip", family="conv", build="nas.models.blocks:build_skip", cost=lambda spec, key: _conv_cost(1, key),
            identity=keeps_shape, masked="skip")
register_op("pool_fc", family="conv", build="nas.models.blocks:build_pool_fc", cost=_pool_fc_cost)


# ---- dynamic-capacity ViT units ------------------------------------------------------------------------------------
def _tokens(spec: OpSpec, key: OpKey, **options) -> Shapes:
    return ((1, key.tokens, key.c_in),)


def _experts_input(spec: OpSpec, key: OpKey, pool: int | None = None, **options) -> Shapes:
    """Expert choice reads the routed tokens packed ``[h | gates]``: ``dim + experts`` wide."""
    return ((1, pool or key.tokens, key.c_in + key.int_arg("experts")),)


_UNITS = "nas.search.capacity.units"
register_op("vit_embed", family="token", build=f"{_UNITS}:build_embed")
register_op("token_select", family="token", build=f"{_UNITS}:build_token_select", input_shapes=_tokens)
register_op("vit_attn", family="token", build=f"{_UNITS}:build_attention", input_shapes=_tokens)
register_op("vit_mlp", family="token", build=f"{_UNITS}:build_mlp", input_shapes=_tokens)
register_op("moe_route", family="token", build=f"{_UNITS}:build_moe_route", input_shapes=_tokens)
register_op("moe_expert", family="token", build=f"{_UNITS}:build_experts", input_shapes=_experts_input)
register_op("vit_head", family="token", build=f"{_UNITS}:build_head",
            input_shapes=lambda spec, key, **options: ((1, 1, key.c_in),))


# ---- mixed precision's measured units ------------------------------------------------------------------------------
def _transition_input(spec: OpSpec, key: OpKey, **options) -> Shapes:
    if key.extra_args()["rank"] == "3":
        return ((1, key.c_in, key.resolution, key.resolution),)
    return ((1, key.c_in),)


_LAYERS = "nas.search.quant.layers"
for _kind in CONV_LAYER_KINDS:
    register_op(f"qlayer_{_kind}", family="token", build=f"{_LAYERS}:build_conv_layer")
register_op("qlayer_fc", family="token", build=f"{_LAYERS}:build_linear_layer",
            input_shapes=lambda spec, key, **options: ((1, key.c_in),))
register_op(TRANSITION_OP, family="token", build=f"{_LAYERS}:build_transition", input_shapes=_transition_input)
