"""Device costs for mixed precision, measured with the latency profiler into the device's own table.

Besides the per-block fp32 / int8 rows of ``hwnas latency profile --int8``, a mixed-precision search needs:

- each conv / linear layer alone, fp32 and int8 (``op = qlayer_<kind>``, ``extra = g=..;k=..;relu=..``): int8 is
  the layer quantized as QDQ by the profiler, i.e. QuantizeLinear in, int8 op, DequantizeLinear out;
- the QuantizeLinear + DequantizeLinear pair on every tensor between layers (``op = quant_transition``, bits 32:
  the module itself exports the pair), the price paid wherever an int8 layer meets a float one.

These are ordinary keys of the device table, so the same LatencyModel corrects them and flags estimates.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import numpy as np

from nas.errors import LatencyTableError
from nas.latency.model import LatencyModel
from nas.latency.opkey import OpKey, format_extra
from nas.latency.profile import ProfileItem, block_item, profile_items
from nas.latency.table import read_manifest
from nas.latency.timing import TimingConfig
from nas.quant.costs import LayerTimes
from nas.quant.graph import LayerInfo, QuantGraph, TensorInfo
from nas.quant.layers import TRANSITION_OP


def layer_key(layer: LayerInfo, bits: int) -> OpKey:
    return OpKey(f"qlayer_{layer.kind}", layer.c_in, layer.c_out, layer.stride, layer.resolution, 0, bits,
                 format_extra(g=layer.groups, k=layer.kernel, relu=int(layer.relu)))


def transition_key(tensor: TensorInfo) -> OpKey:
    c = tensor.shape[0] if tensor.shape else 0
    r = tensor.shape[-1] if len(tensor.shape) == 3 else 0
    return OpKey(TRANSITION_OP, c, c, 1, r, 0, 32, format_extra(pair="qdq", rank=len(tensor.shape)))


def layer_items(graph: QuantGraph) -> list[ProfileItem]:
    """Every per-layer key (fp32 and int8) and every transition key of ``graph``, once each."""
    keys = [layer_key(layer, bits) for layer in graph.layers for bits in (32, 8)]
    keys += [transition_key(t) for t in graph.tensors if t.shape]
    return [block_item(key) for key in dict.fromkeys(keys)]


def profile_layers(device: str, graph: QuantGraph, *, tables_dir=None,
                   on_progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Measure the keys of ``graph`` the device table lacks, with the device's own provider and threads."""
    manifest = read_manifest(device, tables_dir)
    if manifest.remote:
        raise LatencyTableError(f"device {device!r} was imported from a remote device; its per-layer and "
                                f"transition costs cannot be measured here")
    return profile_items(device, layer_items(graph), provider=manifest.provider, threads=manifest.threads,
                         tables_dir=tables_dir, optimization=manifest.graph_optimization, on_progress=on_progress,
                         timing=TimingConfig(clock=getattr(manifest, "clock", "wall")))


def layer_times(lm: LatencyModel, graph: QuantGraph) -> list[LayerTimes]:
    return [LayerTimes(lm.block_cost_ms(layer_key(layer, 32)), lm.block_cost_ms(layer_key(layer, 8)))
            for layer in graph.layers]


def transition_times(lm: LatencyModel, graph: QuantGraph) -> dict[str, float]:
    return {t.name: lm.block_cost_ms(transition_key(t)) for t in graph.tensors if t.shape}


def estimated_keys(lm: LatencyModel, graph: QuantGraph) -> list[str]:
    keys = [layer_key(layer, b) for layer in graph.layers for b in (32, 8)]
    keys += [transition_key(t) for t in graph.tensors if t.shape]
    return [str(k) for k in keys if lm.is_estimated(k)]


def int8_speedups(lm: LatencyModel, graph: QuantGraph) -> dict[str, dict]:
    """Measured fp32 / int8 time ratio per layer kind, from the table's raw p50s (> 1: int8 is faster).

    ``isolated``: the int8 layer with its own Quantize in and Dequantize out, against the fp32 layer, each a p50 of
    its own session call (the call overhead, ``call_overhead_ms``, is in both: at small sizes it dominates, and
    subtracting an estimate of it from sub-overhead timings gives meaningless ratios).
    ``in_int8_chain``: the int8 time without those two transitions (half the measured Q/DQ pair, net of the call
    overhead, on its input and output), i.e. a layer whose neighbours are int8 too.
    """
    table = lm.table
    by_kind: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    seen = set()
    pair = {}
    overheads = []
    for t in graph.tensors:
        row = table.get(transition_key(t)) if t.shape else None
        if row:
            pair[t.name] = max(row["p50_ms"] - row["overhead_ms"], 0.0)
    for layer in graph.layers:
        k32, k8 = layer_key(layer, 32), layer_key(layer, 8)
        if str(k32) in seen:
            continue
        seen.add(str(k32))
        r32, r8 = table.get(k32), table.get(k8)
        if not r32 or not r8:
            continue
        overheads.append(r32["overhead_ms"])
        core8 = r8["p50_ms"] - (pair.get(layer.input_tensor, 0.0) + pair.get(layer.output_tensor, 0.0)) / 2
        by_kind[layer.kind].append((r32["p50_ms"], r8["p50_ms"], max(core8, 1e-6)))
    out = {}
    for kind, rows in sorted(by_kind.items()):
        a = np.asarray(rows)
        iso = a[:, 0] / a[:, 1]
        chain = a[:, 0] / a[:, 2]
        out[kind] = {"layers": len(rows), "fp32_ms": float(a[:, 0].sum()), "int8_ms": float(a[:, 1].sum()),
                     "isolated_speedup": float(a[:, 0].sum() / a[:, 1].sum()),
                     "isolated_speedup_range": [float(iso.min()), float(iso.max())],
                     "in_int8_chain_speedup": float(a[:, 0].sum() / a[:, 2].sum()),
                     "in_int8_chain_speedup_range": [float(chain.min()), float(chain.max())],
                     "call_overhead_ms": float(np.mean(overheads))}
    return out
