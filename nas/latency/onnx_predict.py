"""Predicting any ONNX model's latency on a device from its kernels (``hwnas latency predict model.onnx``).

The model is split into the kernels ONNX Runtime runs on the device (``nas.latency.kernels``); each kernel costs its
row of the device's kernel table (exact key) with the device's kernel correction (``nas.latency.kernel_table``), or,
for a key the table lacks, a regressor's estimate fitted on the table's rows (flagged ``estimated``). With
``profile=True`` the missing kernels are timed on the spot first (this machine must be the device), and the kernel
correction is fitted on the device's reference models when it has none. The breakdown holds one line per kernel and
one for the model's own session call, and it sums to the total.

The regressor: per row, log of the kernel's MACs, of its activations and weights in bytes, and its op type (one-hot
over the table's ops); a ridge fit on log net time, with extra trees on the residuals (as the block table's
``FallbackRegressor``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from nas.errors import LatencyTableError
from nas.latency.kernel_table import (
    KernelCorrection,
    fit_kernel_correction,
    kernel_net_ms,
    profile_kernels,
    read_kernels,
)
from nas.latency.kernels import Kernel, KernelGraph, kernel_graph
from nas.latency.overhead import CallOverhead
from nas.latency.table import LatencyTable, device_dir, read_manifest
from nas.latency.timing import TimingConfig

MIN_REGRESSOR_ROWS = 8


def kernel_features(kernel: Kernel | dict, ops: list[str]) -> np.ndarray:
    get = kernel.get if isinstance(kernel, dict) else lambda name: getattr(kernel, name)
    lg = np.log1p
    return np.array([lg(float(get("macs"))), lg(float(get("in_bytes"))), lg(float(get("out_bytes"))),
                     lg(float(get("weight_bytes")))] + [float(get("op") == op) for op in ops])


class KernelRegressor:
    """Estimates a kernel's net ms from its size and op type, fitted on a kernel table's rows."""

    def __init__(self, rows: list[dict]):
        from sklearn.ensemble import ExtraTreesRegressor
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.ops = sorted({r["op"] for r in rows})
        x = np.stack([kernel_features(r, self.ops) for r in rows])
        y = np.log(np.maximum([kernel_net_ms(r) for r in rows], 1e-5))
        self.linear = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 2, 12))).fit(x, y)
        self.trees = ExtraTreesRegressor(n_estimators=100, min_samples_leaf=2, random_state=0).fit(
            x, y - self.linear.predict(x))

    def predict_ms(self, kernels: list[Kernel]) -> np.ndarray:
        x = np.stack([kernel_features(k, self.ops) for k in kernels])
        return np.exp(self.linear.predict(x) + self.trees.predict(x))


@dataclass
class OnnxPrediction:
    """A model's predicted latency on a device, kernel by kernel (the lines sum to ``total_ms``)."""

    device: str
    model: str
    total_ms: float
    call_ms: float  # the model's own session call (its inputs and outputs)
    kernels: list[dict]  # node, op, key, ms, estimated
    correction: dict
    profiled: dict = field(default_factory=dict)  # counts of kernels timed on the spot
    warnings: list[str] = field(default_factory=list)

    @property
    def estimated(self) -> int:
        return sum(k["estimated"] for k in self.kernels)

    def to_dict(self) -> dict:
        return {"device": self.device, "model": self.model, "predicted_ms": self.total_ms, "call_ms": self.call_ms,
                "kernels": len(self.kernels), "estimated_kernels": self.estimated, "correction": self.correction,
                "profiled": self.profiled, "warnings": self.warnings, "breakdown": self.kernels}


def kernel_costs(graph: KernelGraph, rows: dict[str, dict], correction: KernelCorrection,
                 allow_fallback: bool = True, device: str = "") -> tuple[list[float], list[bool]]:
    """Each kernel's cost in the model (ms) and whether it was estimated by the regressor."""
    missing = [k for k in graph.kernels if k.key not in rows]
    estimates: dict[str, float] = {}
    if missing:
        if not allow_fallback:
            raise LatencyTableError(f"device {device!r} has no timing for kernel {missing[0].key[:160]} (and "
                                    f"{len({k.key for k in missing}) - 1} more); time them with --profile")
        if len(rows) < MIN_REGRESSOR_ROWS:
            raise LatencyTableError(f"device {device!r} has {len(rows)} kernel timings, too few to estimate the "
                                    f"{len({k.key for k in missing})} kernels this model needs; run with --profile "
                                    f"on the device")
        estimates = dict(zip((k.key for k in missing), KernelRegressor(list(rows.values())).predict_ms(missing)))
    costs, flags = [], []
    for k in graph.kernels:
        net = kernel_net_ms(rows[k.key]) if k.key in rows else float(estimates[k.key])
        costs.append(correction.kernel_ms(net, k))
        flags.append(k.key not in rows)
    return costs, flags


def predict_onnx(model: str | Path, device_id: str, tables_dir: str | Path | None = None, *, profile: bool = False,
                 allow_fallback: bool = True, timing: TimingConfig | None = None,
                 on_progress: Callable[[int, int, str], None] | None = None) -> OnnxPrediction:
    """Predict ``model`` (an ONNX file) on ``device_id`` from its kernels; ``profile``: time missing kernels here."""
    from nas.latency.device import Device

    path = Path(model)
    if not path.is_file():
        raise LatencyTableError(f"ONNX model not found: {path}")
    manifest = read_manifest(device_id, tables_dir)
    device = Device.from_manifest(manifest)
    folder = device_dir(device_id, tables_dir)
    graph = kernel_graph(path, device)
    warnings = []
    profiled: dict = {}
    if profile:
        table = LatencyTable.open(device_id, tables_dir)
        if KernelCorrection.load(folder) is None:
            fit_kernel_correction(table, timing=timing)
        profiled = profile_kernels(table, graph, timing=timing, on_progress=on_progress)
        if profiled["failed"]:
            warnings.append(f"{profiled['failed']} kernels could not run alone; the regressor estimates them")
    correction = KernelCorrection.load(folder)
    if correction is None or not correction.fitted_on:
        warnings.append(f"device {device_id!r} has no kernel correction fitted on whole models: kernel times are "
                        f"summed as they are (run once with --profile on the device)")
        correction = correction or KernelCorrection()
    overhead = CallOverhead.load(folder) or CallOverhead(0.0, 0.0, [])
    rows = read_kernels(folder)
    costs, flags = kernel_costs(graph, rows, correction, allow_fallback, device_id)
    if any(flags):
        warnings.append(f"{sum(flags)} of {len(flags)} kernels are estimated by the regressor (not in the kernel "
                        f"table of device {device_id!r}; --profile times them)")
    if w := manifest.version_warning():
        warnings.append(w)
    call = overhead.predict_ms(graph.in_bytes, graph.out_bytes)
    lines = [{"node": k.node, "op": k.op, "key": k.key, "ms": float(c), "estimated": bool(f)}
             for k, c, f in zip(graph.kernels, costs, flags)]
    return OnnxPrediction(device_id, str(path), float(call + sum(costs)), float(call), lines,
                          asdict(correction), profiled, warnings)
