"""Reference-relative timing: a measurement expressed at the speed the device had when its table was calibrated.

A machine's speed wanders: turbo and thermal limits on a laptop, other tenants on a cloud VM, by 10% within a
minute on an idle VM. A model timed now against a table calibrated earlier then shows the machine's drift as
the table's error, and a drift check taken a minute apart from a validation can disagree with it in sign. So every
whole-model measurement (``latency validate``, ``latency check``, a search's final ``measure_shipped``) is timed
**interleaved** with the device's reference models (kept at calibration with the time they took then, see
``nas.latency.drift``) and expressed against them, by one code path (``time_with_references``):

    speed(m)          = now / expected (calibrated x the correction's rescale), per reference model
    log speed         = a + b log expected_ms           least squares over the references; b = 0 (a = the mean)
                                                        with fewer than 3 references, when they span less than 2x,
                                                        or when b is within two standard errors of 0 (a slope that
                                                        is noise would add noise); sizes are clamped to the
                                                        references' range (no extrapolation)
    relative_ms(x)    = now_ms(x) / speed(x's size at calibration)

A slowdown that is not uniform (per-call overhead and compute-bound convolutions slow down differently when a
neighbour thrashes the caches, or the clock drops) is followed across sizes by ``b``. A model's size at
calibration is its time now divided by its speed at that size (``SpeedFit.relative_ms`` solves it exactly).
``drift_pct`` is ``speed - 1`` at the middle of the references' sizes (their geometric mean), in per cent: what
``latency check`` reports and what ``--recalibrate`` folds into the correction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from nas.latency.device import Device
    from nas.latency.timing import LatencyStats, TimingConfig

MIN_SPAN = 2.0  # the references must span this ratio of sizes before the speed is fitted as a function of size
MAX_SLOPE = 0.5  # a steeper slope (speed changing half as fast as size, or faster) is not a drift: a constant then


@dataclass
class SpeedFit:
    """The device's speed now against calibration, as a function of a model's size (ms at calibration)."""

    a: float = 0.0  # log speed at 1 ms
    b: float = 0.0  # slope of log speed over log size
    lo_ms: float = 0.0  # the references' range of sizes (the fit is clamped to it)
    hi_ms: float = math.inf
    references: int = 0

    @classmethod
    def fit(cls, expected_ms, now_ms) -> "SpeedFit":
        """Fit on references: ``expected_ms`` (at calibration, rescaled) and ``now_ms`` (re-timed now)."""
        x = np.log(np.asarray(expected_ms, dtype=np.float64))
        y = np.log(np.asarray(now_ms, dtype=np.float64)) - x
        if len(x) == 0:
            return cls()
        lo, hi = float(np.exp(x.min())), float(np.exp(x.max()))
        if len(x) >= 3 and hi / lo >= MIN_SPAN:
            b, a = np.polyfit(x, y, 1)
            residual = y - (a + b * x)
            se = math.sqrt(float(residual @ residual) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
            if abs(b) > 2 * se and abs(b) <= MAX_SLOPE:
                return cls(float(a), float(b), lo, hi, len(x))
        return cls(float(np.mean(y)), 0.0, lo, hi, len(x))

    def speed(self, size_ms) -> np.ndarray:
        """now / calibrated for a model that took ``size_ms`` at calibration (scalar or array)."""
        x = np.log(np.clip(np.asarray(size_ms, dtype=np.float64), self.lo_ms, self.hi_ms))
        return np.exp(self.a + self.b * x)

    def relative_ms(self, now_ms) -> np.ndarray:
        """Times measured now, expressed at calibration speed (scalar or array): ``size = now / speed(size)``,
        solved exactly (``log size = (log now - a) / (1 + b)`` inside the references' range, the speed at its ends
        outside)."""
        now = np.asarray(now_ms, dtype=np.float64)
        inside = np.exp((np.log(now) - self.a) / (1 + self.b))
        return np.where(inside < self.lo_ms, now / self.speed(self.lo_ms),
                        np.where(inside > self.hi_ms, now / self.speed(self.hi_ms), inside))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RelativeTiming:
    """Files timed interleaved with the reference models: raw statistics, and the times at calibration speed."""

    stats: list["LatencyStats"]  # one per timed file, raw (now)
    relative_ms: list[float]  # each file's p50 at calibration speed
    speed: list[float]  # the speed each file was divided by
    fit: SpeedFit
    references: list[dict] = field(default_factory=list)  # per reference: expected_ms, measured_ms, drift_pct ...

    @property
    def drift_pct(self) -> float | None:
        """The fitted drift at the middle of the references' sizes, in per cent (None without references)."""
        if not self.references:
            return None
        return float(100.0 * (self.fit.speed(math.sqrt(self.fit.lo_ms * self.fit.hi_ms)) - 1))


def time_with_references(device: "Device", items: list, references: list[tuple[Path, float]],
                         timing: "TimingConfig | None" = None) -> RelativeTiming:
    """Time ``items`` (ONNX files, or ``TimedSession`` s opened elsewhere: single kernels) interleaved with the
    ``references`` ((ONNX file, expected ms at calibration) each) on ``device``, and express each item's p50 at
    calibration speed. Without references the raw times stand."""
    from nas.latency.device import TimedSession

    if not any(isinstance(i, TimedSession) for i in items):
        all_stats = device.time_files([*items, *(p for p, _ in references)], timing)
    else:
        sessions = [i if isinstance(i, TimedSession) else device.open(i) for i in items]
        all_stats = device.time_sessions([*sessions, *(device.open(p) for p, _ in references)], timing)
    stats, ref_stats = all_stats[:len(items)], all_stats[len(items):]
    rows = [{"file": Path(p).name, "expected_ms": float(ms), "measured_ms": st.p50_ms, "p90_ms": st.p90_ms,
             "stable": st.stable, "drift_pct": 100.0 * (st.p50_ms / ms - 1)}
            for (p, ms), st in zip(references, ref_stats)]
    fit = SpeedFit.fit([r["expected_ms"] for r in rows], [r["measured_ms"] for r in rows])
    raw = np.array([st.p50_ms for st in stats])
    if not rows:
        return RelativeTiming(stats, raw.tolist(), [1.0] * len(stats), fit, rows)
    relative = fit.relative_ms(raw)
    return RelativeTiming(stats, relative.tolist(), (raw / relative).tolist(), fit, rows)
