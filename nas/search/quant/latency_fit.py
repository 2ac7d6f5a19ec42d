"""Whole mixed-precision models measured for the device's correction (its ``PrecisionTerms``).

Per-layer and transition rows are timed alone, one small session each. Inside one model, dozens of small
QuantizeLinear / DequantizeLinear nodes and int8 kernels behave differently (per-node dispatch, cache reuse), so
the precision cost table's four terms (int8 compute delta, transition ms, number of transitions, weight MB saved,
see ``nas.latency.precision``) get weights fitted on a handful of assignments of real models: all fp32, all int8, int8
on pointwise / depthwise layers only, and random mixes. This module exports and times them; the rows go to the
device's ``mixed_calibration.csv`` and the fit into its ``correction.json`` (``nas.latency.calibrate``), so
every run on the device shares them, and a model already measured there is not measured again.
"""

from __future__ import annotations

import copy
import hashlib
import random
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nas.latency.calibrate import (
    PRECISION_TERMS,
    append_precision_row,
    precision_terms_matrix,
    read_precision_rows,
    refit_precision,
)
from nas.latency.correction import PrecisionTerms
from nas.models.onnx_io import export_onnx
from nas.search.quant.costs import LatencyCost
from nas.search.quant.export import quantize_assignment
from nas.search.quant.graph import QuantGraph, attach_onnx, layer_io_bits
from nas.search.quant.mixed import BitOption, MixedPrecisionNet
from nas.search.quant.profile import layer_key, transition_key

FP32, INT8 = BitOption(32, 32), BitOption(8, 8)


def calibration_assignments(graph: QuantGraph, count: int = 10, seed: int = 0) -> dict[str, list[BitOption]]:
    kinds = graph.kinds()
    n = len(kinds)
    out = {"fp32": [FP32] * n, "int8": [INT8] * n,
           "int8_pw": [INT8 if k == "pw" else FP32 for k in kinds],
           "int8_dw": [INT8 if k == "dw" else FP32 for k in kinds]}
    rng = random.Random(seed)
    while len(out) < count:
        p = 0.15 + 0.7 * rng.random()
        out[f"random_{len(out)}_{p:.2f}"] = [INT8 if rng.random() < p else FP32 for _ in range(n)]
    return out


def export_assignment(net: MixedPrecisionNet, graph: QuantGraph, assignment: list[BitOption], x: torch.Tensor,
                      folder: Path, stem: str, fmt: str = "qdq") -> Path:
    """Export ``assignment`` (activations calibrated on ``x``) as a quantized ONNX file in ``folder``."""
    int8 = [o.runs_int8 for o in assignment]
    ins, outs = layer_io_bits(graph, int8, [o.a_bits for o in assignment])
    net.fix(assignment, ins, outs)
    float_path = folder / f"{stem}.float.onnx"
    export_onnx(net.float_model(assignment), net.input_shape, float_path)
    if not any(int8):
        return float_path
    g = attach_onnx(copy.deepcopy(graph.layers), float_path)
    return quantize_assignment(float_path, g, assignment, x, folder / f"{stem}.onnx", fmt).path


def model_id(graph: QuantGraph) -> str:
    """The identity of a mixed-precision model on a device: its layers' and tensors' keys."""
    keys = [str(layer_key(layer, 32)) for layer in graph.layers] + [str(transition_key(t)) for t in graph.tensors]
    return "qgraph-" + hashlib.sha1(" ".join(keys).encode()).hexdigest()[:16]


def fit_latency_cost(cost: LatencyCost, net: MixedPrecisionNet, x: torch.Tensor,
                     time_files: Callable[[list[str]], list[float]], device_folder: Path, *, count: int = 10,
                     seed: int = 0, on_progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Measure ``count`` assignments of this model on the device (unless its table folder ``device_folder`` has
    them), timed together with ``time_files`` (the device's interleaved timing); refit the device's precision terms,
    set ``cost.table.precision`` to them and return the fit summary: coefficients and mean absolute % errors of this
    model's assignments with the table's terms as they are and with the fitted weights."""
    graph = cost.graph
    assignments = calibration_assignments(graph, count, seed)
    mid = model_id(graph)
    measured = {r["assignment"] for r in read_precision_rows(device_folder) if r["model_id"] == mid}
    if not set(assignments) <= measured:
        net.calibrate(x)
        files = []
        with tempfile.TemporaryDirectory(prefix="hwnas-mp-fit-") as tmp:
            for i, (name, assignment) in enumerate(assignments.items(), start=1):
                files.append(str(export_assignment(net, graph, assignment, x, Path(tmp), f"m{i}")))
                if on_progress:
                    on_progress(i, len(assignments) + 1, f"exported {name}")
            times = time_files(files)
        net.fix(None)
        fp32_ms = times[list(assignments).index("fp32")]
        for (name, assignment), ms in zip(assignments.items(), times):
            p8 = torch.tensor([1.0 if o.runs_int8 else 0.0 for o in assignment])
            terms = dict(zip(PRECISION_TERMS, (float(t) for t in cost.table.terms_from_int8(p8))))
            append_precision_row(device_folder, {"model_id": mid, "assignment": name, "int8_layers": int(p8.sum()),
                                                 "measured_ms": ms, "fp32_measured_ms": fp32_ms, **terms})
    terms = refit_precision(device_folder).precision
    cost.table.precision = terms
    if on_progress:
        on_progress(len(assignments) + 1, len(assignments) + 1, "fitted")
    rows = [r for r in read_precision_rows(device_folder) if r["model_id"] == mid and r["assignment"] in assignments]
    fp32_ms = rows[0]["fp32_measured_ms"]
    measured_ms = np.asarray([r["measured_ms"] for r in rows])
    a = precision_terms_matrix(rows)
    before, after = (t.model_ms(fp32_ms, *a.T) for t in (PrecisionTerms(), terms))
    return {"models": len(rows), "device_models": terms.fitted_on,
            "coef": {"compute": terms.compute, "transition_ms": terms.transition,
                     "per_transition_ms": terms.per_transition_ms,
                     "per_saved_weight_mb_ms": terms.per_saved_weight_mb_ms},
            "measured_fp32_ms": fp32_ms, "table_fp32_ms": cost.table.fp32_model_ms,
            "delta_mape_table_pct": float(np.mean(np.abs(before - measured_ms) / measured_ms) * 100),
            "delta_mape_fitted_pct": float(np.mean(np.abs(after - measured_ms) / measured_ms) * 100),
            "note": "MAPEs of the int8 / transition terms on top of the measured fp32 model: the table's per-layer "
                    "sums as they are, and with the device's fitted weights (correction.json, every mixed model "
                    "measured on the device)"}
