"""Calibration: measure a few whole models on the device and fit the table's correction (``correction.json``).

Each measured model is one row of ``calibration.csv`` in the device folder (its op keys, measured p50), appended
under the same lock discipline as the table, so calibration resumes and several spaces can contribute. The
correction is refitted over all rows whose keys the table holds.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from nas.builder import build_model
from nas.errors import LatencyTableError
from nas.latency.correction import CalibrationPoint, Correction, fit_correction, key_family, net_block_ms
from nas.latency.opkey import OpKey
from nas.latency.device import Device, check_provider
from nas.latency.profile import key_is_identity, single_thread_torch
from nas.latency.table import LatencyTable, _locked, _read_from
from nas.latency.timing import CallOverhead, LatencyStats, TimingConfig
from nas.onnx_io import export_onnx
from nas.space import Arch, Space

CALIBRATION_FILE = "calibration.csv"
CALIBRATION_COLUMNS = ("model_id", "space", "space_args", "arch", "keys", "measured_ms", "p90_ms", "count",
                       "stable", "timestamp")


def measure_archs(space: Space, archs: list[Arch], device: Device, timing: TimingConfig | None = None,
                  on_export: Callable[[int], None] | None = None) -> list[LatencyStats]:
    """Export each arch's whole model to ONNX and time them end to end, interleaved (batch 1, random input)."""
    sessions = []
    with tempfile.TemporaryDirectory(prefix="hwnas-model-") as tmp:
        for i, arch in enumerate(archs):
            model = build_model(space, arch)
            with single_thread_torch():
                path = export_onnx(model, model.input_shape, Path(tmp) / f"model{i}.onnx")
            sessions.append(device.open(path))
            if on_export:
                on_export(i + 1)
    return device.time_sessions(sessions, timing)


def measure_arch(space: Space, arch: Arch, device: Device, timing: TimingConfig | None = None) -> LatencyStats:
    return measure_archs(space, [arch], device, timing)[0]


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
    if not path.is_file():
        return []
    rows = []
    reader = csv.DictReader(io.StringIO(path.read_text()))
    for i, row in enumerate(reader, start=2):
        try:
            row["measured_ms"] = float(row["measured_ms"])
            row["keys"] = [OpKey.parse(k) for k in row["keys"].split()]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise LatencyTableError(f"{path}: corrupt calibration row at line {i}") from None
        rows.append(row)
    return rows


def append_calibration(folder: Path, row: dict) -> bool:
    """Append one calibration row under an exclusive lock, unless its model is already there."""
    path = Path(folder) / CALIBRATION_FILE
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([row[c] for c in CALIBRATION_COLUMNS])
    with _locked(path, exclusive=True) as fd:
        data = _read_from(fd, 0)
        if data and not data.endswith(b"\n"):  # a writer killed mid-row: cut the torn row
            os.ftruncate(fd, data.rfind(b"\n") + 1)
            data = data[:data.rfind(b"\n") + 1]
        if not data:
            os.write(fd, (",".join(CALIBRATION_COLUMNS) + "\n").encode())
        elif any(r.get("model_id") == row["model_id"] for r in csv.DictReader(io.StringIO(data.decode()))):
            return False
        os.write(fd, buf.getvalue().encode())
    return True


def calibration_points(table: LatencyTable) -> list[CalibrationPoint]:
    """The calibration models whose keys the table holds, as per-family sums of net block times."""
    points = []
    for row in read_calibration(table.folder):
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
        points.append(CalibrationPoint(net, blocks, sum(table.get(k)["p50_ms"] for k in keys), row["measured_ms"]))
    return points


def refit_correction(table: LatencyTable) -> Correction:
    """Fit the correction over every calibration model whose keys the table holds; save correction.json."""
    overhead = CallOverhead.load(table.folder)
    correction = fit_correction(calibration_points(table), overhead.fixed_ms if overhead else 0.0)
    correction.save(table.folder)
    return correction


def calibrate(device: str, space: Space, *, models: int = 8, provider: str = "CPUExecutionProvider",
              threads: int = 1, tables_dir: str | Path | None = None, optimization: str = "all",
              timing: TimingConfig | None = None, on_progress: Callable[[int, int, str], None] | None = None,
              ) -> Correction:
    """Measure ``models`` whole models of ``space`` (skipping those already measured) and refit the correction."""
    check_provider(provider)
    table = LatencyTable.open(device, tables_dir)
    m = table.manifest
    if (m.provider, m.threads, m.graph_optimization) != (provider, threads, optimization):
        raise LatencyTableError(f"device {device!r} was profiled with {m.provider}, {m.threads} threads, "
                                f"optimisation {m.graph_optimization!r}; calibrate it with the same settings")
    done = {r["model_id"] for r in read_calibration(table.folder)}
    todo = [a for a in calibration_archs(space, models) if _model_id(space, a) not in done]
    if on_progress:
        on_progress(models - len(todo), models, "already measured")
    if todo:
        stats = measure_archs(space, todo, Device.from_manifest(m), timing,
                              on_export=lambda i: on_progress and on_progress(models - len(todo) + i, models,
                                                                              "exported"))
        for arch, st in zip(todo, stats):
            keys = " ".join(str(k) for k in (OpKey.from_block(b) for b in space.resolve(arch)))
            append_calibration(table.folder, {
                "model_id": _model_id(space, arch), "space": space.name,
                "space_args": json.dumps(space.space_args()), "arch": arch.to_json(), "keys": keys,
                "measured_ms": f"{st.p50_ms:.6g}", "p90_ms": f"{st.p90_ms:.6g}", "count": st.count,
                "stable": int(st.stable), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return refit_correction(table)
