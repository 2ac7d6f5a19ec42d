"""Width-scaling a fixed model (FBNet-A, MobileNetV2 ...) to a latency measured on a device.

What a user does instead of searching: take a published model and shrink or grow its width until it meets the
budget. The width multiplier is searched with the device's latency model (every width on a fine grid whose rounded
channels differ: the prediction of each), then confirmed by measurement: the model at the width predicted closest,
and its neighbours, are exported and timed interleaved with the reference model (the searched winner), the
prediction is rescaled by what the measurements say, and this repeats until the measured ratio is within the
tolerance or every width near the prediction has been timed. The width whose measured latency is closest to the
reference's wins.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from nas.arch.space import Space, load_space
from nas.latency.device import Device
from nas.latency.model import LatencyModel
from nas.latency.timing import TimingConfig
from nas.models.builder import build_model
from nas.models.onnx_io import export_onnx

WIDTHS = tuple(round(0.05 * 1.03 ** k, 4) for k in range(139))  # 0.05 to 3.0 in steps of 3% (latency: ~6%)
TOLERANCE = 0.05  # measured latency within +-5% of the reference's


@dataclass
class WidthChoice:
    """The chosen width, its figures, and every width timed on the way (``tried``: width, predicted ms, measured /
    reference ratio)."""

    width: float
    predicted_ms: float
    measured_ratio: float  # measured ms of the model at ``width`` / measured ms of the reference, same rounds
    within_tolerance: bool
    tried: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WidthChoice":
        return cls(**d)


def scaled_space(name: str, like: Space, width: float) -> Space:
    """The fixed model ``name`` at ``width`` and at ``like``'s resolution, classes and input channels."""
    return load_space(name, resolution=like.resolution, width_multiplier=width, classes=like.classes,
                      in_channels=like.in_channels)


class WidthGrid:
    """The fixed model ``name`` on the width grid, built and predicted only where the search looks (its predicted
    latency does not fall as the width grows, so a bisection finds where it crosses an aim)."""

    def __init__(self, name: str, like: Space, lm: LatencyModel):
        self.name, self.like, self.lm = name, like, lm
        self._models: dict[int, tuple[Space, tuple, float]] = {}

    def model(self, i: int) -> tuple[Space, tuple, float]:
        """(space, its rounded channels, predicted ms) at grid index ``i``."""
        if i not in self._models:
            space = scaled_space(self.name, self.like, WIDTHS[i])
            shape = tuple((b.c_in, b.c_out) for b in space.resolve(space.fixed_arch()))
            self._models[i] = (space, shape, self.lm.predict(space, space.fixed_arch()))
        return self._models[i]

    def crossing(self, aim_ms: float) -> int:
        """The first grid index predicted at ``aim_ms`` or more (the last index if none is)."""
        lo, hi = 0, len(WIDTHS) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.model(mid)[2] >= aim_ms:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def canonical(self, i: int) -> int:
        """The smallest grid index giving the same rounded channels as index ``i`` (how a model is named)."""
        while i > 0 and self.model(i - 1)[1] == self.model(i)[1]:
            i -= 1
        return i

    def candidates(self, aim_ms: float) -> list[int]:
        """The distinct models around ``aim_ms``: the last one predicted under it and the first at or over it."""
        first = self.canonical(self.crossing(aim_ms))
        return ([self.canonical(first - 1)] if first > 0 else []) + [first]

    def next_above(self, i: int) -> int | None:
        """The next distinct model after index ``i`` (None at the grid's end)."""
        j = i + 1
        while j < len(WIDTHS) and self.model(j)[1] == self.model(i)[1]:
            j += 1
        return j if j < len(WIDTHS) else None

    def nearest(self, width: float) -> int:
        return self.canonical(int(np.argmin(np.abs(np.log(np.asarray(WIDTHS) / width)))))

    def next_guess(self, ratios: dict[int, float]) -> int | None:
        """The next model to time from the measured ratios so far: inside the tightest bracket of the reference
        (log-ratio interpolated in log-width), else a step out from the closest (latency taken as width squared);
        None when no distinct model is left to try."""
        below, above = [i for i in ratios if ratios[i] < 1], [i for i in ratios if ratios[i] >= 1]
        if below and above:
            lo, hi = max(below), min(above)
            if lo > hi:  # the timings disagree with the ordering: nothing better to try
                return None
            t = -math.log(ratios[lo]) / (math.log(ratios[hi]) - math.log(ratios[lo]))
            guess = self.nearest(math.exp(math.log(WIDTHS[lo]) + t * (math.log(WIDTHS[hi]) - math.log(WIDTHS[lo]))))
            if not lo < guess < hi:
                guess = self.next_above(lo)
            return guess if guess is not None and lo < guess < hi else None
        closest = min(ratios, key=lambda i: abs(math.log(ratios[i])))
        guess = self.nearest(WIDTHS[closest] * ratios[closest] ** -0.5)
        if below:  # every one timed is faster: go wider than the widest timed
            widest = max(below)
            return guess if guess > widest else self.next_above(widest)
        narrowest = min(above)  # every one timed is slower: go narrower than the narrowest timed
        return guess if guess < narrowest else (self.canonical(narrowest - 1) if narrowest > 0 else None)


def scale_to_latency(name: str, like: Space, reference_onnx: str | Path, reference_ms: float, lm: LatencyModel,
                     device: Device, *, tolerance: float = TOLERANCE, rounds: int = 6,
                     timing: TimingConfig | None = None, on_round: Callable[[int, str], None] | None = None
                     ) -> WidthChoice:
    """The width of fixed model ``name`` (at ``like``'s resolution and classes) whose exported model measures
    closest to ``reference_onnx`` on ``device``: the latency model's guess around ``reference_ms`` (the
    reference's known measurement) first, then one model a round chosen from the measured ratios, each timed
    interleaved with the reference, until one is within ``tolerance`` or none is left to try."""
    grid = WidthGrid(name, like, lm)
    ratios: dict[int, float] = {}  # grid index -> measured ms / the reference's measured ms in the same rounds
    todo = grid.candidates(reference_ms)
    with tempfile.TemporaryDirectory(prefix="hwnas-width-") as tmp:
        for r in range(rounds):
            paths = [Path(reference_onnx)]
            for i in todo:
                space = grid.model(i)[0]
                model = build_model(space, space.fixed_arch()).eval()
                paths.append(export_onnx(model, model.input_shape, Path(tmp) / f"{name}_x{WIDTHS[i]:g}.onnx"))
            stats = device.time_files(paths, timing)
            ratios.update({i: st.p50_ms / stats[0].p50_ms for i, st in zip(todo, stats[1:])})
            if on_round:
                on_round(r + 1, f"{name}: {len(ratios)} widths timed")
            if min(abs(math.log(v)) for v in ratios.values()) <= math.log(1 + tolerance):
                break
            guess = grid.next_guess(ratios)
            if guess is None:
                break
            todo = [guess]
    best = min(ratios, key=lambda i: abs(math.log(ratios[i])))
    return WidthChoice(WIDTHS[best], grid.model(best)[2], ratios[best], abs(ratios[best] - 1) <= tolerance,
                       [{"width": WIDTHS[i], "predicted_ms": grid.model(i)[2], "measured_ratio": ratios[i]}
                        for i in sorted(ratios)])
