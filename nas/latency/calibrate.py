"""Calibration: measure a few whole models on the device and fit the table's correction (``correction.json``).

Every space kind calibrates through ``calibrate_models``: a ``CalibrationModel`` names a model, lists its op keys
and exports its ONNX file; the device (``nas.latency.device.Device``, the table's own set-up) times the missing
ones interleaved. Each measured model is one row of ``calibration.csv`` in the device folder (its op keys,
measured p50), appended under the same lock discipline as the table, so calibration resumes and several spaces
(convolutional, dynamic-capacity) contribute to one correction, refitted over all rows whose keys the table holds.
The first calibration also keeps a few of its models as the device's reference models (``nas.latency.drift``).
Mixed-precision models (each assignment's measured time and its int8 compute, transition, transition-count and
saved-weight terms) add rows to ``mixed_calibration.csv``; ``fit_precision`` weighs those terms for the whole
device (non-negative least squares), saved in the same ``correction.json``. (The file of earlier versions,
``precision_calibration.csv``, lacks the saved-weight column; it is left alone, and a mixed model it held is
measured again the next time a search needs it.)
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nas.arch.opkey import OpKey
from nas.arch.space import Arch, Space
from nas.errors import LatencyTableError
from nas.files import atomic_path
from nas.latency.correction import (
    CalibrationPoint,
    Correction,
    PrecisionTerms,
    block_weight_mb,
    fit_correction,
    key_family,
    net_block_ms,
)
from nas.latency.device import Device, check_provider
from nas.latency.drift import pick_references, read_references, store_references
from nas.latency.layout import extra_reorders, layout_codes, read_layouts
from nas.latency.overhead import CallOverhead
from nas.latency.profile import key_is_identity, single_thread_torch
from nas.latency.quantize import quantize_int8
from nas.latency.table import LatencyTable, append_unique_row, read_csv_rows
from nas.latency.timing import LatencyStats, TimingConfig
from nas.models.builder import build_model
from nas.models.onnx_io import export_onnx

CALIBRATION_FILE = "calibration.csv"
CALIBRATION_COLUMNS = ("model_id", "space", "space_args", "arch", "keys", "measured_ms", "p90_ms", "count",
                       "stable", "timestamp")
PRECISION_FILE = "mixed_calibration.csv"
PRECISION_COLUMNS = ("model_id", "assignment", "int8_layers", "measured_ms", "fp32_measured_ms", "compute_delta_ms",
                     "transition_ms", "transitions", "weight_saved_mb", "timestamp")
PRECISION_TERMS = ("compute_delta_ms", "transition_ms", "transitions", "weight_saved_mb")  # PrecisionTerms' order


def measure_archs(space: Space, archs: list[Arch], device: Device, timing: TimingConfig | None = None,
                  on_export: Callable[[int], None] | None = None, bits: int = 32) -> list[LatencyStats]:
    """Export each arch's whole model to ONNX and time them end to end on ``device``, interleaved."""
    with tempfile.TemporaryDirectory(prefix="hwnas-model-") as tmp:
        paths = []
        for i, arch in enumerate(archs):
            paths.append(export_arch(space, arch, Path(tmp) / f"model{i}.onnx", bits))
            if on_export:
                on_export(i + 1)
        return device.time_files(paths, timing)


def export_arch(space: Space, arch: Arch, path: Path, bits: int = 32) -> Path:
    """The arch's whole model as ONNX (dynamic batch, exported on one torch thread); ``bits`` 8: every layer static
    int8 (QDQ, as the table's int8 blocks, ``nas.latency.quantize``)."""
    model = build_model(space, arch)
    if bits == 32:
        with single_thread_torch():
            return export_onnx(model, model.input_shape, path)
    if bits != 8:
        raise LatencyTableError(f"only bits 32 (fp32) and 8 (int8) whole models can be measured, not {bits}")
    fp32 = Path(path).with_name(Path(path).stem + ".fp32.onnx")
    with single_thread_torch():
        export_onnx(model, model.input_shape, fp32)
    with atomic_path(path) as tmp:
        quantize_int8(fp32, tmp, {"input": (1, *model.input_shape)})
    fp32.unlink()
    return Path(path)


CALIBRATION_MODELS = 16  # whole models timed to fit the correction: its up to 6 terms, with points to spare
MAX_CALIBRATION_MODELS = 100


def check_calibration_count(count: int) -> None:
    """LatencyTableError for a ``--calibration`` below 0 or above ``MAX_CALIBRATION_MODELS``."""
    if not 0 <= count <= MAX_CALIBRATION_MODELS:
        raise LatencyTableError(f"--calibration {count}: give 0 (no correction) to {MAX_CALIBRATION_MODELS} whole "
                                f"models ({CALIBRATION_MODELS} by default fit the correction's few terms)")


def calibration_archs(space: Space, count: int, seed: int = 12345) -> list[Arch]:
    """The largest arch, the cheapest (first candidate that is a skip, else the smallest op), and random ones whose
    share of skipped layers grows from none to most, so that the correction also fits the fast, skip-heavy archs
    that latency-constrained searches end up choosing (uniform samples skip only one layer in nine)."""
    rng = np.random.default_rng(seed)
    archs = [space.fixed_arch()]
    cheapest = [("skip" if "skip" in layer.candidates else layer.candidates[0]) for layer in space.layers]
    small = space.sample(rng)
    archs.append(type(small)(space.name, tuple(cheapest), small.channels, small.resolution))
    randoms = max(count - len(archs), 0)
    for i in range(randoms):
        arch = space.sample(rng)
        skip_share = 0.8 * i / max(randoms - 1, 1)
        ops = tuple(c if rng.random() >= skip_share else cheap for c, cheap in zip(arch.ops, cheapest))
        archs.append(type(arch)(space.name, ops, arch.channels, arch.resolution))
    return archs[:count]


def _model_id(space: Space, arch: Arch) -> str:
    return json.dumps({"space_args": space.space_args(), **arch.to_dict()}, sort_keys=True)


def read_calibration(folder: Path) -> list[dict]:
    path = Path(folder) / CALIBRATION_FILE
    rows = read_csv_rows(path)
    for i, row in enumerate(rows, start=2):
        try:
            row["measured_ms"] = float(row["measured_ms"])
            row["keys"] = [OpKey.parse(k) for k in row["keys"].split()]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise LatencyTableError(f"{path}: corrupt calibration row at line {i}") from None
    return rows


def append_calibration(folder: Path, row: dict) -> bool:
    """Append one calibration row under an exclusive lock, unless its model is already there."""
    return append_unique_row(Path(folder) / CALIBRATION_FILE, CALIBRATION_COLUMNS, row, ("model_id",))


# ---- mixed precision ------------------------------------------------------------------------------------------
def read_precision_rows(folder: Path) -> list[dict]:
    """The device's mixed-precision calibration rows (numbers as floats)."""
    path = Path(folder) / PRECISION_FILE
    rows = read_csv_rows(path)
    for i, row in enumerate(rows, start=2):
        try:
            for c in ("measured_ms", "fp32_measured_ms", *PRECISION_TERMS):
                row[c] = float(row[c])
        except (KeyError, TypeError, ValueError):
            raise LatencyTableError(f"{path}: corrupt precision calibration row at line {i}") from None
    return rows


def append_precision_row(folder: Path, row: dict) -> bool:
    """Append one mixed model's measurement (``PRECISION_COLUMNS``), unless that assignment is already there."""
    row = {**row, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")}
    return append_unique_row(Path(folder) / PRECISION_FILE, PRECISION_COLUMNS, row, ("model_id", "assignment"))


def precision_terms_matrix(rows: list[dict]) -> np.ndarray:
    terms = [[r[c] for c in PRECISION_TERMS] for r in rows]
    return np.asarray(terms, dtype=np.float64).reshape(-1, len(PRECISION_TERMS))


def fit_precision_terms(terms: np.ndarray, deltas: np.ndarray, models: int) -> PrecisionTerms:
    """``PrecisionTerms`` by non-negative least squares: ``deltas`` (measured - measured fp32, one per mixed model)
    ``= a * compute + b * transition_ms + c * transitions - d * weight_saved_mb`` (``terms``, one row per model)."""
    from scipy.optimize import nnls

    signs = np.sign(PrecisionTerms(1.0, 1.0, 1.0, 1.0).coef)  # a saved MB takes time away: its column enters negated
    coef, _ = nnls(np.asarray(terms, dtype=np.float64) * signs, np.asarray(deltas, dtype=np.float64))
    return PrecisionTerms(*(float(c) for c in coef), fitted_on=models)


def fit_precision(folder: Path) -> PrecisionTerms:
    """Weights of the mixed-precision terms, fitted on every mixed model measured on the device."""
    rows = read_precision_rows(folder)
    if not any(r["int8_layers"] not in ("0", 0) for r in rows):
        return PrecisionTerms()
    y = np.asarray([r["measured_ms"] - r["fp32_measured_ms"] for r in rows])
    return fit_precision_terms(precision_terms_matrix(rows), y, len({r["model_id"] for r in rows}))


def refit_precision(folder: Path) -> Correction:
    """Refit the device's precision terms into its correction.json (the rest of the correction kept)."""
    correction = Correction.load(folder)
    if correction is None:
        overhead = CallOverhead.load(folder)
        correction = Correction(base_ms=overhead.fixed_ms if overhead else 0.0)
    correction.precision = fit_precision(folder)
    correction.save(folder)
    return correction


def calibration_points(table: LatencyTable) -> list[CalibrationPoint]:
    """The calibration models whose keys the table holds, as per-family sums of net block times."""
    points = []
    layouts = read_layouts(table.folder)
    for row in read_calibration(table.folder):
        reorders = float(extra_reorders(layout_codes(row["keys"], layouts))[0]) if layouts else 0.0
        keys = [k for k in row["keys"] if not key_is_identity(k)]
        if any(k not in table for k in keys):
            continue
        net: dict[str, float] = {}
        blocks: dict[str, int] = {}
        for k in keys:
            r = table.get(k)
            f = key_family(k)
            net[f] = net.get(f, 0.0) + net_block_ms(r)
            blocks[f] = blocks.get(f, 0) + 1
        points.append(CalibrationPoint(net, blocks, sum(table.get(k)["p50_ms"] for k in keys), row["measured_ms"],
                                       reorders, sum(block_weight_mb(k, table.get(k)) for k in keys)))
    return points


def refit_correction(table: LatencyTable) -> Correction:
    """Fit the correction over every calibration model whose keys the table holds, and the precision terms over
    every mixed-precision calibration model; save correction.json."""
    overhead = CallOverhead.load(table.folder)
    correction = fit_correction(calibration_points(table), overhead.fixed_ms if overhead else 0.0)
    correction.precision = fit_precision(table.folder)
    if (old := Correction.load(table.folder)) is not None:  # a refit starts from rescale 1; the history stays
        correction.history = old.history
    correction.save(table.folder)
    return correction


@dataclass
class CalibrationModel:
    """One whole model measured for the device's correction: its identity, op keys and ONNX export."""

    model_id: str  # unique over every space measured on the device
    space: str
    space_args: dict
    decisions: dict  # the arch (or plan) as JSON
    keys: list[OpKey]
    export: Callable[[Path], Path]  # writes the model's ONNX file at the given path and returns it


def calibrate_models(table: LatencyTable, models: list[CalibrationModel], *, timing: TimingConfig | None = None,
                     on_progress: Callable[[int, int, str], None] | None = None) -> Correction:
    """Measure the ``models`` not yet in the device's calibration set (interleaved, with the table's own
    set-up), append them, keep a few as the device's reference models (``nas.latency.drift``) if it has none,
    and refit the correction."""
    measured = {r["model_id"]: r["measured_ms"] for r in read_calibration(table.folder)}
    todo = [m for m in models if m.model_id not in measured]
    skipped = len(models) - len(todo)
    if on_progress:
        on_progress(skipped, len(models), "already measured")
    with tempfile.TemporaryDirectory(prefix="hwnas-model-") as tmp:
        paths = {}
        for i, m in enumerate(todo, start=1):
            paths[m.model_id] = m.export(Path(tmp) / f"model{i}.onnx")
            if on_progress:
                on_progress(skipped + i, len(models), "exported")
        if todo:
            stats = Device.from_manifest(table.manifest).time_files([paths[m.model_id] for m in todo], timing)
            for m, st in zip(todo, stats):
                measured[m.model_id] = st.p50_ms
                append_calibration(table.folder, {
                    "model_id": m.model_id, "space": m.space, "space_args": json.dumps(m.space_args),
                    "arch": json.dumps(m.decisions), "keys": " ".join(str(k) for k in m.keys),
                    "measured_ms": f"{st.p50_ms:.6g}", "p90_ms": f"{st.p90_ms:.6g}", "count": st.count,
                    "stable": int(st.stable), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if not read_references(table.folder):
            picked = [models[i] for i in pick_references([measured[m.model_id] for m in models])]
            store_references(table.folder, [(m.model_id, paths.get(m.model_id) or m.export(Path(tmp) / f"ref{i}.onnx"),
                                             measured[m.model_id]) for i, m in enumerate(picked)])
    return refit_correction(table)


def arch_calibration_model(space: Space, arch: Arch, bits: int = 32) -> CalibrationModel:
    model_id = _model_id(space, arch) if bits == 32 else json.dumps({"bits": bits, **json.loads(_model_id(space, arch))},
                                                                    sort_keys=True)
    return CalibrationModel(model_id, space.name, space.space_args(), arch.to_dict(),
                            [OpKey.from_block(b, bits) for b in space.resolve(arch)],
                            lambda path: export_arch(space, arch, path, bits))


def calibrate(device: Device, space: Space, *, models: int = CALIBRATION_MODELS,
              tables_dir: str | Path | None = None,
              timing: TimingConfig | None = None, on_progress: Callable[[int, int, str], None] | None = None,
              bits: int = 32) -> Correction:
    """Measure ``models`` whole models of ``space`` (skipping those already measured; ``bits`` 8: static int8
    models, for a table of int8 keys) on ``device``, the set-up its table was profiled with, and refit the
    correction."""
    check_calibration_count(models)
    return calibrate_models(profiled_table(device, tables_dir),
                            [arch_calibration_model(space, a, bits) for a in calibration_archs(space, models)],
                            timing=timing, on_progress=on_progress)


def profiled_table(device: Device, tables_dir: str | Path | None = None) -> LatencyTable:
    """The table of ``device`` (its ``device_id``) to calibrate here; LatencyTableError unless it was profiled with
    this very set-up (provider, threads, optimisation, clock) and the provider runs here."""
    check_provider(device.provider)
    table = LatencyTable.open(device.device_id, tables_dir)
    profiled = Device.from_manifest(table.manifest)
    if profiled != device:
        raise LatencyTableError(f"device {device.device_id!r} was profiled with {profiled.describe()}; calibrate it "
                                f"with the same set-up, not {device.describe()}")
    return table
