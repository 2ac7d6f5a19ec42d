"""A device's kernel table: ONNX Runtime kernels timed alone, and the correction from their sum to a whole model.

``kernels.csv`` in the device folder holds one row per kernel key (``nas.latency.kernels``): its analytic size and
its time alone, as a single-node model on the device (graph optimisation off, the node is the optimised graph's
already), timed interleaved with the device's reference models and expressed at calibration speed
(``nas.latency.drift.time_against_references``, as every whole-model measurement), so that kernels timed today and a
table calibrated last week add up. Rows are appended under the table's lock discipline (``append_unique_row``):
profiling resumes, and two profilers share the work.

A kernel's own time is its p50 less the session call overhead it paid alone (``call_overhead.json``, as blocks do).
Inside a model a kernel also pays for its data coming from memory: run alone in a loop, a kernel finds its inputs
and weights in the caches it keeps hot; inside a model the kernels before it have evicted them. So
(``kernel_correction.json``)

    whole_ms = call overhead of the model's inputs and outputs + sum_k (net_k + per_mb_ms * MB_k)

where ``MB_k`` is what the kernel reads and writes: its inputs (weights included) and outputs, none for the view ops
ONNX Runtime runs in place (Reshape, Flatten, Squeeze, Unsqueeze, Identity) nor for Shape and Size, which read no
data. ``per_mb_ms`` is fitted (non-negative least squares on relative errors) on the device's reference models,
whole models measured at calibration, whose kernels are profiled for it (``fit_kernel_correction``). Measured
(loaded 2-core VM, fbnet 224 px references): about 0.035 ms per MB; without it the sum of kernel times fell 15-30%
short of mobile networks, GoogLeNet and ViT, whose activations are large. Activations and weights were tried as
two terms: fitted on references of one family they trade off against each other, and one term predicted the
published architectures of ``benchmarks/published_archs.py`` as well.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nas.errors import LatencyTableError
from nas.files import read_json_record, write_json
from nas.latency.correction import MIN_NET_FRACTION
from nas.latency.drift import local_device, read_references, reference_dir, time_against_references
from nas.latency.kernels import Kernel, KernelGraph, kernel_device, kernel_graph
from nas.latency.overhead import CallOverhead, measure_call_overhead
from nas.latency.table import LatencyTable, append_unique_row, read_csv_rows
from nas.latency.timing import TimingConfig

KERNEL_FILE = "kernels.csv"
KERNEL_COLUMNS = ("key", "op", "macs", "in_bytes", "out_bytes", "weight_bytes", "p50_ms", "p90_ms", "raw_ms",
                  "count", "stable", "overhead_ms", "timestamp")
KERNEL_CORRECTION_FILE = "kernel_correction.json"
_NUMBERS = ("macs", "in_bytes", "out_bytes", "weight_bytes", "p50_ms", "p90_ms", "raw_ms", "count", "overhead_ms")


def read_kernels(folder: Path) -> dict[str, dict]:
    """The device's kernel rows by key (numbers as floats); LatencyTableError naming a corrupt line."""
    path = Path(folder) / KERNEL_FILE
    rows = {}
    for i, row in enumerate(read_csv_rows(path), start=2):
        try:
            for c in _NUMBERS:
                row[c] = float(row[c])
            row["stable"] = row["stable"] == "1"
        except (KeyError, TypeError, ValueError):
            raise LatencyTableError(f"{path}: corrupt kernel row at line {i}; delete the line (it is measured "
                                    f"again) or the file") from None
        rows.setdefault(row["key"], row)
    return rows


def kernel_net_ms(row: dict) -> float:
    """A kernel row's time without the session call it paid alone."""
    return max(row["p50_ms"] - row["overhead_ms"], MIN_NET_FRACTION * row["p50_ms"])


def device_overhead(table: LatencyTable) -> CallOverhead:
    """The device's call overhead (measured now, here, when its profile did not keep one)."""
    overhead = CallOverhead.load(table.folder)
    if overhead is None:
        overhead = measure_call_overhead(local_device(table))
        overhead.save(table.folder)
    return overhead


def profile_kernels(table: LatencyTable, graph: KernelGraph, *, timing: TimingConfig | None = None, chunk: int = 32,
                    on_progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Time the kernels of ``graph`` the device's kernel table lacks, alone, interleaved with its reference models,
    and append their rows. Returns counts ``{"kernels", "measured", "skipped", "failed"}``; a kernel that cannot
    run alone (``failed``) is left to the regressor."""
    device = local_device(table)
    alone = kernel_device(device)
    overhead = device_overhead(table)
    have = read_kernels(table.folder)
    unique = list({k.key: k for k in graph.kernels if k.key not in have}.values())
    counts = {"kernels": len({k.key for k in graph.kernels}), "measured": 0, "skipped": 0, "failed": 0}
    counts["skipped"] = counts["kernels"] - len(unique)
    for start in range(0, len(unique), chunk):
        todo, sessions = [], []
        for kernel in unique[start:start + chunk]:
            try:
                sessions.append(alone.open(graph.single_node_model(kernel), graph.feeds(kernel)))
                todo.append(kernel)
            except Exception:  # onnxruntime's own error types: a node that cannot run outside its graph
                counts["failed"] += 1
        if not todo:
            continue
        timed = time_against_references(table, sessions, device, timing)
        for kernel, st, relative in zip(todo, timed.stats, timed.relative_ms):
            wrote = append_unique_row(table.folder / KERNEL_FILE, KERNEL_COLUMNS, {
                "key": kernel.key, "op": kernel.op, "macs": kernel.macs, "in_bytes": kernel.in_bytes,
                "out_bytes": kernel.out_bytes, "weight_bytes": kernel.weight_bytes, "p50_ms": f"{relative:.6g}",
                "p90_ms": f"{st.p90_ms * relative / st.p50_ms:.6g}", "raw_ms": f"{st.p50_ms:.6g}", "count": st.count,
                "stable": int(st.stable), "overhead_ms": f"{overhead.predict_ms(kernel.in_bytes, kernel.out_bytes):.6g}",
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}, ("key",))
            counts["measured" if wrote else "skipped"] += 1
        if on_progress:
            on_progress(counts["skipped"] + counts["measured"] + counts["failed"], counts["kernels"],
                        f"{todo[-1].op}")
    return counts


# ---- the correction -------------------------------------------------------------------------------------------------
VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Size")  # no data read or moved


@dataclass
class KernelCorrection:
    """``whole = call overhead + sum_k (net_k + per_mb_ms * MB_k)``."""

    per_mb_ms: float = 0.0
    fitted_on: int = 0  # reference models used; 0 = not fitted (kernel times summed as they are)
    fit_mape: float | None = None  # on those models, after the fit
    raw_mape: float | None = None  # the same with the plain sum of net times

    def save(self, folder: Path) -> None:
        write_json(Path(folder) / KERNEL_CORRECTION_FILE, asdict(self))

    @classmethod
    def load(cls, folder: Path) -> "KernelCorrection | None":
        path = Path(folder) / KERNEL_CORRECTION_FILE
        return read_json_record(path, lambda d: cls(float(d["per_mb_ms"]), int(d["fitted_on"]), d.get("fit_mape"),
                                                    d.get("raw_mape")),
                                lambda why: LatencyTableError(f"{path}: corrupt kernel correction; delete it and "
                                                              f"rerun `hwnas latency predict MODEL.onnx --profile`"))


    def kernel_ms(self, net_ms: float, kernel: Kernel) -> float:
        """A kernel's cost inside a model."""
        return net_ms + self.per_mb_ms * memory_mb(kernel)


def memory_mb(kernel: Kernel) -> float:
    """MB a kernel reads and writes inside a model (0 for view ops)."""
    return 0.0 if kernel.op in VIEW_OPS else (kernel.in_bytes + kernel.out_bytes + kernel.weight_bytes) / 1e6


def fit_kernel_correction(table: LatencyTable, *, timing: TimingConfig | None = None,
                          on_progress: Callable[[int, int, str], None] | None = None) -> KernelCorrection:
    """Profile the kernels of the device's reference models (those missing) and fit the correction on them; save
    it. Without two reference models the kernel times are summed as they are."""
    from scipy.optimize import nnls

    refs = read_references(table.folder)
    device = local_device(table)
    overhead = device_overhead(table)
    points = []
    for i, ref in enumerate(refs, start=1):
        graph = kernel_graph(reference_dir(table.folder) / ref["file"], device)
        profile_kernels(table, graph, timing=timing)
        rows = read_kernels(table.folder)
        if any(k.key not in rows for k in graph.kernels):
            continue
        net = sum(kernel_net_ms(rows[k.key]) for k in graph.kernels)
        points.append((overhead.predict_ms(graph.in_bytes, graph.out_bytes) + net,
                       sum(memory_mb(k) for k in graph.kernels), float(ref["measured_ms"])))
        if on_progress:
            on_progress(i, len(refs), "reference model")
    if len(points) < 2:
        correction = KernelCorrection(fitted_on=len(points))
    else:
        summed, mb, measured = (np.array(c, dtype=np.float64) for c in zip(*points))
        a = (mb / measured)[:, None]  # relative errors: every model counts alike
        coef, _ = nnls(a, (measured - summed) / measured)
        fitted = summed + mb * coef[0]
        correction = KernelCorrection(float(coef[0]), len(points),
                                      float(np.mean(np.abs(fitted - measured) / measured) * 100),
                                      float(np.mean(np.abs(summed - measured) / measured) * 100))
    correction.save(table.folder)
    return correction
