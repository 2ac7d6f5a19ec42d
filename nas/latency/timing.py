"""Timing ONNX sessions for latency tables: interleaved rounds, a noise-robust median, and call overhead.

Measuring on a shared machine: other processes preempt the timed thread and evict its caches, in bursts
that last seconds. Timing one item after another lets a burst land on some items and not others, which
wrecks the ranking. So a group of items is timed in **interleaved rounds**: each round runs every item
(one untimed warm run, then ``runs_per_round`` timed runs) and keeps the round's median. An item's
``p50_ms`` is the lowest round median (the median of its quietest round): interference only ever adds time,
and on a quiet machine every round gives the same median. An item is *stable* once ``patience`` more rounds
fail to lower it by more than ``rel_tol``; rounds stop at ``max_rounds`` or the time cap.

``clock="cpu"`` times the calling thread's CPU time instead of wall time: with one intra-op thread ONNX
Runtime computes on the calling thread, so time spent preempted is not counted (threads == 1 only).

Every ``session.run`` also pays a fixed cost plus a cost per byte in and out. A block timed in its own session
pays it once per block, a whole model once; ``measure_call_overhead`` fits it on pass-through graphs.

Sessions are opened and timed by ``nas.latency.device.Device``; this module holds the settings (``TimingConfig``,
whose defaults are ``remote_measure.DEFAULT_TIMING``), the statistics and the call-overhead fit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from onnx import TensorProto, helper

from nas.errors import LatencyTableError
from nas.files import write_json
from nas.latency import remote_measure
from nas.onnx_io import OPSET

if TYPE_CHECKING:
    from nas.latency.device import Device

OVERHEAD_FILE = "call_overhead.json"
CLOCKS = ("wall", "cpu")
_DEFAULT = remote_measure.DEFAULT_TIMING  # the one set of defaults, shared with the standalone measure.py


@dataclass
class TimingConfig:
    warmup: int = _DEFAULT["warmup"]  # untimed runs of each item before the first round
    round_ms: float = _DEFAULT["round_ms"]  # timed runs per round: enough to fill round_ms, within [min_runs, max_runs]
    min_runs: int = _DEFAULT["min_runs"]
    max_runs: int = _DEFAULT["max_runs"]
    min_rounds: int = _DEFAULT["min_rounds"]
    max_rounds: int = _DEFAULT["max_rounds"]
    patience: int = _DEFAULT["patience"]  # stable once this many rounds did not improve by more than rel_tol
    rel_tol: float = _DEFAULT["rel_tol"]
    max_seconds: float = _DEFAULT["max_seconds"]  # time cap per item (all rounds together)
    clock: str = _DEFAULT["clock"]


@dataclass
class LatencyStats:
    """One timed item: the lowest round median (``p50_ms``), p90, mean and spread of every timed run."""

    p50_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    count: int
    spread: float  # (p90 - p10) / p50
    stable: bool

    def to_dict(self) -> dict:
        return asdict(self)


def check_clock(clock: str, threads: int) -> None:
    if clock not in CLOCKS:
        raise LatencyTableError(f"clock {clock!r} is not one of {', '.join(CLOCKS)}")
    if clock == "cpu" and threads != 1:
        raise LatencyTableError(f"clock 'cpu' measures the calling thread and needs --threads 1, got {threads}")


def time_interleaved(runs: list[Callable[[], object]], timing: TimingConfig | None = None,
                     on_round: Callable[[int], None] | None = None) -> list[LatencyStats]:
    """Time each callable in interleaved rounds (see module doc); one ``LatencyStats`` per callable.

    The algorithm lives in ``remote_measure`` (standalone, shipped in bundles), so both sides time alike.
    """
    stats = remote_measure.time_interleaved(runs, asdict(timing or TimingConfig()), on_round)
    return [LatencyStats(**s) for s in stats]


# ---- call overhead -------------------------------------------------------------------------------------------
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
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            return cls(float(d["fixed_ms"]), float(d["per_mb_ms"]), [tuple(p) for p in d.get("points", [])])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise LatencyTableError(f"{path}: corrupt call-overhead file; delete it and rerun "
                                    f"`hwnas latency profile`") from None


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
