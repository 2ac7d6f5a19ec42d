"""The measure phase of ``bench_capacity.py``: latency only, for a quiet machine (``--measure-only``).

A fresh token-count table and whole-model correction for this machine as it is now, then ONE interleaved timing pass
of every ONNX file the plan phase exported (``<out>/plan.json``): each file also runs in a plain ONNX Runtime session
against the torch outputs, its measured latency is compared with the prediction (±10%), and the two families are
compared at the targets, relative to the reference model's measured latency (``nas.search.capacity.comparison``).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from nas.files import write_json, write_text
from nas.latency.device import Device
from nas.latency.model import LatencyModel
from nas.latency.profile import profile_items
from nas.latency.table import LatencyTable
from nas.latency.timing import TimingConfig
from nas.search.capacity.comparison import Candidate, compare_at_target, relative_targets, verdict_markdown
from nas.search.capacity.config import StaticPlan
from nas.search.capacity.diagnostics import latency_breakdown
from nas.search.capacity.export import interleaved_ms
from nas.search.capacity.latency import calibrate_capacity, capacity_profile_items, predict_plan
from nas.search.capacity.plots import plot_comparison
from nas.search.capacity.space import CapacitySpace, dense_variant, load_capacity_space


def log(msg: str) -> None:
    print(msg, flush=True)


def profile_table(device: str, tables: Path, spaces: list[CapacitySpace], clock: str,
                  calibrate: bool = True) -> LatencyModel:
    """Every token-count unit of ``spaces`` in the device table, and (``calibrate``) the dynamic space's whole-model
    correction. Under load the correction is not worth fitting: whole models, whose weights no longer stay in cache,
    measured 1.7-2.3x their units' sum here (CPU clock) where units alone held, so the plan phase ranks by the sum."""
    t0 = time.perf_counter()
    timer = Device(clock=clock, device_id=device)
    measured = sum(profile_items(timer, capacity_profile_items(s), tables_dir=tables)["measured"] for s in spaces)
    shown = "no whole-model correction"
    if calibrate:
        corr = calibrate_capacity(timer, spaces[0], models=12, tables_dir=tables)
        shown = (f"correction on {corr.fitted_on} models: base {corr.base_ms:.3f} ms, scale {corr.scale:.3f}, per unit "
                 f"{1000 * corr.per_block_ms:+.1f} us, MAPE {corr.fit_mape or 0:.1f}% (uncorrected {corr.raw_mape or 0:.1f}%)")
    log(f"    table {device!r}: {measured} units measured in {time.perf_counter() - t0:.0f} s; {shown}")
    return LatencyModel.load(device, tables, allow_fallback=False)


def plain_ort_check(files: list[dict], images: np.ndarray) -> dict[str, float]:
    """Each file in a plain ONNX Runtime session (default options, no hwnas code): max |ONNX - torch| on the images."""
    import onnxruntime as ort

    diffs = {}
    for f in files:
        session = ort.InferenceSession(f["path"], providers=["CPUExecutionProvider"])
        y = session.run(None, {session.get_inputs()[0].name: images})[0]
        diffs[f["file"]] = float(np.abs(y - np.asarray(f["expected"], np.float32)).max())
    return diffs


def file_space(base: CapacitySpace, entry: dict) -> CapacitySpace:
    """The space an ONNX file of plan.json was exported from: the dynamic one, or a dense variant of it."""
    if not entry["depth"]:
        return base
    return dense_variant(base, depth=entry["depth"], dim=entry["dim"], heads=entry["heads"])


def measure_phase(out: Path, rounds: int = 5, clock: str = "cpu") -> None:
    """Time every ONNX file of ``out/plan.json`` in one interleaved pass against a table profiled just before;
    compare the families at the targets; write measure.json, comparison.md and comparison.png."""
    if not (out / "plan.json").is_file():
        raise SystemExit(f"{out / 'plan.json'} is missing: run the train and plan phases first")
    plan = json.loads((out / "plan.json").read_text())
    base = load_capacity_space(plan["space"], **plan["space_args"])
    files = plan["files"]
    spaces = {f["file"]: file_space(base, f) for f in files}
    device, tables = "bench-capacity-measure", out / "measure-tables"
    log(f"[measure] {len(files)} ONNX files: a fresh table, then one interleaved pass ({rounds} rounds, clock "
        f"{clock}). Timings are only meaningful on a quiet machine.")
    shutil.rmtree(tables, ignore_errors=True)  # this pass's own table: predictions from this machine, now
    distinct = list({s.fingerprint(): s for s in [base, *spaces.values()]}.values())
    lm = profile_table(device, tables, distinct, clock)
    diffs = plain_ort_check(files, np.load(out / "onnx" / "check_images.npy"))
    timed = interleaved_ms({f["file"]: Path(f["path"]) for f in files}, LatencyTable.open(device, tables).manifest,
                           rounds, TimingConfig(clock=clock))
    per_file = {}
    for f in files:
        static = StaticPlan.from_dict(f["plan"])
        predicted = predict_plan(lm, spaces[f["file"]], static).ms
        measured = timed[f["file"]]["measured_ms"]
        per_file[f["file"]] = {"measured_ms": measured, "predicted_ms": predicted, "error_pct": 100 * (measured / predicted - 1),
                               "plain_ort_max_abs_diff": diffs[f["file"]], "depth": f["depth"], "plan": f["plan"],
                               "breakdown": latency_breakdown(lm, spaces[f["file"]], static) if not f["depth"] else None,
                               **{k: v for k, v in timed[f["file"]].items() if k != "measured_ms"}}
    dynamic = [v for v in per_file.values() if not v["depth"]]
    within = sum(abs(v["error_pct"]) <= 10 for v in dynamic)
    log(f"    plain ONNX Runtime sessions: every file runs; max |ONNX - torch| {max(diffs.values()):.1e}")
    log(f"    dynamic files: measured within ±10% of predicted for {within} of {len(dynamic)} (mean |error| "
        f"{np.mean([abs(v['error_pct']) for v in dynamic]):.1f}%)")
    reference_ms = per_file[plan["reference_file"]]["measured_ms"]
    targets = relative_targets(reference_ms, plan["targets"], plan["reference"])
    candidates = [Candidate(c["name"], c["family"], c["seed"], c["val_accuracy"], c["test_accuracy"],
                            per_file[c["file"]]["measured_ms"]) for c in plan["candidates"]]
    comparisons = {name: compare_at_target(candidates, ms, plan["seeds"]) for name, ms in targets.items()}
    report_comparisons(comparisons)
    sweep = report_sweep(plan["sweep"], per_file)
    plot_comparison([c.to_dict() for c in candidates], targets, out / "comparison.png",
                    title=f"{Path(plan['space']).stem} on {Path(plan['dataset'].split(':', 1)[-1]).name}: "
                    "test accuracy vs measured latency")
    write_text(out / "comparison.md", verdict_markdown(comparisons, plan["reference"], reference_ms))
    write_json(out / "measure.json", {"device": device, "clock": clock, "rounds": rounds,
                                      "reference_ms": reference_ms, "targets_ms": targets, "files": per_file,
                                      "comparisons": comparisons, "sweep": sweep})
    log(f"    -> {out / 'measure.json'}, {out / 'comparison.md'}, {out / 'comparison.png'}")


def report_comparisons(comparisons: dict) -> None:
    """Print each target's per-seed picks and verdict."""
    for name, c in comparisons.items():
        log(f"    target {name} = {c['target_ms']:.3f} ms (measured):")
        for row in c["per_seed"]:
            shown = [f"{f} {row[f]['name'].removeprefix(f + ' ')} {row[f]['measured_ms']:.3f} ms val "
                     f"{row[f]['val_accuracy']:.4f} test {row[f]['test_accuracy']:.4f}" if row[f] else f"no {f} model"
                     for f in ("dynamic", "dense")]
            log(f"      seed {row['seed']}: " + " | ".join(shown))
        log(f"      over {c['seeds_compared']} seed(s): dynamic {c['dynamic_test_mean']:.4f} ± "
            f"{c['dynamic_test_std']:.4f}, dense {c['dense_test_mean']:.4f} ± {c['dense_test_std']:.4f}: dynamic "
            f"{100 * c['difference_mean']:+.2f} ± {100 * c['difference_std']:.2f} points, wins {c['dynamic_wins']} of "
            f"{c['seeds_compared']}")


def report_sweep(sweep: list[dict], per_file: dict) -> list[dict]:
    """The keep-ratio sweep: measured and predicted ms, speed-up, where the latency goes."""
    rows = [{**s, **{k: per_file[s["file"]][k] for k in ("measured_ms", "predicted_ms", "breakdown")}} for s in sweep]
    full = rows[0]["measured_ms"]
    log("    keep-ratio sweep (every stage; MoE capacity factor held): keep, tokens per block, measured / predicted "
        "ms, speed-up, val accuracy, predicted ms by part")
    for r in rows:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in r["breakdown"].items() if v)
        log(f"      {r['keep_ratio']:4.2f} {' '.join(map(str, r['tokens_per_block'])):26s} {r['measured_ms']:6.3f} / "
            f"{r['predicted_ms']:6.3f} {full / r['measured_ms']:5.2f}x {r['val_accuracy']:.4f}  [{parts}]")
    measured = [r["measured_ms"] for r in rows]
    log("    measured latency falls monotonically with the keep ratio: "
        + ("yes" if all(b < a for a, b in zip(measured, measured[1:])) else "no"))
    return rows
