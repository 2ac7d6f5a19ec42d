"""A model timed on its device: the figures a verdict is judged on."""

from __future__ import annotations

from dataclasses import asdict, dataclass

UNSTABLE_TAIL = 0.25  # (p90 - p50) / p50 above this: the measurement is too noisy to judge the model by


@dataclass
class Measurement:
    """The shipped model timed on the device: the figures its verdict is judged on."""

    p50_ms: float
    p90_ms: float
    stable: bool  # the timing reached a stable median
    spread: float  # (p90 - p10) / p50 of every timed run
    note: str = ""  # set when the figures are not the device's own (``nas.search.finalize.measuring_device``)
    drift_pct: float | None = None  # the device now against its calibration (``nas.latency.drift``)
    drift_models: int = 0  # reference models re-timed for ``drift_pct``
    relative_ms: float | None = None  # p50 at the device's calibration speed (timed with its reference models)

    @classmethod
    def from_stats(cls, stats, note: str = "", relative=None) -> "Measurement":
        """From a ``LatencyStats`` and, when the file was timed with the reference models, its
        ``nas.latency.relative.RelativeTiming`` (the drift and its time at calibration speed)."""
        if relative is None or not relative.references:
            return cls(float(stats.p50_ms), float(stats.p90_ms), bool(stats.stable), float(stats.spread), note)
        return cls(float(stats.p50_ms), float(stats.p90_ms), bool(stats.stable), float(stats.spread), note,
                   relative.drift_pct, len(relative.references), float(relative.relative_ms[0]))

    @property
    def tail(self) -> float:
        """(p90 - p50) / p50."""
        return (self.p90_ms - self.p50_ms) / self.p50_ms if self.p50_ms > 0 else float("inf")

    @property
    def unstable(self) -> bool:
        return not self.stable or self.tail > UNSTABLE_TAIL

    @property
    def on_device(self) -> bool:
        return not self.note

    def to_dict(self) -> dict:
        return {**asdict(self), "tail_pct": 100.0 * self.tail, "unstable": self.unstable}

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
