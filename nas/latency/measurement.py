"""A model timed on its device: the figures a verdict is judged on, and where they were taken."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nas.latency.device import Device

UNSTABLE_TAIL = 0.25  # (p90 - p50) / p50 above this: the measurement is too noisy to judge the model by


@dataclass(frozen=True)
class MeasuringDevice:
    """Where a shipped model is timed from here: the ``device`` to time it with, whether its figures are the table's
    device's own (``on_device``) and, when they are not, why (``note``)."""

    device: Device
    on_device: bool = True
    note: str = ""


def measuring_device(device: Device) -> MeasuringDevice:
    """How to time a model for ``device`` on this machine: on the device itself, or on this CPU with a note when the
    table's provider is not available here, or when the table was measured elsewhere (a bundle)."""
    if not device.runs_here:
        return MeasuringDevice(Device(clock=device.clock, device_id=device.device_id), False,
                               f"device {device.device_id!r} uses {device.provider}, not available here: measured on "
                               f"this CPU instead")
    if device.remote:
        return MeasuringDevice(device, False, f"device {device.device_id!r} was measured elsewhere: measured_ms is "
                                              f"this machine's")
    return MeasuringDevice(device)


@dataclass
class Measurement:
    """The shipped model timed: the figures its verdict is judged on."""

    p50_ms: float
    p90_ms: float
    stable: bool  # the timing reached a stable median
    spread: float  # (p90 - p10) / p50 of every timed run
    on_device: bool = True  # timed on the table's device itself (else the verdict is judged on the prediction)
    note: str = ""  # why the figures are not the device's own (``MeasuringDevice.note``)
    drift_pct: float | None = None  # the device now against its calibration (``nas.latency.drift``)
    drift_models: int = 0  # reference models re-timed for ``drift_pct``
    relative_ms: float | None = None  # p50 at the device's calibration speed (timed with its reference models)

    @classmethod
    def from_stats(cls, stats, where: MeasuringDevice | None = None, drift=None, relative=None) -> "Measurement":
        """From a ``LatencyStats`` taken ``where`` (default: on the device) and either a ``DriftCheck`` (the
        reference models re-timed before) or, when the file was timed with the reference models, its
        ``nas.latency.relative.RelativeTiming`` (the drift and its time at calibration speed)."""
        on_device, note = (True, "") if where is None else (where.on_device, where.note)
        base = (float(stats.p50_ms), float(stats.p90_ms), bool(stats.stable), float(stats.spread), on_device, note)
        if relative is not None and relative.references:
            return cls(*base, relative.drift_pct, len(relative.references), float(relative.relative_ms[0]))
        return cls(*base, None if drift is None else drift.drift_pct, 0 if drift is None else len(drift.models))

    @property
    def tail(self) -> float:
        """(p90 - p50) / p50."""
        return (self.p90_ms - self.p50_ms) / self.p50_ms if self.p50_ms > 0 else float("inf")

    @property
    def unstable(self) -> bool:
        return not self.stable or self.tail > UNSTABLE_TAIL

    def to_dict(self) -> dict:
        return {**asdict(self), "tail_pct": 100.0 * self.tail, "unstable": self.unstable}

    @classmethod
    def from_dict(cls, d: dict) -> "Measurement":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
