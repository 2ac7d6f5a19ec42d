"""Latency targets, absolute or relative to what the device can do: one syntax for every search, parsed and
resolved here and nowhere else.

A target is one of:

- ``2.5ms`` (or plain ``2.5``): milliseconds, what ``--target-ms 2.5`` says;
- ``p40``: the 40th percentile (``p1`` to ``p99``) of the space's predicted latency on the device: 40% of the
  space's candidates are predicted faster. The candidates are each search's own, drawn with its seed: random archs
  of the space (DNAS, DMasking; NARS, ChamNet and Optuna take their Sobol pool), every row of a ``table:`` space
  (its latency column), random bit assignments (mixed precision), random configs (dynamic capacity);
- ``0.8x:fbnet_c``: 0.8 times the predicted latency on the device of a named model (a fixed model, a space's
  largest arch, or an arch JSON), built at the search's resolution, width, classes and input channels. Capacity
  searches name their own space (its full-capacity config); a ``table:`` space has no models to name.

A relative target means the same on a phone, a laptop and a server, which are 10x apart in milliseconds. It
resolves to milliseconds from the device's table and the search's seed alone, so the same command on the same
table gives the same bound. Reports keep both: ``target`` (as given) and ``target_ms`` (what it resolved to).

Searches with several bounds (NARS, ChamNet, Optuna) take ``[DEVICE=]TARGET[,DEVICE=TARGET...]`` for each
constraint; a term without a device bounds every device, each at its own value (``p25`` is each device's own 25th
percentile).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from nas.errors import SearchError

SYNTAX = "MS[ms], pN (a percentile of the space's latency) or Fx:MODEL (a fraction of a model's latency)"
RANDOM_ARCHS = 1000  # random archs of a model space that percentiles are read from
_MS = re.compile(r"^(?P<v>[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?:ms)?$")
_PERCENTILE = re.compile(r"^p(?P<v>[0-9]*\.?[0-9]+)$")
_FRACTION = re.compile(r"^(?P<v>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)x:(?P<model>.+)$")
_TERM = re.compile(r"^(?:(?P<dev>[A-Za-z0-9._+\-\[\]]+)\s*=\s*)?(?P<target>[^=]+)$")


@dataclass(frozen=True)
class TargetForm:
    """A target as the user wrote it, parsed: ``kind`` is "ms", "percentile" or "fraction" (of ``model``)."""

    text: str
    kind: str
    value: float
    model: str | None = None

    @property
    def relative(self) -> bool:
        return self.kind != "ms"


@dataclass(frozen=True)
class Target:
    """A resolved target: the form given, the milliseconds it means on the device, and how they were found."""

    given: str
    ms: float
    basis: str = ""
    warnings: tuple[str, ...] = ()

    def describe(self) -> str:
        """``p40 = 0.0412 ms`` (relative) or ``2.5 ms``."""
        return f"{self.ms:g} ms" if self.given == f"{self.ms!r}ms" else f"{self.given} = {self.ms:.4g} ms"


def parse_target(text: str, flag: str = "--target") -> TargetForm:
    """One target; SearchError naming ``flag`` and the forms it takes. ``--target-ms`` takes milliseconds only."""
    raw = str(text).strip()
    low = raw.lower()
    if m := _MS.match(low):
        ms = float(m.group("v"))
        if not ms > 0:
            raise SearchError(f"{flag} {raw!r}: a latency target must be positive")
        return TargetForm(f"{ms!r}ms", "ms", ms)
    if flag == "--target-ms":
        raise SearchError(f"{flag} {raw!r}: give milliseconds (a number); relative targets go to --target "
                          f"({SYNTAX})")
    if m := _PERCENTILE.match(low):
        q = float(m.group("v"))
        if not 1 <= q <= 99:
            raise SearchError(f"{flag} {raw!r}: a percentile is p1 to p99")
        return TargetForm(f"p{q:g}", "percentile", q)
    if m := _FRACTION.match(raw):
        f = float(m.group("v"))
        if not f > 0:
            raise SearchError(f"{flag} {raw!r}: the fraction must be positive")
        return TargetForm(f"{f:g}x:{m.group('model')}", "fraction", f, m.group("model"))
    raise SearchError(f"{flag} {raw!r}: use {SYNTAX}, e.g. 2.5ms, p40 or 0.8x:fbnet_c")


def parse_bounds(text: str, devices: list[str] | None, flag: str = "--target"
                 ) -> list[tuple[str | None, TargetForm]]:
    """``[DEVICE=]TARGET[,DEVICE=TARGET...]`` -> (device or None for every device, target) per term; SearchError
    naming the text on a bad form or a device not in ``devices`` (None: not checked yet)."""
    out = []
    for term in str(text).split(","):
        m = _TERM.match(term.strip())
        if not m:
            raise SearchError(f"{flag} {text!r}: use TARGET or DEVICE=TARGET[,DEVICE=TARGET] ({SYNTAX})")
        dev = m.group("dev")
        if dev is not None and devices is not None and dev not in devices:
            raise SearchError(f"{flag} {text!r}: device {dev!r} is not one of the searched devices "
                              f"({', '.join(devices) or 'none'})")
        out.append((dev, parse_target(m.group("target"), flag)))
    return out


def given_targets(target: list[str] | str | None, target_ms: list[str] | str | float | None) -> list[str]:
    """What a command was given as its bounds (``--target`` or ``--target-ms``, not both), as target texts; each
    ``--target-ms`` value is checked to hold milliseconds only (``DEVICE=MS`` terms included)."""
    def listed(v) -> list:
        return [] if v is None else list(v) if isinstance(v, (list, tuple)) else [v]

    targets, ms = listed(target), listed(target_ms)
    if targets and ms:
        raise SearchError("give the latency target with --target or with --target-ms, not both")
    for text in ms:
        parse_bounds(str(text), None, "--target-ms")
    return [str(t) if not isinstance(t, (int, float)) else f"{float(t)!r}ms" for t in targets + ms]


@dataclass
class LatencyScale:
    """What relative targets are read off, for one search on one device: the predicted latency of the space's
    candidates (``sample``, drawn with the search's seed; ``candidates`` says what they are) and of named models
    (``reference``: None where a search has no models to name, with ``no_reference`` saying why)."""

    device: str
    candidates: str
    sample: Callable[[], np.ndarray]
    reference: Callable[[str], tuple[float, list[str]]] | None = None
    no_reference: str = "this search has no models to compare with"
    _sampled: np.ndarray | None = field(default=None, repr=False)

    def sample_ms(self) -> np.ndarray:
        if self._sampled is None:
            values = np.asarray(self.sample(), dtype=float).ravel()
            if not len(values) or not np.isfinite(values).all():
                raise SearchError(f"cannot read a percentile of {self.candidates} on device {self.device!r}: "
                                  f"no finite predicted latency")
            self._sampled = values
        return self._sampled


def resolve_target(form: TargetForm, scale: LatencyScale | None) -> Target:
    """The milliseconds ``form`` means on ``scale``'s device (4 significant digits for a relative form)."""
    if form.kind == "ms":
        return Target(form.text, form.value, "as given")
    if scale is None:
        raise SearchError(f"target {form.text!r} is relative to a device's latency, and this search has none: "
                          f"give milliseconds")
    if form.kind == "percentile":
        values = scale.sample_ms()
        ms = _round_up(np.percentile(values, form.value))
        return Target(form.text, ms, f"{_ordinal(form.value)} percentile of the predicted latency of "
                                     f"{scale.candidates} on {scale.device}")
    if scale.reference is None:
        raise SearchError(f"target {form.text!r}: {scale.no_reference}; use pN or milliseconds")
    model_ms, warnings = scale.reference(form.model)
    return Target(form.text, _round(form.value * model_ms),
                  f"{form.value:g} x {form.model} predicted at {model_ms:.4g} ms on {scale.device}",
                  tuple(f"target {form.text}: {w}" for w in warnings))


def resolve_one(text: str | None, scale: LatencyScale | Callable[[], LatencyScale] | None) -> Target | None:
    """A search's single target (None when none is given); ``scale`` may be a callable, built only when the
    target is relative."""
    if text is None:
        return None
    form = parse_target(text)
    if form.relative and callable(scale) and not isinstance(scale, LatencyScale):
        scale = scale()
    return resolve_target(form, scale if isinstance(scale, LatencyScale) else None)


def model_reference(lm, space) -> Callable[[str], tuple[float, list[str]]]:
    """A named model's predicted latency on ``lm``'s device at ``space``'s resolution, width, classes and input
    channels, with the prediction's warnings (blocks the table lacks are estimated, and said so)."""
    from nas.arch.space import resolve_model_ref

    def reference(name: str) -> tuple[float, list[str]]:
        args = space.space_args()
        ref_space, arch = resolve_model_ref(name, resolution=args["resolution"],
                                            width_multiplier=args["width_multiplier"], classes=args["classes"],
                                            in_channels=args["in_channels"])
        prediction = lm.predict_keys(lm.arch_keys(ref_space, arch))
        notes = [w for w in prediction.warnings if w not in lm.warnings]
        return prediction.ms, [f"{name}: {n}; profile it on this device for an exact bound" for n in notes]

    return reference


def _round(ms: float) -> float:
    return float(f"{float(ms):.4g}")


def _round_up(ms: float) -> float:
    """4 significant digits, never below ``ms``: a percentile of candidates that tie at the cheapest cost (a tiny
    capacity space's configs do) must still admit them."""
    rounded = _round(ms)
    if rounded < ms:
        rounded = _round(rounded + 10.0 ** (math.floor(math.log10(rounded)) - 3))
    return rounded


def _ordinal(q: float) -> str:
    n = f"{q:g}"
    if not n.isdigit():
        return n
    suffix = "th" if 10 <= int(n) % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(int(n) % 10, "th")
    return n + suffix
