"""Call overhead: every ``session.run`` pays a fixed cost plus a cost per byte in and out, fitted on pass-through
graphs. A block timed in its own session pays it once per block, a whole model once."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from nas.errors import LatencyTableError
from nas.files import read_json_record, write_json
from nas.latency.device import Device
from nas.latency.timing import TimingConfig
from nas.models.onnx_io import OPSET

OVERHEAD_FILE = "call_overhead.json"


def passthrough_model(elements: int) -> bytes:
    """A graph whose output is a fresh copy of its input (``Relu`` of a non-negative input moves the bytes)."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, elements])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, elements])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "passthrough", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]).SerializeToString()


@dataclass
class CallOverhead:
    """Cost of one ``session.run`` that computes (almost) nothing: ``fixed_ms + per_mb_ms * MB moved``."""

    fixed_ms: float
    per_mb_ms: float
    points: list[tuple[float, float]]  # (MB in + out, p50 ms)

    def predict_ms(self, in_bytes: int, out_bytes: int) -> float:
        return self.fixed_ms + self.per_mb_ms * (in_bytes + out_bytes) / 1e6

    def save(self, folder: Path) -> None:
        write_json(Path(folder) / OVERHEAD_FILE, asdict(self))

    @classmethod
    def load(cls, folder: Path) -> "CallOverhead | None":
        path = Path(folder) / OVERHEAD_FILE
        return read_json_record(path, lambda d: cls(float(d["fixed_ms"]), float(d["per_mb_ms"]),
                                                    [tuple(p) for p in d.get("points", [])]),
                                lambda why: LatencyTableError(f"{path}: corrupt call-overhead file; delete it and "
                                                              f"rerun `hwnas latency profile`"))


def measure_call_overhead(device: Device, timing: TimingConfig | None = None,
                          sizes: tuple[int, ...] = (1, 50_000, 200_000, 600_000)) -> CallOverhead:
    """Time pass-through graphs of ``sizes`` float elements on ``device`` and fit the fixed and per-MB overhead."""
    sessions = [device.open(passthrough_model(n),
                            {"input": np.abs(np.random.default_rng(0).standard_normal((1, n))).astype(np.float32)})
                for n in sizes]
    stats = device.time_sessions(sessions, timing)
    return fit_call_overhead([(passthrough_mb(n), st.p50_ms) for n, st in zip(sizes, stats)])


def passthrough_mb(elements: int) -> float:
    """MB moved by one call of ``passthrough_model(elements)`` (float32 in and out)."""
    return 8 * elements / 1e6


def fit_call_overhead(points: list[tuple[float, float]]) -> CallOverhead:
    """Fit ``fixed_ms + per_mb_ms * MB`` to (MB, p50 ms) points (clipped at zero)."""
    mb, ms = np.array(points, dtype=np.float64).T
    slope, intercept = np.polyfit(mb, ms, 1) if len(points) > 1 else (0.0, float(ms[0]))
    return CallOverhead(float(max(intercept, 0.0)), float(max(slope, 0.0)), [tuple(map(float, p)) for p in points])
