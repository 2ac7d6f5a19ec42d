"""Device: where and how latency is measured, and the one timer every ``measured_ms`` comes from.

A ``Device`` is built from a latency table's manifest (execution provider, intra-op threads, graph optimisation
level, clock). It opens ONNX Runtime sessions with the table's set-up and times one or many ONNX files with the
table's interleaved algorithm (``remote_measure.time_interleaved``). The session set-up is
``remote_measure.open_session``, the same code the standalone ``measure.py`` in bundles runs, so a block timed
here, a whole model timed at the end of a search and a bundle timed on a phone are measured alike.

    device = Device.load("local-cpu")            # or lm.device, or Device.from_manifest(manifest)
    stats = device.time_file("results/demo/model.onnx")
    stats.p50_ms, stats.p90_ms, stats.stable
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from nas.errors import LatencyTableError
from nas.latency import remote_measure
from nas.latency.table import OPTIMIZATION_LEVELS, DeviceManifest, read_manifest
from nas.latency.timing import LatencyStats, TimingConfig, check_clock, time_interleaved

DEFAULT_PROVIDER = "CPUExecutionProvider"


def available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def check_provider(provider: str) -> None:
    """LatencyTableError naming the available providers unless ``provider`` runs on this machine."""
    if provider not in available_providers():
        raise LatencyTableError(f"execution provider {provider!r} is not available here "
                                f"(available: {', '.join(available_providers())})")


@dataclass
class TimedSession:
    """An open session with its random batch-1 feeds, ready to time; ``out_shape`` is its first output's shape."""

    session: object
    feeds: dict
    out_shape: tuple[int, ...]

    def run(self):
        return self.session.run(None, self.feeds)


@dataclass(frozen=True)
class Device:
    """A measurement set-up: provider, intra-op threads, graph optimisation level and clock."""

    provider: str = DEFAULT_PROVIDER
    threads: int = 1
    optimization: str = "all"
    clock: str = "wall"
    device_id: str | None = None
    remote: bool = False  # the table was measured elsewhere (a bundle); this machine's timings are not the device's
    batch: int = 1  # models (whose batch axis is dynamic) are timed on this many samples at once

    def __post_init__(self):
        if self.threads < 1:
            raise LatencyTableError(f"threads must be >= 1, got {self.threads}")
        if self.batch < 1:
            raise LatencyTableError(f"batch must be >= 1, got {self.batch}")
        if self.optimization not in OPTIMIZATION_LEVELS:
            raise LatencyTableError(f"graph optimisation level {self.optimization!r} is not one of "
                                    f"{', '.join(OPTIMIZATION_LEVELS)}")
        check_clock(self.clock, self.threads)

    @classmethod
    def from_manifest(cls, manifest: DeviceManifest) -> "Device":
        return cls(manifest.provider, manifest.threads, manifest.graph_optimization, manifest.clock,
                   manifest.device_id, manifest.remote, manifest.batch)

    @classmethod
    def load(cls, device_id: str, tables_dir: str | Path | None = None) -> "Device":
        """The set-up of a device's table; LatencyTableError if the device has no manifest."""
        return cls.from_manifest(read_manifest(device_id, tables_dir))

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The set-up in words: ``CPUExecutionProvider, 1 thread, optimisation 'all', wall clock``."""
        return (f"{self.provider}, {self.threads} thread{'s' if self.threads > 1 else ''}, optimisation "
                f"{self.optimization!r}, {self.clock} clock")

    def with_clock(self, clock: str) -> "Device":
        return replace(self, clock=clock)

    @property
    def runs_here(self) -> bool:
        """Whether this machine can time for the device (its provider is available)."""
        return self.provider in available_providers()

    def timing(self, timing: TimingConfig | None = None) -> TimingConfig:
        """``timing`` (default settings if None) with this device's clock."""
        return replace(timing or TimingConfig(), clock=self.clock)

    # ---- sessions ----------------------------------------------------------------------------------------------
    def session(self, model: str | Path | bytes):
        """An inference session on this device's provider, threads and optimisation level."""
        import onnxruntime as ort

        check_provider(self.provider)
        data = model if isinstance(model, bytes) else str(model)
        return remote_measure.open_session(ort, data, self.provider, self.threads, self.optimization)

    def open(self, model: str | Path | bytes, feeds: dict | None = None) -> TimedSession:
        """A session with random feeds at this device's batch (or ``feeds``), run once to learn the output shape."""
        sess = self.session(model)
        feeds = feeds if feeds is not None else remote_measure.random_feeds(sess, batch=self.batch)
        return TimedSession(sess, feeds, tuple(np.shape(sess.run(None, feeds)[0])))

    # ---- timing ------------------------------------------------------------------------------------------------
    def time_sessions(self, sessions: list[TimedSession], timing: TimingConfig | None = None,
                      on_round: Callable[[int], None] | None = None) -> list[LatencyStats]:
        """Time open sessions together in interleaved rounds with this device's clock."""
        return time_interleaved([s.run for s in sessions], self.timing(timing), on_round)

    def time_files(self, paths: list[str | Path], timing: TimingConfig | None = None,
                   on_round: Callable[[int], None] | None = None) -> list[LatencyStats]:
        """Time ONNX files on random inputs at this device's batch, interleaved; one ``LatencyStats`` per file."""
        return self.time_sessions([self.open(p) for p in paths], timing, on_round)

    def time_files_twice(self, paths: list[str | Path], timing: TimingConfig | None = None) -> list[LatencyStats]:
        """``time_files``, all of ``paths`` timed twice over and each file's faster record kept: whole models measured
        for a fit, where a slow spell of the machine over one pass would land on every model of it (as profiling
        does for blocks, ``remote_measure.fastest_of_passes``)."""
        sessions = [self.open(p) for p in paths]
        return remote_measure.fastest_of_passes(lambda indices: self.time_sessions([sessions[i] for i in indices],
                                                                                   timing),
                                                len(sessions), len(sessions), p50=lambda st: st.p50_ms)

    def time_file(self, path: str | Path, timing: TimingConfig | None = None) -> LatencyStats:
        return self.time_files([path], timing)[0]
