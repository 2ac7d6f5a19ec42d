"""Validation: random archs measured end to end in ONNX Runtime against the LatencyModel's prediction.

Each arch's whole model is exported to ONNX and timed by the table's ``Device`` (its provider, threads,
optimisation, clock and batch), interleaved with the device's reference models and expressed at calibration speed
(``nas.latency.drift.time_against_references``, the code path ``latency check`` and a search's final measurement
take too): ``measured_ms`` is that relative time, ``raw_ms`` the time now, and the drift the references read is
reported beside the figures. The figures: fraction of archs within +-5% and +-10%, MAPE, mean bias, Kendall tau of
the prediction and of FLOPs (MACs) against the measurement, the same for the naive sum of table p50s, and the raw
times' bias and tau, for comparison. Rows are written to ``validation.csv`` after every chunk, so an interrupted
validation resumes from its run directory.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from nas.arch.space import Arch, Space
from nas.files import new_figure, save_figure
from nas.latency.calibrate import export_arch
from nas.latency.drift import references_apply, time_against_references
from nas.latency.model import LatencyModel
from nas.latency.profile import key_is_identity, single_thread_torch
from nas.latency.timing import TimingConfig
from nas.models.blocks import make_block
from nas.models.builder import count_macs
from nas.run import RunDir

VALIDATION_FILE = "validation.csv"


def validation_archs(space: Space, samples: int, seed: int = 0) -> list[Arch]:
    rng = np.random.default_rng(seed)
    return [space.sample(rng) for _ in range(samples)]


def naive_sum_ms(lm: LatencyModel, keys) -> float:
    """The uncorrected sum of table p50s (what a plain lookup table predicts), NaN if a key is missing."""
    rows = [lm.table.get(k) for k in keys if not key_is_identity(k)]
    return float("nan") if any(r is None for r in rows) else float(sum(r["p50_ms"] for r in rows))


def arch_macs(lm: LatencyModel, keys) -> int:
    """MACs of the whole model: the table's per-block counts (torch.utils.flop_counter at profiling time),
    counted afresh for blocks the table lacks."""
    total = 0
    for key in keys:
        if key_is_identity(key):
            continue
        row = lm.table.get(key)
        if row is None or not row["macs"]:
            with single_thread_torch():
                total += count_macs(make_block(key.op, key.c_in, key.c_out, key.stride),
                                    (key.c_in, key.resolution, key.resolution))
        else:
            total += row["macs"]
    return total


def accuracy(predicted, measured) -> dict:
    """How well ``predicted`` matches ``measured`` (arrays of ms): within +-5% / +-10%, MAPE, mean bias, largest
    error and Kendall tau."""
    pred, meas = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    rel = (pred - meas) / meas
    return {"within_10pct": float(np.mean(np.abs(rel) <= 0.10)), "within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
            "mape": float(np.mean(np.abs(rel)) * 100), "mean_bias_pct": float(np.mean(rel) * 100),
            "max_abs_error_pct": float(np.max(np.abs(rel)) * 100), "kendall_tau": kendall_tau(pred, meas)}


def summarize(frame: pd.DataFrame) -> dict:
    """Accuracy figures of the predictions in ``frame`` (columns measured_ms, predicted_ms, naive_ms, macs; raw_ms
    and speed where the models were timed with reference models)."""
    meas, pred = frame["measured_ms"].to_numpy(), frame["predicted_ms"].to_numpy()
    out = {"samples": int(len(frame)), **accuracy(pred, meas),
           "flops_kendall_tau": kendall_tau(frame["macs"].to_numpy(), meas),
           "estimated_archs": int((frame["estimated_blocks"] > 0).sum()),
           "measured_ms_range": [float(meas.min()), float(meas.max())]}
    if "raw_ms" in frame and frame["raw_ms"].notna().all():
        raw = frame["raw_ms"].to_numpy()
        fit = accuracy(pred, raw)
        out |= {"drift_pct": float((np.median(frame["speed"]) - 1) * 100),
                "models_drift_pct": float((np.median(raw / pred) - 1) * 100),
                "raw_within_10pct": fit["within_10pct"], "raw_mean_bias_pct": fit["mean_bias_pct"],
                "raw_kendall_tau": fit["kendall_tau"]}
    naive = frame["naive_ms"].to_numpy()
    if np.isfinite(naive).all():
        nrel = (naive - meas) / meas
        out |= {"naive_within_10pct": float(np.mean(np.abs(nrel) <= 0.10)),
                "naive_mape": float(np.mean(np.abs(nrel)) * 100),
                "naive_mean_bias_pct": float(np.mean(nrel) * 100), "naive_kendall_tau": kendall_tau(naive, meas)}
    return out


def kendall_tau(x, y) -> float:
    """Kendall tau-b of two sequences (NaN for fewer than two, or when one is constant)."""
    if len(x) < 2 or np.ptp(np.asarray(x, dtype=np.float64)) == 0:
        return float("nan")
    return float(kendalltau(x, y).statistic)


def measure_relative(lm: LatencyModel, space: Space, archs: list[Arch], timing: TimingConfig | None = None,
                     bits: int = 32) -> list[dict]:
    """Export ``archs`` and time them on the table's device, interleaved with its reference models when it keeps
    them here: per arch ``measured_ms`` (at calibration speed), ``raw_ms``, ``speed``, ``measured_p90_ms``,
    ``stable``."""
    with tempfile.TemporaryDirectory(prefix="hwnas-model-") as tmp:
        paths = [export_arch(space, arch, Path(tmp) / f"model{i}.onnx", bits) for i, arch in enumerate(archs)]
        if references_apply(lm.table, lm.device):
            timed = time_against_references(lm.table, paths, lm.device, timing)
            return [{"measured_ms": rel, "raw_ms": st.p50_ms, "speed": speed, "measured_p90_ms": st.p90_ms,
                     "stable": st.stable} for st, rel, speed in zip(timed.stats, timed.relative_ms, timed.speed)]
        return [{"measured_ms": st.p50_ms, "raw_ms": None, "speed": None, "measured_p90_ms": st.p90_ms,
                 "stable": st.stable} for st in lm.device.time_files(paths, timing)]


def validate(lm: LatencyModel, space: Space, run: RunDir, *, samples: int = 50, seed: int = 0,
             timing: TimingConfig | None = None, on_progress: Callable[[int, int, str], None] | None = None,
             chunk: int = 25, bits: int = 32) -> dict:
    """Measure ``samples`` random archs end to end (``bits`` 8: static int8 models) and compare; returns the summary
    (also in report.json).

    Models are timed in interleaved chunks of ``chunk`` with the device's reference models (see ``timing``); rows
    are saved after each chunk.
    """
    m = lm.table.manifest
    path = run.file(VALIDATION_FILE)
    rows = pd.read_csv(path).to_dict("records") if path.is_file() else []
    archs = validation_archs(space, samples, seed)
    while len(rows) < len(archs):
        batch = archs[len(rows):len(rows) + chunk]
        for arch, timed in zip(batch, measure_relative(lm, space, batch, timing, bits)):
            keys = lm.arch_keys(space, arch, bits)
            pred = lm.predict_keys(keys)
            rows.append({"index": len(rows), "arch": arch.to_json(), **timed, "predicted_ms": pred.ms,
                         "naive_ms": naive_sum_ms(lm, keys), "estimated_blocks": len(pred.estimated),
                         "macs": arch_macs(lm, keys)})
            if on_progress:
                err = (pred.ms - timed["measured_ms"]) / timed["measured_ms"] * 100
                on_progress(len(rows), len(archs), f"{timed['measured_ms']:.2f} ms, predicted {err:+.1f}%")
        run.write_csv(VALIDATION_FILE, pd.DataFrame(rows))
    frame = pd.DataFrame(rows)
    summary = {"device": lm.device_id, "space": space.name, **space.space_args(), "provider": m.provider,
               "threads": m.threads, "batch": m.batch, "bits": bits, **summarize(frame), "warnings": lm.warnings}
    run.write_json("report.json", summary)
    plot_validation(frame, summary, run.file("scatter.png"))
    return summary


def plot_validation(frame: pd.DataFrame, summary: dict, path: Path) -> Path:
    fig, axes = new_figure(1, 2, figsize=(10, 4.5))
    meas = frame["measured_ms"]
    lo, hi = float(meas.min()) * 0.85, float(meas.max()) * 1.15
    ax = axes[0]
    ax.plot([lo, hi], [lo, hi], "k-", lw=1)
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9", label="+-10%")
    if np.isfinite(frame["naive_ms"]).all():
        ax.scatter(meas, frame["naive_ms"], s=14, c="tab:orange", alpha=0.6, label="sum of table p50s")
    ax.scatter(meas, frame["predicted_ms"], s=16, c="tab:blue", label="LatencyModel")
    ax.set(xlabel="measured ms (whole model)", ylabel="predicted ms", xlim=(lo, hi), ylim=(lo, hi),
           title=f"{summary['device']}: {100 * summary['within_10pct']:.0f}% within 10%, "
                 f"tau {summary['kendall_tau']:.3f}")
    ax.legend(loc="upper left", fontsize=8)
    axes[1].scatter(frame["macs"] / 1e6, meas, s=14, c="tab:green")
    axes[1].set(xlabel="MMACs", ylabel="measured ms", title=f"FLOPs tau {summary['flops_kendall_tau']:.3f}")
    return save_figure(fig, path)
