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
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from onnx import TensorProto, helper

from nas.errors import LatencyTableError
from nas.files import write_json
from nas.latency import remote_measure
from nas.onnx_io import OPSET, LatencyStats, make_session

OVERHEAD_FILE = "call_overhead.json"
CLOCKS = ("wall", "cpu")


@dataclass
class TimingConfig:
    warmup: int = 5  # untimed runs of each item before the first round
    round_ms: float = 6.0  # timed runs per round: enough to fill round_ms, within [min_runs, max_runs]
    min_runs: int = 5
    max_runs: int = 100
    min_rounds: int = 4
    max_rounds: int = 12
    patience: int = 2  # stable once this many rounds did not improve the estimate by more than rel_tol
    rel_tol: float = 0.01
    max_seconds: float = 3.0  # time cap per item (all rounds together)
    clock: str = "wall"


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


def random_feeds(sess, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        dtype = np.int64 if "int64" in inp.type else np.float32
        feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


@dataclass
class TimedSession:
    """A session with its random batch-1 feeds, ready to time; ``out_shape`` is its first output's shape."""

    session: object
    feeds: dict
    out_shape: tuple[int, ...]

    @classmethod
    def open(cls, path: str | Path, provider: str = "CPUExecutionProvider", threads: int = 1,
             optimization: str = "all") -> "TimedSession":
        sess = make_session(path, provider, threads, optimization)
        feeds = random_feeds(sess)
        return cls(sess, feeds, tuple(sess.run(None, feeds)[0].shape))

    def run(self):
        return self.session.run(None, self.feeds)


def time_sessions(sessions: list[TimedSession], timing: TimingConfig | None = None) -> list[LatencyStats]:
    return time_interleaved([s.run for s in sessions], timing)


def time_onnx_file(path: str | Path, provider: str = "CPUExecutionProvider", threads: int = 1,
                   optimization: str = "all", timing: TimingConfig | None = None
                   ) -> tuple[LatencyStats, tuple[int, ...]]:
    """Time one ONNX file on random batch-1 inputs; return the stats and the first output's shape."""
    ts = TimedSession.open(path, provider, threads, optimization)
    return time_sessions([ts], timing)[0], ts.out_shape


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


def measure_call_overhead(provider: str = "CPUExecutionProvider", threads: int = 1, optimization: str = "all",
                          timing: TimingConfig | None = None,
                          sizes: tuple[int, ...] = (1, 50_000, 200_000, 600_000)) -> CallOverhead:
    """Time pass-through graphs of ``sizes`` float elements and fit the fixed and per-MB call overhead."""
    sessions = []
    with tempfile.TemporaryDirectory(prefix="hwnas-overhead-") as tmp:
        for n in sizes:
            path = Path(tmp) / f"pass{n}.onnx"
            path.write_bytes(passthrough_model(n))
            sess = make_session(path, provider, threads, optimization)
            feeds = {"input": np.abs(np.random.default_rng(0).standard_normal((1, n))).astype(np.float32)}
            sessions.append(TimedSession(sess, feeds, (1, n)))
    stats = time_sessions(sessions, timing)
    return fit_call_overhead([(passthrough_mb(n), st.p50_ms) for n, st in zip(sizes, stats)])


def passthrough_mb(elements: int) -> float:
    """MB moved by one call of ``passthrough_model(elements)`` (float32 in and out)."""
    return 8 * elements / 1e6


def fit_call_overhead(points: list[tuple[float, float]]) -> CallOverhead:
    """Fit ``fixed_ms + per_mb_ms * MB`` to (MB, p50 ms) points (clipped at zero)."""
    mb, ms = np.array(points, dtype=np.float64).T
    slope, intercept = np.polyfit(mb, ms, 1) if len(points) > 1 else (0.0, float(ms[0]))
    return CallOverhead(float(max(intercept, 0.0)), float(max(slope, 0.0)), [tuple(map(float, p)) for p in points])
