"""Timing ONNX sessions for latency tables: interleaved rounds, a noise-robust median, and call overhead.

Measuring on a shared machine: other processes preempt the timed thread and evict its caches, in bursts
that last seconds. Timing one item after another lets a burst land on some items and not others, which
wrecks the ranking. So a group of items is timed in **interleaved rounds**: each round runs every item
(one untimed warm run, then ``runs_per_round`` timed runs) and keeps the round's median. An item is *stable*
once ``patience`` more rounds fail to lower its lowest round median by more than ``rel_tol``; rounds stop at
``max_rounds`` or the time cap. An item's ``p50_ms`` is the median of its uncontended runs, the fastest
twentieth (``remote_measure.uncontended_ms``): interference only ever adds time, and on a shared machine a thread
runs contended (1.5-2x slower) in a share of its runs that moves within seconds, which a median would follow.

``clock="cpu"`` times the calling thread's CPU time instead of wall time: with one intra-op thread ONNX
Runtime computes on the calling thread, so time spent preempted is not counted (threads == 1 only).

Every ``session.run`` also pays a fixed cost plus a cost per byte in and out. A block timed in its own session
pays it once per block, a whole model once; ``measure_call_overhead`` fits it on pass-through graphs.

Sessions are opened and timed by ``nas.latency.device.Device``; this module holds the settings (``TimingConfig``,
whose defaults are ``remote_measure.DEFAULT_TIMING``), the statistics and the call-overhead fit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from nas.errors import LatencyTableError
from nas.latency import remote_measure

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
    """One timed item: the median of its uncontended runs (``p50_ms``), p90, mean and spread of every timed run."""

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
        raise LatencyTableError(f"clock 'cpu' measures the calling thread and needs --ort-threads 1 (one ONNX Runtime "
                                f"thread), got {threads}")


def time_interleaved(runs: list[Callable[[], object]], timing: TimingConfig | None = None,
                     on_round: Callable[[int], None] | None = None) -> list[LatencyStats]:
    """Time each callable in interleaved rounds (see module doc); one ``LatencyStats`` per callable.

    The algorithm lives in ``remote_measure`` (standalone, shipped in bundles), so both sides time alike.
    """
    stats = remote_measure.time_interleaved(runs, asdict(timing or TimingConfig()), on_round)
    return [LatencyStats(**s) for s in stats]
