"""Drift: a table measured hours ago can be off by the machine's drift, not by the model's error.

Calibration (``nas.latency.calibrate.calibrate_models``) keeps a few of the whole models it timed as **reference
models** (``reference/<id>.onnx`` in the device folder, listed in ``reference/references.json`` with the latency
measured then), spread over the calibration set from the smallest (overhead-bound) to the largest (compute-bound)
model. Every whole-model measurement on the device is timed interleaved with them and expressed at calibration speed
by one code path (``time_against_references``, see ``nas.latency.relative``): ``latency validate``, ``check_drift``
(``latency check``: the references alone, or with a shipped model) and ``measure_shipped`` (a search's final
measurement), so that the drift they read and the relative times they report agree in sign and size. The drift is
the references' speed now against calibration (times the correction's ``rescale``), fitted over their sizes, at the
middle of their range, minus 1, in per cent. ``recalibrate`` folds that ratio into the correction as one global rescale (base, scales and per-block
terms), keeping the old correction in its ``history``; a later refit from the stored measurements starts again from
``rescale`` 1. Bundles carry the calibration models (``nas.latency.bundle``), so a remote device is re-timed with its
``measure.py``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from nas.errors import LatencyTableError
from nas.files import atomic_path, write_json
from nas.latency.correction import Correction
from nas.latency.device import Device
from nas.latency.measurement import Measurement, MeasuringDevice
from nas.latency.relative import RelativeTiming, time_with_references
from nas.latency.table import LatencyTable
from nas.latency.timing import TimingConfig

REFERENCE_DIR = "reference"
REFERENCE_INDEX = "references.json"
REFERENCE_MODELS = 5


# ---- the stored reference models --------------------------------------------------------------------------------
def reference_dir(folder: Path) -> Path:
    return Path(folder) / REFERENCE_DIR


def read_references(folder: Path) -> list[dict]:
    """The device's reference models: ``model_id``, ``file`` (in ``reference/``), ``measured_ms`` at calibration,
    ``timestamp``; only those whose file is there."""
    path = reference_dir(folder) / REFERENCE_INDEX
    if not path.is_file():
        return []
    try:
        refs = json.loads(path.read_text())["models"]
        return [r for r in refs if (reference_dir(folder) / r["file"]).is_file() and float(r["measured_ms"]) > 0]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise LatencyTableError(f"{path}: corrupt reference list; delete the folder {path.parent} and rerun the "
                                f"calibration (`hwnas latency profile`)") from None


def pick_references(measured_ms: list[float], count: int = REFERENCE_MODELS) -> list[int]:
    """Indices of ``count`` models spread evenly by rank over the measured range, the smallest (dominated by call
    overhead) and the largest (compute-bound) included, so that a slowdown that differs with size can be fitted."""
    order = [int(i) for i in np.argsort(measured_ms, kind="stable")]
    n = len(order)
    if n <= count:
        return order
    return [order[r] for r in sorted({int(round(q * (n - 1))) for q in np.linspace(0.0, 1.0, count)})]


def store_references(folder: Path, models: list[tuple[str, Path, float]]) -> list[dict]:
    """Keep a few of the (model_id, ONNX file, measured ms) just calibrated as the device's reference models,
    unless it has them already (a drift baseline must stay the same over time)."""
    refs = read_references(folder)
    if refs or not models:
        return refs
    out = reference_dir(folder)
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    for i in pick_references([ms for _, _, ms in models]):
        model_id, path, ms = models[i]
        name = hashlib.sha1(model_id.encode()).hexdigest()[:16] + ".onnx"
        with atomic_path(out / name) as tmp:
            shutil.copyfile(path, tmp)
        refs.append({"model_id": model_id, "file": name, "measured_ms": float(ms), "timestamp": stamp})
    write_json(out / REFERENCE_INDEX, {"models": refs})
    return refs


# ---- the check ----------------------------------------------------------------------------------------------------
@dataclass
class DriftCheck:
    """The reference models re-timed now against their calibration (and a shipped model timed with them)."""

    device: str
    drift_pct: float  # the references' fitted now / expected - 1 at the middle of their sizes, in per cent
    rescale: float  # the correction's rescale the expectation includes
    models: list[dict]  # model_id, file, calibrated_ms, expected_ms, measured_ms, p90_ms, stable, drift_pct
    model: dict | None = None  # the extra model's LatencyStats and relative_ms (``check_drift(model=...)``)
    speed: dict = field(default_factory=dict)  # the fitted SpeedFit (``nas.latency.relative``)
    checked: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))

    @property
    def stable(self) -> bool:
        return all(m["stable"] for m in self.models)

    def to_dict(self) -> dict:
        return asdict(self)


def local_device(table: LatencyTable) -> Device:
    """The table's Device, when this machine is that device; LatencyTableError otherwise."""
    device = Device.from_manifest(table.manifest)
    if device.remote or not device.runs_here:
        raise LatencyTableError(f"device {table.device_id!r} was measured elsewhere ({device.provider}"
                                f"{', a bundle' if device.remote else ''}): re-time its calibration models there "
                                f"with the bundle's measure.py")
    return device


def check_onnx_file(path: Path) -> None:
    """LatencyTableError when ``path`` is missing or not an ONNX model (checked before any timing)."""
    import onnx

    if not path.is_file():
        raise LatencyTableError(f"--model {path}: no such file (give the shipped model.onnx)")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        reason = "" if proto.graph.output else "it holds no graph"  # protobuf reads many byte strings as empty
    except Exception as e:  # protobuf's DecodeError and friends
        reason = " ".join(str(e).split())[:120] or type(e).__name__
    if reason:
        raise LatencyTableError(f"--model {path}: not an ONNX model ({reason})")


def time_against_references(table: LatencyTable, paths: list[str | Path], device: Device | None = None,
                            timing: TimingConfig | None = None) -> RelativeTiming:
    """Time ``paths`` on ``device`` (default: the table's own, here) interleaved with the table's reference models,
    and express them at calibration speed (``nas.latency.relative``); the raw times stand when the table keeps no
    references. The one code path of ``latency validate``, ``latency check`` and ``measure_shipped``."""
    device = device or local_device(table)
    refs = read_references(table.folder)
    rescale = (Correction.load(table.folder) or Correction()).rescale
    timed = time_with_references(device, list(paths), [(reference_dir(table.folder) / r["file"],
                                                        float(r["measured_ms"]) * rescale) for r in refs], timing)
    for r, row in zip(refs, timed.references):
        row |= {"model_id": r["model_id"], "file": r["file"], "calibrated_ms": float(r["measured_ms"])}
    return timed


def check_drift(table: LatencyTable, *, model: str | Path | None = None, timing: TimingConfig | None = None
                ) -> DriftCheck:
    """Re-time the device's reference models (and ``model``, interleaved with them) on the table's Device."""
    if model is not None:
        check_onnx_file(Path(model))
    if not read_references(table.folder):
        raise LatencyTableError(f"device {table.device_id!r} has no reference models ({reference_dir(table.folder)}):"
                                f" rerun its calibration (`hwnas latency profile ... --device {table.device_id}`, "
                                f"measured blocks are skipped) to store them")
    timed = time_against_references(table, [model] if model else [], timing=timing)
    extra = {**timed.stats[0].to_dict(), "relative_ms": timed.relative_ms[0]} if model else None
    correction = Correction.load(table.folder) or Correction()
    return DriftCheck(table.device_id, timed.drift_pct, correction.rescale, timed.references, extra,
                      timed.fit.to_dict())


def recalibrate(table: LatencyTable, check: DriftCheck) -> Correction:
    """Fold the drift into the device's correction (one global rescale) and save it; the old correction goes to
    its ``history``."""
    correction = Correction.load(table.folder) or Correction()
    factor = 1.0 + check.drift_pct / 100.0
    if not factor > 0:
        raise LatencyTableError(f"device {table.device_id!r}: drift {check.drift_pct:+.1f}% cannot be a rescale")
    old = {k: v for k, v in asdict(correction).items() if k != "history"}
    new = replace(correction, base_ms=correction.base_ms * factor, scale=correction.scale * factor,
                  per_block_ms=correction.per_block_ms * factor, per_reorder_ms=correction.per_reorder_ms * factor,
                  per_weight_mb_ms=correction.per_weight_mb_ms * factor,
                  family_scale={f: s * factor for f, s in correction.family_scale.items()},
                  family_per_block_ms={f: s * factor for f, s in correction.family_per_block_ms.items()},
                  precision=replace(correction.precision,
                                    per_transition_ms=correction.precision.per_transition_ms * factor,
                                    per_saved_weight_mb_ms=correction.precision.per_saved_weight_mb_ms * factor),
                  rescale=correction.rescale * factor,
                  history=[*correction.history, {"replaced": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                 "reason": f"latency check --recalibrate: drift "
                                                           f"{check.drift_pct:+.2f}%", "correction": old}])
    new.save(table.folder)
    return new


# ---- the searches' final measurement ------------------------------------------------------------------------------
def references_apply(table: LatencyTable | None, device: Device) -> bool:
    """Whether ``device`` is ``table``'s own set-up here and the table keeps reference models."""
    if table is None or not read_references(table.folder):
        return False
    try:
        return local_device(table) == device
    except LatencyTableError:
        return False


def drift_before_measuring(table: LatencyTable | None, device: Device) -> DriftCheck | None:
    """The drift check before timing several files apart (the mixed-precision search's baselines): None when the
    table keeps no reference models or ``device`` is not the table's own set-up here."""
    return check_drift(table) if references_apply(table, device) else None


def measure_shipped(path: str | Path, where: MeasuringDevice, *, table: LatencyTable | None = None,
                    timing: TimingConfig | None = None) -> Measurement:
    """Time the shipped model ``where`` (``measurement.measuring_device``): on the device itself, interleaved with
    ``table``'s reference models when it is the table's own set-up here (the drift and the model's time at
    calibration speed come with it)."""
    if not where.on_device or not references_apply(table, where.device):
        return Measurement.from_stats(where.device.time_file(path, timing), where)
    timed = time_against_references(table, [path], where.device, timing)
    return Measurement.from_stats(timed.stats[0], where, relative=timed)
