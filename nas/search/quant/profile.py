"""Device costs for mixed precision, measured with the latency profiler into the device's own table.

Besides the per-block fp32 / int8 rows of ``hwnas latency profile --int8``, a mixed-precision search needs:

- each conv / linear layer alone, fp32 and int8 (``op = qlayer_<kind>``, ``extra = g=..;k=..;relu=..``): int8 is
  the layer quantized as QDQ by the profiler, i.e. QuantizeLinear in, int8 op, DequantizeLinear out;
- the QuantizeLinear + DequantizeLinear pair on every tensor between layers (``op = quant_transition``, bits 32:
  the module itself exports the pair), the price paid wherever an int8 layer meets a float one.

These are ordinary keys of the device table, so the same LatencyModel corrects them and flags estimates:
``precision_graph`` states a model's layers and tensors as those keys, for ``LatencyModel.precision_costs``.
"""

from __future__ import annotations

from typing import Callable

from nas.arch.builtin_ops import TRANSITION_OP
from nas.arch.opkey import OpKey, format_extra
from nas.errors import LatencyTableError
from nas.latency.device import Device
from nas.latency.precision import PrecisionEdge, PrecisionGraph, PrecisionLayer
from nas.latency.profile import ProfileItem, block_item, profile_items
from nas.search.quant.graph import LayerInfo, QuantGraph, TensorInfo


def layer_key(layer: LayerInfo, bits: int) -> OpKey:
    return OpKey(f"qlayer_{layer.kind}", layer.c_in, layer.c_out, layer.stride, layer.resolution, 0, bits,
                 format_extra(g=layer.groups, k=layer.kernel, relu=int(layer.relu)))


def transition_key(tensor: TensorInfo) -> OpKey:
    c = tensor.shape[0] if tensor.shape else 0
    r = tensor.shape[-1] if len(tensor.shape) == 3 else 0
    return OpKey(TRANSITION_OP, c, c, 1, r, 0, 32, format_extra(pair="qdq", rank=len(tensor.shape)))


def precision_graph(graph: QuantGraph) -> PrecisionGraph:
    """``graph`` as the LatencyModel costs it: each layer's keys at fp32 and int8, each tensor's transition key."""
    edge = {t.name: i for i, t in enumerate(graph.tensors)}
    layers = [PrecisionLayer(layer_key(layer, 32), layer_key(layer, 8), edge[layer.input_tensor],
                             edge[layer.output_tensor], layer.kind, layer.weight_params) for layer in graph.layers]
    edges = [PrecisionEdge(transition_key(t) if t.shape else None, t.producer, tuple(t.consumers), t.float_consumers)
             for t in graph.tensors]
    return PrecisionGraph(layers, edges)


def layer_items(graph: QuantGraph) -> list[ProfileItem]:
    """Every per-layer key (fp32 and int8) and every transition key of ``graph``, once each."""
    return [block_item(key) for key in precision_graph(graph).keys()]


def profile_layers(device: Device, graph: QuantGraph, *, tables_dir=None,
                   on_progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Measure the keys of ``graph`` the table of ``device`` (a table's own set-up, ``LatencyModel.device``) lacks."""
    if device.remote:
        raise LatencyTableError(f"device {device.device_id!r} was imported from a remote device; its per-layer and "
                                f"transition costs cannot be measured here")
    return profile_items(device, layer_items(graph), tables_dir=tables_dir, on_progress=on_progress)
