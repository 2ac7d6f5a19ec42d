"""The ``mixed`` setting of ``bench_trust.py``: mixed int8 / fp32 per-layer assignments of one fbnet arch.

Every assignment has the same FLOPs and parameters; what it costs depends on which layers run int8 and on the
Quantize / Dequantize transitions between layers of different precision. The table's prediction is the mixed
precision cost table (``LatencyModel.precision_costs``: per-layer fp32 and int8 rows and transition rows, profiled
into the device's table, with its precision terms fitted on 10 whole mixed models, ``fit_latency_cost``, the
calibration); the proxy is a linear fit of ms on BitOps (MACs x weight bits x activation bits) fitted on the same
10 models. The validation assignments (other random mixes, ``--samples`` of them) are exported and timed twice,
interleaved, on the device.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from trust_common import Figures, Setting, ablations, figures, log, target_notes

from nas.latency.calibrate import fit_precision_terms, read_precision_rows
from nas.latency.model import LatencyModel
from nas.models.builder import build_model
from nas.models.onnx_io import export_onnx
from nas.search.quant.costs import LatencyCost, bitops_g
from nas.search.quant.graph import attach_onnx, trace_layers
from nas.search.quant.latency_fit import (
    FP32,
    INT8,
    calibration_assignments,
    export_assignment,
    fit_latency_cost,
    model_id,
)
from nas.search.quant.mixed import MixedPrecisionNet
from nas.search.quant.profile import precision_graph, profile_layers


def random_assignments(n_layers: int, count: int, seed: int) -> list[list]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        p = 0.1 + 0.8 * rng.random()
        out.append([INT8 if rng.random() < p else FP32 for _ in range(n_layers)])
    return out


def mixed_figures(setting: Setting, root: Path, samples: int, seed: int = 7) -> Figures:
    """The setting's figures on ``setting``'s device (its fp32 table profiled already)."""
    start = time.perf_counter()
    space = setting.space
    arch = space.sample(np.random.default_rng(seed))
    torch.manual_seed(seed)
    net = MixedPrecisionNet(build_model(space, arch), [FP32, INT8])
    layers = trace_layers(net.model, net.names, net.input_shape)
    with tempfile.TemporaryDirectory(prefix="bench-mixed-") as tmp:
        path = Path(tmp) / "fp32.onnx"
        export_onnx(net.float_model([FP32] * len(layers)), net.input_shape, path)
        graph = attach_onnx(layers, path)
    log(f"mixed: profiling {len(graph.layers)} layers at fp32 and int8 and their transitions")
    lm = LatencyModel.load(setting.device, root)
    profile_layers(lm.device, graph, tables_dir=root)
    lm.refresh()
    cost = LatencyCost(graph, [FP32, INT8], lm.precision_costs(lm.arch_keys(space, arch), precision_graph(graph)))
    x = torch.randn(16, *net.input_shape)
    device = lm.device
    timing = setting.timing()
    log("mixed: 10 calibration assignments measured, precision terms fitted")
    fit = fit_latency_cost(cost, net, x, lambda files: [s.p50_ms for s in device.time_files_twice(files, timing)],
                           lm.table.folder, count=10)
    calibration = calibration_assignments(graph, 10)
    cal_bitops = np.array([bitops_g(graph, a) for a in calibration.values()])
    cal_ms = np.array(calibration_times(lm.table.folder, graph, calibration))
    assignments = random_assignments(len(graph.layers), samples, seed + 1)
    net.calibrate(x)
    with tempfile.TemporaryDirectory(prefix="bench-mixed-") as tmp:
        files = [str(export_assignment(net, graph, a, x, Path(tmp), f"v{i}")) for i, a in enumerate(assignments)]
        log(f"mixed: {samples} validation assignments measured twice (each the faster of two passes)")
        first = [s.p50_ms for s in device.time_files_twice(files, timing)]
        second = [s.p50_ms for s in device.time_files_twice(files, timing)]
    net.fix(None)
    predicted = [cost.of(a) for a in assignments]
    ablated = {name: ablated_predictions(model, space, arch, graph, calibration, assignments)
               for name, model in ablations(lm).items()}
    ablated["saved"] = ablated_predictions(lm, space, arch, graph, calibration, assignments, with_saving=False)
    macs = sum(layer.macs for layer in graph.layers)
    f = figures(f"mixed int8/fp32 ({len(graph.layers)} layers)", predicted, first, second,
                {"flops": (np.full(samples, float(macs)), (np.full(len(cal_ms), float(macs)), cal_ms)),
                 "bitops": ([bitops_g(graph, a) for a in assignments], (cal_bitops, cal_ms))},
                [f"precision terms fitted on {fit['models']} models: compute {fit['coef']['compute']:.2f}, "
                 f"transition {fit['coef']['transition_ms']:.2f}, per transition "
                 f"{fit['coef']['per_transition_ms'] * 1e3:.1f} us, per saved weight MB "
                 f"{fit['coef']['per_saved_weight_mb_ms']:.3f} ms"], ablated)
    f.notes += [n for n in target_notes(f) if "FLOPs" not in n]
    f.seconds = time.perf_counter() - start
    return f


def ablated_predictions(lm: LatencyModel, space, arch, graph, calibration: dict, assignments,
                        with_saving: bool = True) -> list[float]:
    """The validation assignments' predictions by ``lm`` (the table refitted without a term), its precision terms
    fitted as ``fit_latency_cost`` does on the same measured calibration mixes, with ``lm``'s own layer costs;
    without the saved-weight term unless ``with_saving``."""
    cost = LatencyCost(graph, [FP32, INT8], lm.precision_costs(lm.arch_keys(space, arch), precision_graph(graph)))
    rows = {r["assignment"]: r for r in read_precision_rows(lm.table.folder) if r["model_id"] == model_id(graph)}
    terms = np.array([[float(t) for t in cost.table.terms_from_int8(torch.tensor([float(o.runs_int8) for o in a]))]
                      for a in calibration.values()])
    terms[:, 3] *= float(with_saving)  # a zero column: nnls leaves its weight at 0
    deltas = [rows[name]["measured_ms"] - rows[name]["fp32_measured_ms"] for name in calibration]
    cost.table.precision = fit_precision_terms(terms, np.array(deltas), 1)
    return [cost.of(a) for a in assignments]


def calibration_times(folder: Path, graph, calibration: dict) -> list[float]:
    """The calibration assignments' measured ms, as ``fit_latency_cost`` stored them."""
    mid = model_id(graph)
    rows = {r["assignment"]: r["measured_ms"] for r in read_precision_rows(folder) if r["model_id"] == mid}
    return [rows[name] for name in calibration]
