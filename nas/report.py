"""``report.json``: one schema for every search, and the builder every strategy fills.

Every report has the same top-level keys (``SharedReport``): ``method``, ``device``, ``accuracy`` (test accuracy of
the shipped model, or the winner's objective for a table search), ``predicted_ms``, ``measured_ms`` (the shipped
``model.onnx`` timed by the table's ``Device``), ``prediction_error_pct`` (100 x (measured - predicted) /
predicted), ``onnx_max_abs_diff``, ``target_ms``, ``within_target``, ``winner`` (``arch.json``) and ``model``
(``model.onnx``), both paths relative to the run directory. What only one method knows goes under a key of its
own, the method's name with ``_`` for ``-`` (``dnas``, ``nars``, ``mixed_precision``, ``capacity``).
A figure that is not a finite number is written as null, so the file is strict JSON.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from nas.run import RunDir

WINNER = "arch.json"
MODEL = "model.onnx"


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
    target_ms: float | None
    within_target: bool | None
    winner: str | None
    model: str | None


SHARED_KEYS = tuple(SharedReport.model_fields)


def detail_key(method: str) -> str:
    return method.replace("-", "_")


def prediction_error_pct(measured_ms: float | None, predicted_ms: float | None) -> float | None:
    if measured_ms is None or not predicted_ms:
        return None
    return 100.0 * (measured_ms - predicted_ms) / predicted_ms


def finite(obj):
    """NaN and infinities as null, numpy scalars as Python numbers (strict JSON)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def build_report(method: str, *, device: str | None, accuracy: float | None, predicted_ms: float | None,
                 measured_ms: float | None, onnx_max_abs_diff: float | None, target_ms: float | None,
                 within_target: bool | None, detail: dict, winner: str | None = WINNER,
                 model: str | None = MODEL) -> dict:
    """The report: the shared keys, then ``detail`` under the method's own key; checked against the schema."""
    shared = {"method": method, "device": device, "accuracy": accuracy, "predicted_ms": predicted_ms,
              "measured_ms": measured_ms, "prediction_error_pct": prediction_error_pct(measured_ms, predicted_ms),
              "onnx_max_abs_diff": onnx_max_abs_diff, "target_ms": target_ms, "within_target": within_target,
              "winner": winner, "model": model}
    report = finite({**shared, detail_key(method): detail})
    SharedReport.model_validate(report)
    return report


def write_report(run: RunDir, report: dict) -> dict:
    run.write_json("report.json", report)
    return report
