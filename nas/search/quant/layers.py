"""Mixed precision's measured units, registered in the op registry (``nas.arch.ops``); keys in
``nas.search.quant.profile``.

- ``qlayer_{conv,pw,dw,gconv}``: one conv layer alone (``extra``: ``g`` groups, ``k`` kernel, ``relu`` 0/1), input
  ``(1, c_in, r, r)``; ``qlayer_fc``: one linear layer, input ``(1, c_in)``. Their int8 keys are quantized by the
  profiler like any other key.
- ``quant_transition``: a QuantizeLinear -> DequantizeLinear pair on a ``(c, r, r)`` (``rank=3``) or ``(c,)``
  tensor, the price paid wherever an int8 layer meets a float one.

None has an analytic cost (the fallback uses their measured MACs and params); all are in the latency family
``token``, the family of every op outside the block vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from nas.arch.opkey import OpKey
from nas.arch.ops import OpSpec, register_op

TRANSITION_OP = "quant_transition"
CONV_LAYER_KINDS = ("conv", "pw", "dw", "gconv")  # nas.search.quant.graph.LayerInfo.kind, besides "fc"


class QuantDequantPair(nn.Module):
    """Exports to ONNX as QuantizeLinear -> DequantizeLinear (uint8), the cost of one precision transition."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, 0.05, 128, 0, 255)


def _conv_layer(spec: OpSpec, key: OpKey, **options) -> nn.Module:
    args = key.extra_args()
    kernel, groups = int(args["k"]), int(args["g"])
    conv = nn.Conv2d(key.c_in, key.c_out, kernel, key.stride, kernel // 2, groups=groups)
    return nn.Sequential(conv, nn.ReLU()) if int(args["relu"]) else conv


def _transition_input(spec: OpSpec, key: OpKey, **options) -> tuple[tuple[int, ...], ...]:
    if key.extra_args()["rank"] == "3":
        return ((1, key.c_in, key.resolution, key.resolution),)
    return ((1, key.c_in),)


for _kind in CONV_LAYER_KINDS:
    register_op(f"qlayer_{_kind}", family="token", build=_conv_layer)
register_op("qlayer_fc", family="token", build=lambda spec, key, **options: nn.Linear(key.c_in, key.c_out),
            input_shapes=lambda spec, key, **options: ((1, key.c_in),))
register_op(TRANSITION_OP, family="token", build=lambda spec, key, **options: QuantDequantPair(),
            input_shapes=_transition_input)
