"""A new device's latency table from an existing device's table and a few whole models measured on the new one.

In the spirit of HELP (Lee et al., NeurIPS'21: a new device from ~10 measurements), device B's table is device A's,
transformed by a handful of parameters fitted on at most 20 whole models measured on B (here, or through a bundle
whose ``measure.py`` times them on B). B may be another thread count, batch size, graph optimisation level, int8
instead of fp32, or another machine. Each block of B costs

    cost_B(k) = a[op(k)] * net_A(k) + b * pw MMACs(k) + c * dw MMACs(k) + d * traffic MB(k) + e

(``net_A``: A's measured net time of the same op at fp32; MACs and bytes from the op's analytic cost,
``nas.latency.features``), and a whole model ``base + sum_k cost_B(k)``. The terms are what changes between
set-ups: a speed ratio per op (``a``: with graph optimisation off, a 5x5 depthwise block runs 3.5-5.6x its time
under A, a 3x3 one 2.1-3.3x; int8 speeds ops up unevenly), compute that speeds up by kind (pointwise convs gain most
from threads and int8, depthwise least), memory traffic (what an unfused graph or int8's Quantize / Dequantize
pairs add), and a per-block cost (dispatch, which batching amortises). The weights are fitted by least squares on
relative errors with every weight non-negative, so the model stays additive (DNAS's expected latency and every
search work on B's table unchanged) and no block costs less than nothing. The per-op ratios are pulled toward their
mean by a ridge penalty whose strength is chosen by leave-one-out error on B's own measurements (the strongest
penalty is one shared ratio, the model of earlier releases): 20 models do not pin a dozen ratios down unaided. An op
no measured model contains takes the mean ratio.

``adapt_device`` writes B as an ordinary device folder: ``table.csv`` (every key of A's table and of the space, at
B's precision; ``count`` 0 marks a row that was not measured alone), ``correction.json`` (``base``), the measured
models as ``calibration.csv`` rows, and, when they were measured here, the reference models a drift check and
``latency validate`` time against. The manifest's ``notes.adapted_from`` marks B: blocks are not profiled into it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from nas.arch.opkey import OpKey
from nas.arch.space import Arch, Space
from nas.errors import LatencyTableError
from nas.files import write_json
from nas.latency.calibrate import (
    append_calibration,
    arch_calibration_model,
    calibration_archs,
)
from nas.latency.correction import Correction
from nas.latency.device import Device
from nas.latency.drift import store_references
from nas.latency.features import analytic_cost
from nas.latency.model import LatencyModel
from nas.latency.profile import key_is_identity, space_layer_keys
from nas.latency.table import MANIFEST_FILE, TABLE_FILE, COLUMNS, DeviceManifest, device_dir, encode_row
from nas.latency.timing import TimingConfig

MAX_MEASUREMENTS = 20
TERMS = ("net_a_ms", "pw_mmacs", "dw_mmacs", "traffic_mb", "blocks")


@dataclass
class Measured:
    """One whole model measured on device B: its arch, its keys at B's precision and its time there."""

    model_id: str
    arch: dict
    keys: list[OpKey]
    measured_ms: float


def block_terms(source: LatencyModel, key: OpKey) -> np.ndarray:
    """A block's terms (``TERMS``) from device A's table and the op's analytic cost; zeros for identity blocks."""
    if key_is_identity(key):
        return np.zeros(len(TERMS))
    fp32 = key.with_bits(32)
    cost = analytic_cost(fp32)
    return np.array([source.net_ms(fp32), cost.get("pw_macs", 0) / 1e6, cost.get("dw_macs", 0) / 1e6,
                     cost["traffic"] / 1e6, 1.0])


RIDGE_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 100.0)  # penalties on (ratio - mean ratio); 100: one ratio


@dataclass
class Adaptation:
    """The fitted weights: ``ms = base_ms + sum over blocks of weights . block_terms``, with ``op_scale[op]`` in
    place of ``weights["net_a_ms"]`` (the mean ratio, used for ops no measured model contains)."""

    base_ms: float
    weights: dict[str, float]
    fitted_on: int
    fit_mape: float
    source_mape: float  # device A's own predictions against the same measurements
    op_scale: dict[str, float] = field(default_factory=dict)
    ridge: float | None = None  # the penalty leave-one-out chose
    loo_mape: float | None = None  # its leave-one-out error on the measurements (percent)

    def block_ms(self, terms: np.ndarray, op: str | None = None) -> float:
        w = np.array([self.weights[t] for t in TERMS])
        if op in self.op_scale:
            w[0] = self.op_scale[op]
        return float(terms @ w)


def _design(source: LatencyModel, measured: list[Measured]) -> tuple[np.ndarray, list[str]]:
    """One row per measured model (1 for the base, A's net time summed per op, then TERMS[1:] summed) and the ops
    of those columns: every op with a non-identity block in some measured model."""
    terms = [[(k.op, block_terms(source, k)) for k in m.keys] for m in measured]
    ops = sorted({op for model in terms for op, t in model if t.any()})
    rows = []
    for model in terms:
        per_op, shared = np.zeros(len(ops)), np.zeros(len(TERMS) - 1)
        for op, t in model:
            if t.any():
                per_op[ops.index(op)] += t[0]
                shared += t[1:]
        rows.append(np.concatenate([[1.0], per_op, shared]))
    return np.array(rows), ops


def _ridge_fit(x: np.ndarray, y: np.ndarray, n_ops: int, ridge: float) -> np.ndarray:
    """Non-negative weights minimising relative squared error plus ``ridge`` squared times the spread of the per-op
    ratios (columns 1..n_ops) around their mean."""
    from scipy.optimize import lsq_linear

    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    xs = x / scale / y[:, None]  # relative errors, each term on a unit scale
    penalty = np.zeros((n_ops, x.shape[1]))  # rows: (w_i - mean w) in the unscaled weights w = c / scale
    penalty[:, 1:1 + n_ops] = (np.eye(n_ops) - 1.0 / n_ops) / scale[1:1 + n_ops]
    a = np.vstack([xs, ridge * penalty])
    b = np.concatenate([np.ones(len(y)), np.zeros(n_ops)])
    return lsq_linear(a, b, bounds=(0, np.inf)).x / scale


def fit_adaptation(source: LatencyModel, measured: list[Measured]) -> Adaptation:
    """Fit the weights on B's whole-model measurements, the ridge penalty chosen by leave-one-out error."""
    if len(measured) < 3:
        raise LatencyTableError(f"adapting a device needs at least 3 whole models measured on it, got {len(measured)}")
    y = np.array([m.measured_ms for m in measured])
    x, ops = _design(source, measured)
    n = len(ops)
    loo = {}
    for ridge in RIDGE_GRID:
        errors = [abs(x[i] @ _ridge_fit(np.delete(x, i, 0), np.delete(y, i), n, ridge) / y[i] - 1)
                  for i in range(len(y))]
        loo[ridge] = float(np.mean(errors))
    ridge = min(RIDGE_GRID, key=lambda r: (round(loo[r], 6), -r))  # ties: the stronger penalty, the simpler model
    coef = _ridge_fit(x, y, n, ridge)
    fitted = x @ coef
    scales = coef[1:1 + n]
    source_ms = np.array([source.predict_keys([k.with_bits(32) for k in m.keys]).ms for m in measured])
    weights = {"net_a_ms": float(scales.mean()) if n else 0.0, **dict(zip(TERMS[1:], map(float, coef[1 + n:])))}
    return Adaptation(float(coef[0]), weights, len(measured), float(np.mean(np.abs(fitted - y) / y) * 100),
                      float(np.mean(np.abs(source_ms - y) / y) * 100), dict(zip(ops, map(float, scales))), ridge,
                      loo[ridge] * 100)


def adaptation_archs(space: Space, count: int, seed: int = 54321) -> list[Arch]:
    """The models measured on B: half the calibration set's spread (largest, cheapest, skip-heavy archs: the fit is
    well conditioned), half uniform samples of the space (what searches and validations meet)."""
    spread = calibration_archs(space, (count + 1) // 2, seed)
    rng = np.random.default_rng(seed + 1)
    return spread + [space.sample(rng) for _ in range(count - len(spread))]


def measure_here(space: Space, archs: list[Arch], device: Device, bits: int, folder: Path,
                 timing: TimingConfig | None = None) -> list[tuple[Measured, Path]]:
    """Export ``archs`` (at ``bits``) into ``folder`` and time them on ``device``, interleaved."""
    models = [arch_calibration_model(space, a, bits) for a in archs]
    paths = [m.export(folder / f"model{i}.onnx") for i, m in enumerate(models)]
    stats = device.time_files(paths, timing)
    return [(Measured(m.model_id, m.decisions, m.keys, st.p50_ms), p) for m, p, st in zip(models, paths, stats)]


def measured_from_results(results: dict, bits: int) -> list[Measured]:
    """The whole models of a bundle's results (``nas.latency.bundle``), keys at ``bits``."""
    out = []
    for item in results["manifest"]["models"]:
        st = results["models"].get(item["id"])
        if not st or not float(st.get("p50_ms", 0)) > 0:
            raise LatencyTableError(f"results file: model {item['id'][:60]} was not measured; finish measure.py first")
        keys = [OpKey.parse(k).with_bits(bits) for k in item["keys"]]
        out.append(Measured(item["id"], item["arch"], keys, float(st["p50_ms"])))
    return out


def adapt_device(source: LatencyModel, target: DeviceManifest, space: Space, measured: list[Measured], *,
                 bits: int = 32, tables_dir: str | Path | None = None,
                 reference_files: list[Path] | None = None) -> dict:
    """Write device B (``target``'s folder) from device A (``source``) and B's whole-model ``measured`` times;
    return a summary. Refuses an existing device; builds in a temporary folder and renames it into place."""
    if len(measured) > MAX_MEASUREMENTS:
        raise LatencyTableError(f"adapting uses at most {MAX_MEASUREMENTS} whole models, got {len(measured)}")
    final = device_dir(target.device_id, tables_dir)
    if final.exists():
        raise LatencyTableError(f"device {target.device_id!r} already exists ({final}); adapt into another --device")
    adaptation = fit_adaptation(source, measured)
    keys = {str(k): k for k in source.table.keys() if k.bits == 32 and not k.op.startswith("_")}
    keys |= {str(k): k for k in space_layer_keys(space)}
    target.notes = {**target.notes, "adapted_from": source.device_id, "measurements": len(measured), "bits": bits,
                    "space": space.name, "space_args": space.space_args(), "adaptation": asdict(adaptation)}
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".adapt-{target.device_id}-", dir=final.parent))
    try:
        write_json(tmp / MANIFEST_FILE, target.to_dict())
        lines = [",".join(COLUMNS) + "\n"]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        for key in keys.values():
            if key_is_identity(key):
                continue
            ms = max(adaptation.block_ms(block_terms(source, key), key.op), 1e-6)
            cost = analytic_cost(key)
            lines.append(encode_row(key.with_bits(bits), {
                "p50_ms": ms, "p90_ms": ms, "mean_ms": ms, "std_ms": 0.0, "count": 0, "spread": 0.0, "stable": False,
                "overhead_ms": 0.0, "macs": cost["macs"], "params": cost["params"], "in_bytes": 0, "out_bytes": 0,
                "timestamp": stamp}))
        (tmp / TABLE_FILE).write_text("".join(lines))
        Correction(base_ms=adaptation.base_ms, fitted_on=adaptation.fitted_on, fit_mape=adaptation.fit_mape).save(tmp)
        for m in measured:
            append_calibration(tmp, {"model_id": m.model_id, "space": space.name,
                                     "space_args": json.dumps(space.space_args()), "arch": json.dumps(m.arch),
                                     "keys": " ".join(str(k) for k in m.keys), "measured_ms": f"{m.measured_ms:.6g}",
                                     "p90_ms": f"{m.measured_ms:.6g}", "count": 0, "stable": 1, "timestamp": stamp})
        if reference_files:
            store_references(tmp, [(m.model_id, p, m.measured_ms) for m, p in zip(measured, reference_files)])
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"device": target.device_id, "adapted_from": source.device_id, "folder": str(final),
            "rows": len(lines) - 1, "bits": bits, **asdict(adaptation)}


def adapt_here(source: LatencyModel, target: DeviceManifest, space: Space, *, models: int = MAX_MEASUREMENTS,
               bits: int = 32, tables_dir: str | Path | None = None, timing: TimingConfig | None = None,
               on_progress: Callable[[str], None] | None = None) -> dict:
    """Measure ``models`` whole models of ``space`` on ``target``'s set-up here and adapt A's table to it."""
    if not 3 <= models <= MAX_MEASUREMENTS:
        raise LatencyTableError(f"--models must be 3 to {MAX_MEASUREMENTS}, got {models}")
    if bits not in (8, 32):
        raise LatencyTableError(f"bits must be 32 (fp32) or 8 (int8), got {bits}")
    if device_dir(target.device_id, tables_dir).exists():
        raise LatencyTableError(f"device {target.device_id!r} already exists; adapt into another --device")
    device = Device.from_manifest(target)
    with tempfile.TemporaryDirectory(prefix="hwnas-adapt-") as tmp:
        if on_progress:
            on_progress(f"exporting and timing {models} models")
        timed = measure_here(space, adaptation_archs(space, models), device, bits, Path(tmp), timing)
        return adapt_device(source, target, space, [m for m, _ in timed], bits=bits, tables_dir=tables_dir,
                            reference_files=[p for _, p in timed])
