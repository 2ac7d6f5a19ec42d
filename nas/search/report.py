"""``report.json``: one schema for every search, the builder every strategy fills, and the one verdict.

Every report has the same top-level keys (``SharedReport``): ``method``, ``device``, ``accuracy`` (test accuracy of
the shipped model, or the winner's objective for a table search), ``predicted_ms``, ``measured_ms`` (the shipped
``model.onnx`` timed by the table's ``Device``), ``prediction_error_pct`` (100 x (measured - predicted) /
predicted), ``onnx_max_abs_diff``, ``target`` (the latency target as given: ``2.5ms``, ``p40``, ``0.8x:fbnet_a``; see
``nas.search.targets``), ``target_ms`` (what it resolved to on the device), ``within_target``, ``judged_on``,
``measurement``, ``drift_pct``, ``warnings``, ``winner`` (``arch.json``) and ``model`` (``model.onnx``), both paths
relative to the run directory.
What only one method knows goes under a key of its own, the method's name with ``_`` for ``-`` (``dnas``,
``nars``, ``mixed_precision``, ``capacity``). A figure that is not a finite number is written as null, so the file
is strict JSON.

The verdict is judged here and nowhere else: ``within_target`` is ``measured_ms <= target_ms`` (``judged_on:
"measured"``) whenever the shipped file was timed on the device itself; only without such a measurement (a table
search, a device measured elsewhere) is it the prediction's (``judged_on: "predicted"``). The predicted figure stays
beside it. A broken bound, an unstable measurement (``Measurement.unstable``) and a drifted device
(``drift_pct``, see ``nas.latency.drift``) each add a warning that names what to run next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel, ConfigDict

from nas.files import finite_json
from nas.latency.measurement import Measurement
from nas.run import RunDir

WINNER = "arch.json"
MODEL = "model.onnx"
DRIFT_WARN_PCT = 5.0  # a device running this much faster or slower than at calibration makes predictions stale


class SharedReport(BaseModel):
    """The keys every report.json has (the method's own detail sits under ``detail_key(method)``)."""

    model_config = ConfigDict(extra="allow")

    method: str
    device: str | None
    accuracy: float | None
    predicted_ms: float | None
    measured_ms: float | None
    prediction_error_pct: float | None
    onnx_max_abs_diff: float | None
    target: str | None  # as given (``p40``); target_ms is what it resolved to
    target_ms: float | None
    within_target: bool | None
    judged_on: str | None  # "measured" | "predicted" | None (no target)
    measurement: dict | None
    drift_pct: float | None
    warnings: list[str]
    winner: str | None
    model: str | None


SHARED_KEYS = tuple(SharedReport.model_fields)


@dataclass(frozen=True)
class Remedies:
    """The commands a warning names: re-measure quietly, refit the drift, re-profile the device."""

    remeasure: str
    recalibrate: str
    reprofile: str


def latency_remedies(device: str, *, tables_dir: str | Path | None = None, model_path: str | Path | None = None,
                     reprofile: str | None = None, space=None) -> Remedies:
    """The commands for ``device`` (``model_path``: the shipped file; ``reprofile``: the profile command, else one
    made for ``space``, a ``nas.arch.space.Space``)."""
    tables = f" --tables-dir {tables_dir}" if tables_dir else ""
    model = model_path or f"RUN/{MODEL}"
    if reprofile is None:
        args = "" if space is None else (f" --resolution {space.resolution} --width {space.width_multiplier:g} "
                                         f"--classes {space.classes} --in-channels {space.in_channels}")
        reprofile = f"hwnas latency profile --space {space.name if space else 'SPACE'} --device {device}{args}{tables}"
    return Remedies(f"hwnas latency check --device {device} --model {model}{tables}",
                    f"hwnas latency check --device {device} --recalibrate{tables}", reprofile)


def judge(target_ms: float | None, predicted_ms: float | None, measured_ms: float | None,
          measurement: Measurement | None) -> tuple[bool | None, str | None]:
    """(within_target, judged_on): on the measurement when the shipped file was timed on the device, else on the
    prediction; (None, None) without a target."""
    if target_ms is None:
        return None, None
    if measured_ms is not None and (measurement is None or measurement.on_device):
        return bool(measured_ms <= target_ms * (1 + 1e-9)), "measured"
    if predicted_ms is not None:
        return bool(predicted_ms <= target_ms * (1 + 1e-9)), "predicted"
    return None, None


def verdict_warnings(target_ms: float | None, predicted_ms: float | None, measured_ms: float | None,
                     measurement: Measurement | None, within_target: bool | None, judged_on: str | None,
                     remedies: Remedies) -> list[str]:
    """What the user must know before shipping: a drifted device, a measurement taken elsewhere or too noisy to
    judge by, a broken bound; each names what to run."""
    out = []
    m = measurement
    if m is not None and m.drift_pct is not None and abs(m.drift_pct) > DRIFT_WARN_PCT:
        out.append(f"drift: the device runs {m.drift_pct:+.1f}% against its calibration ({m.drift_models} "
                   f"reference models re-timed before the final measurement), so predictions are off by about as "
                   f"much; refit the scale with `{remedies.recalibrate}`")
    if m is not None and not m.on_device:
        out.append(f"{m.note}; the verdict is judged on the prediction")
    if m is not None and m.unstable:
        why = "no stable median" if not m.stable else f"p90 {100 * m.tail:+.0f}% over p50"
        out.append(f"measurement unstable: model.onnx p50 {m.p50_ms:.4g} ms, p90 {m.p90_ms:.4g} ms ({why}); the "
                   f"figure says more about the machine than about the prediction or the model: rerun on a quiet "
                   f"machine (`{remedies.remeasure}`)")
    if within_target is False and judged_on == "measured":
        pred = "" if predicted_ms is None else f" (predicted {predicted_ms:.4g} ms)"
        tighter = f" to about {target_ms * target_ms / measured_ms:.3g} ms"
        noisy = "; the measurement was unstable, so re-measure first" if m is not None and m.unstable else ""
        out.append(f"measured {measured_ms:.4g} ms breaks the target {target_ms:g} ms{pred}{noisy}. Options: "
                   f"re-measure on a quiet machine (`{remedies.remeasure}`), tighten the target{tighter}, or "
                   f"re-profile the device (`{remedies.reprofile}`)")
    elif within_target is False and judged_on == "predicted":
        out.append(f"predicted {predicted_ms:.4g} ms breaks the target {target_ms:g} ms")
    elif within_target is False:
        out.append(f"the {judged_on} target is not met")
    return out


def detail_key(method: str) -> str:
    return method.replace("-", "_")


def prediction_error_pct(measured_ms: float | None, predicted_ms: float | None) -> float | None:
    if measured_ms is None or not predicted_ms:
        return None
    return 100.0 * (measured_ms - predicted_ms) / predicted_ms


def build_report(method: str, *, device: str | None, accuracy: float | None, predicted_ms: float | None,
                 measured_ms: float | None, onnx_max_abs_diff: float | None, target_ms: float | None, detail: dict,
                 measurement: Measurement | None = None, within_target: bool | None = None,
                 warnings: Iterable[str] = (), remedies: Remedies | None = None, winner: str | None = WINNER,
                 model: str | None = MODEL, target: str | None = None) -> dict:
    """The report: the shared keys (the verdict judged by ``judge``), then ``detail`` under the method's own key;
    checked against the schema.

    ``within_target`` is only for a target that is not a latency (mixed precision's size): a latency target
    (``target_ms``) is always judged here; ``target`` is the form it was given in (default: ``target_ms`` itself).
    ``warnings``: the method's own, listed before the verdict's."""
    if within_target is not None and target_ms is not None:
        raise ValueError("build_report: a latency target is judged on the measurement; pass within_target only "
                         "for a target that is not a latency")
    judged = (within_target, "size") if within_target is not None else \
        judge(target_ms, predicted_ms, measured_ms, measurement)
    remedies = remedies or latency_remedies(device or "DEVICE")
    notes = list(warnings) + verdict_warnings(target_ms, predicted_ms, measured_ms, measurement, *judged, remedies)
    shared = {"method": method, "device": device, "accuracy": accuracy, "predicted_ms": predicted_ms,
              "measured_ms": measured_ms, "prediction_error_pct": prediction_error_pct(measured_ms, predicted_ms),
              "onnx_max_abs_diff": onnx_max_abs_diff,
              "target": target if target is not None or target_ms is None else f"{float(target_ms)!r}ms",
              "target_ms": target_ms, "within_target": judged[0],
              "judged_on": judged[1], "measurement": None if measurement is None else measurement.to_dict(),
              "drift_pct": None if measurement is None else measurement.drift_pct,
              "warnings": list(dict.fromkeys(notes)), "winner": winner, "model": model}
    report = finite_json({**shared, detail_key(method): detail})
    SharedReport.model_validate(report)
    return report


def write_report(run: RunDir, report: dict) -> dict:
    run.write_json("report.json", report)
    return report
