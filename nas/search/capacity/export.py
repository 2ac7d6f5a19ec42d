"""Export a dynamic-capacity model at one plan to ONNX, check it against torch, and time it like the tables.

Token pruning is in the graph as TopK + Gather (rows of a flattened index) and the experts' capacities as
TopK + a Gather of rows + a one-hot combine MatMul, so later blocks really run on fewer tokens in ONNX Runtime.
Timing is the device table's ``Device`` (provider, threads, graph optimisation, clock), so measured and
predicted latency compare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nas.data.splits import Split
from nas.latency.device import Device
from nas.latency.table import DeviceManifest
from nas.latency.timing import TimingConfig
from nas.models.onnx_io import export_onnx
from nas.search.capacity.config import StaticPlan
from nas.search.capacity.vit import ConfiguredViT, DynamicViT
from nas.train.engine import Engine
from nas.train.evaluation import split_parity


def export_plan(model: DynamicViT, plan: StaticPlan, path: str | Path) -> Path:
    """Write ``path`` (batch-dynamic ONNX, opset 17) for the model fixed to ``plan``; atomic."""
    return export_onnx(ConfiguredViT(model, plan).eval(), model.input_shape, path)


def _device(manifest: DeviceManifest | None) -> Device:
    return Device() if manifest is None else Device.from_manifest(manifest)


def measure_onnx_ms(path: str | Path, manifest: DeviceManifest | None = None, rounds: int = 1,
                    timing: TimingConfig | None = None) -> dict:
    """Batch-1 latency of an ONNX file on the device whose table ``manifest`` describes (a local CPU without one).

    With ``rounds > 1`` the file is timed that many times (fresh sessions) and the median p50 is reported,
    which resists bursts of load from other processes on a shared machine.
    """
    return interleaved_ms({"model": Path(path)}, manifest, rounds, timing)["model"]


def interleaved_ms(paths: dict[str, Path], manifest: DeviceManifest | None = None, rounds: int = 3,
                   timing: TimingConfig | None = None) -> dict[str, dict]:
    """Time all files together on the device (``Device.time_files``), ``rounds`` times with fresh sessions in
    alternating order; per file the median p50."""
    device = _device(manifest)
    names = list(paths)
    samples: dict[str, list] = {name: [] for name in names}
    for r in range(max(1, rounds)):
        order = names if r % 2 == 0 else names[::-1]
        for name, stats in zip(order, device.time_files([paths[n] for n in order], timing)):
            samples[name].append(stats)
    result = {}
    for name, runs in samples.items():
        p50 = [s.p50_ms for s in runs]
        result[name] = {"measured_ms": float(np.median(p50)),
                        "measured_p90_ms": float(np.median([s.p90_ms for s in runs])),
                        "measured_min_ms": float(np.min(p50)), "measured_max_ms": float(np.max(p50)),
                        "measured_count": int(sum(s.count for s in runs)), "measured_rounds": len(runs),
                        "measured_stable": all(s.stable for s in runs), "clock": device.clock,
                        "provider": device.provider, "threads": device.threads}
    return result


def onnx_parity(model: DynamicViT, plan: StaticPlan, path: str | Path, split: Split,
                engine: Engine | None = None) -> dict:
    """The model at ``plan`` against its ONNX file over a whole split, streamed (``nas.train.evaluation.split_parity``;
    ONNX Runtime on one thread: parity, not speed): ``accuracy`` (torch), ``accuracy_onnx``, ``onnx_max_abs_diff`` and
    ``onnx_top1_agreement``."""
    parity = split_parity(ConfiguredViT(model, plan), {"onnx": Device().session(path)}, split, engine=engine)
    return {"accuracy": parity.accuracy, **parity.files["onnx"]}
