"""Fitting the mixed-precision latency cost to whole mixed models measured on the device.

Per-layer and transition rows are timed alone, one small session each. Inside one model, dozens of small
QuantizeLinear / DequantizeLinear nodes and int8 kernels behave differently (per-node dispatch, cache reuse), so
``LatencyCost``'s three terms (int8 compute delta, transition ms, number of transitions) get weights fitted by
non-negative least squares on a handful of assignments of *this* model: all fp32, all int8, int8 on pointwise /
depthwise layers only, and random mixes. The rows are kept in ``latency_calibration.csv`` of the run (resumable).
"""

from __future__ import annotations

import copy
import random
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from scipy.optimize import nnls

from nas.files import write_csv
from nas.onnx_io import export_onnx
from nas.quant.costs import LatencyCost
from nas.quant.export import quantize_assignment
from nas.quant.graph import QuantGraph, attach_onnx, layer_io_bits
from nas.quant.mixed import BitOption, MixedPrecisionNet

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


def fit_latency_cost(cost: LatencyCost, net: MixedPrecisionNet, x: torch.Tensor,
                     time_files: Callable[[list[str]], list[float]], csv_path: Path, *, count: int = 10,
                     seed: int = 0, on_progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Export ``count`` assignments, time them together with ``time_files`` (the device's interleaved timing), fit
    ``cost.coef`` in place and return the fit summary: coefficients and mean absolute % errors before and after.
    Rows already in ``csv_path`` are reused (resume)."""
    graph = cost.graph
    assignments = calibration_assignments(graph, count, seed)
    if csv_path.is_file():
        rows = pd.read_csv(csv_path).to_dict("records")
    else:
        net.calibrate(x)
        files = []
        with tempfile.TemporaryDirectory(prefix="hwnas-mp-fit-") as tmp:
            for i, (name, assignment) in enumerate(assignments.items(), start=1):
                files.append(str(export_assignment(net, graph, assignment, x, Path(tmp), f"m{i}")))
                if on_progress:
                    on_progress(i, len(assignments) + 1, f"exported {name}")
            times = time_files(files)
        net.fix(None)
        rows = []
        for (name, assignment), ms in zip(assignments.items(), times):
            p8 = torch.tensor([1.0 if o.runs_int8 else 0.0 for o in assignment])
            compute, trans, n = (float(t) for t in cost.terms_from_int8(p8))
            rows.append({"name": name, "int8_layers": int(p8.sum()), "measured_ms": ms,
                         "compute_delta_ms": compute, "transition_ms": trans, "transitions": n})
        write_csv(csv_path, pd.DataFrame(rows))
    if on_progress:
        on_progress(len(assignments) + 1, len(assignments) + 1, "fitted")
    frame = pd.DataFrame(rows)
    base = float(frame.loc[frame["name"] == "fp32", "measured_ms"].iloc[0])
    measured = frame["measured_ms"].to_numpy()
    a = frame[["compute_delta_ms", "transition_ms", "transitions"]].to_numpy()
    before = base + a @ np.asarray(cost.coef)
    coef, _ = nnls(a, measured - base)
    cost.coef = tuple(float(c) for c in coef)
    after = base + a @ coef
    return {"models": len(frame),
            "coef": {"compute": float(coef[0]), "transition_ms": float(coef[1]), "per_transition_ms": float(coef[2])},
            "measured_fp32_ms": base, "table_fp32_ms": cost.fp32_model_ms,
            "delta_mape_table_pct": float(np.mean(np.abs(before - measured) / measured) * 100),
            "delta_mape_fitted_pct": float(np.mean(np.abs(after - measured) / measured) * 100),
            "note": "MAPEs of the int8 / transition terms on top of the measured fp32 model: the table's per-layer "
                    "sums as they are, and after the fit"}
