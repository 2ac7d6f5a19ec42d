"""Latency you can trust: the table beats FLOPs where it matters, holds from run to run, predicts any ONNX model
and adapts to a new device from 20 measurements; every figure from one command.

    .venv/bin/python benchmarks/bench_trust.py [--parts 1 2 3 4] [--samples 30] [--gap 10] [--clock cpu|wall]
                                               [--settings tiny tinyv2 v2pool batch opt threads mixed] [--quick]
                                               [--tables-dir DIR] [--json OUT.json]

Part 1, measurements that hold: fbnet at 224 px, 1 thread, profiled and calibrated into a fresh table, then
``latency validate`` (``--samples`` archs, timed interleaved with the reference models and expressed at calibration
speed) right after profiling and again ``--gap`` minutes later (parts 2-4 run in between), with ``latency check``
before each: within +-5% / +-10%, MAPE, bias (relative and raw), Kendall tau of the table, of FLOPs and of
parameters, the test-retest tau of the measurement (the two runs' times of the same archs), the drift the
references read, and how far the check's drift is from the drift the validated models show (median of raw /
predicted - 1).
Part 2, where FLOPs fail: one table per setting, its validation archs measured twice (test-retest tau), against a
linear fit of ms on FLOPs (and on parameters, and on BitOps for int8) fitted on the same calibration models as the
table, and, where the table fitted a layout term (``nas.latency.layout``), the same table refitted as a plain sum
over blocks: ``tiny`` (fbnet 32 px, width 0.25, 10 classes), ``tinyv2`` (fbnet_v2 the same way: ``make demo``'s
space), ``v2pool`` (fbnet_v2's operators and channel options at 128-320 px pooled), ``batch`` (batch 8 beside batch
1, pooled), ``opt`` (graph optimisation none, basic, extended; ``all`` is part 1), ``threads`` (2 intra-op threads,
wall clock: the measurement may not repeat) and ``mixed`` (mixed int8 / fp32 per-layer assignments of one fbnet
arch, ``trust_mixed.py``).
Part 3, ``latency predict model.onnx`` on nine published architectures (``bench_predict_onnx.py``).
Part 4, ``latency adapt`` with 20 measurements against the fully profiled table of B (``bench_adapt.py``).

Cost on a 2-core VM (loaded; a quiet machine is faster): part 1 about 4 minutes plus the gap, part 2 about 25
(v2pool 8, batch 5, opt 6, threads 3, tiny 1, mixed 4), part 3 about 4, part 4 about 8 (the int8 table is its
largest share), so about 40 minutes with the gap overlapped. ``--quick`` (12 samples, fewer v2 resolutions and
channels, no gap) takes about 15.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from trust_common import (
    Figures,
    Setting,
    arch_params,
    calibration_proxies,
    figures,
    log,
    print_figures,
    table_for,
    target_notes,
    ablations,
)

from nas.arch.space import load_space
from nas.latency.drift import check_drift
from nas.latency.model import LatencyModel
from nas.latency.validate import arch_macs, kendall_tau, measure_relative, validate, validation_archs
from nas.run import RunDir

SETTINGS = ("tiny", "tinyv2", "v2pool", "batch", "opt", "threads", "mixed")


# ---- part 2: one setting ------------------------------------------------------------------------------------------
def measure_twice(lm: LatencyModel, setting: Setting, archs) -> tuple[list[float], list[float]]:
    first = measure_relative(lm, setting.space, archs, setting.timing(), setting.bits)
    second = measure_relative(lm, setting.space, archs, setting.timing(), setting.bits)
    return [m["measured_ms"] for m in first], [m["measured_ms"] for m in second]


def setting_arrays(settings: list[Setting], root: Path, samples: int, seed: int) -> dict:
    """Predictions, two measurements and proxies of ``samples`` archs per setting, pooled over ``settings``."""
    out = {"pred": [], "ablated": {}, "first": [], "second": [], "flops": [], "params": [],
           "cal": {"flops": ([], []), "params": ([], [])}}
    for setting in settings:
        lm, _ = table_for(setting, root)
        archs = validation_archs(setting.space, samples, seed)
        log(f"validating {setting.device} on {samples} archs (twice)")
        first, second = measure_twice(lm, setting, archs)
        keys = [lm.arch_keys(setting.space, a, setting.bits) for a in archs]
        out["pred"] += [lm.predict_keys(k).ms for k in keys]
        for name, ablated in ablations(lm).items():
            out["ablated"].setdefault(name, []).extend(ablated.predict_keys(k).ms for k in keys)
        out["first"] += first
        out["second"] += second
        out["flops"] += [setting.batch * arch_macs(lm, k) for k in keys]
        out["params"] += [arch_params(lm, k) for k in keys]
        for proxy, (x, y) in calibration_proxies(lm, setting.batch).items():
            out["cal"][proxy][0].extend(x)
            out["cal"][proxy][1].extend(y)
    return out


def setting_figures(name: str, settings: list[Setting], root: Path, samples: int, seed: int = 1,
                    notes=()) -> Figures:
    start = time.perf_counter()
    a = setting_arrays(settings, root, samples, seed)
    f = figures(name, a["pred"], a["first"], a["second"],
                {p: (a[p], tuple(np.asarray(v) for v in a["cal"][p])) for p in ("flops", "params")}, notes,
                {n: p for n, p in a["ablated"].items() if len(p) == len(a["pred"])})
    f.notes += target_notes(f)
    f.seconds = time.perf_counter() - start
    return f


def v2_pooled_space(quick: bool):
    """fbnet_v2 with its operators and channel options at 128-320 px (``quick``: 3 resolutions, full channels)."""
    space = load_space("fbnet_v2", resolution=320)
    space.resolution_options = [128, 224, 320] if quick else [128, 192, 256, 320]
    if quick:
        for stage in space.stages:
            stage.channel_options = stage.channel_options[-1:]
    return space


def part2(args, root: Path, base: Setting) -> list[Figures]:
    samples = args.samples
    rows = []
    for name in args.settings:
        if name == "tiny":
            tiny = load_space("fbnet", resolution=32, width_multiplier=0.25, classes=10)
            rows.append(setting_figures("tiny 32px w0.25", [Setting("tiny", tiny, clock=args.clock)], root, samples))
        elif name == "tinyv2":
            tiny = load_space("fbnet_v2", resolution=32, width_multiplier=0.25, classes=10)
            rows.append(setting_figures("fbnet_v2 32px w0.25", [Setting("tinyv2", tiny, clock=args.clock)], root,
                                        samples))
        elif name == "v2pool":
            space = v2_pooled_space(args.quick)
            rows.append(setting_figures(f"fbnet_v2 {space.resolution_options[0]}-{space.resolution_options[-1]}px",
                                        [Setting("v2pool", space, clock=args.clock)], root, samples))
        elif name == "batch":
            b8 = Setting("batch8", base.space, batch=8, clock=args.clock)
            rows.append(setting_figures("batch 1 + batch 8", [base, b8], root, samples // 2 or 1))
        elif name == "opt":
            for level in ("none", "basic", "extended"):
                s = Setting(f"opt-{level}", base.space, optimization=level, clock=args.clock)
                rows.append(setting_figures(f"optimisation {level}", [s], root, samples))
            rows.append(setting_figures("optimisation all", [base], root, samples))
        elif name == "threads":
            s = Setting("threads2", base.space, threads=2, clock="wall")
            rows.append(setting_figures("2 threads (wall clock)", [s], root, samples))
        elif name == "mixed":
            from trust_mixed import mixed_figures
            table_for(base, root)
            rows.append(mixed_figures(base, root, samples))
        log(f"part 2: {rows[-1].name} done")
    return rows


# ---- part 1: measurements that hold -------------------------------------------------------------------------------
def validation_run(lm: LatencyModel, setting: Setting, samples: int, name: str) -> tuple[dict, pd.DataFrame]:
    run = RunDir(Path(tempfile.mkdtemp(prefix=f"bench-trust-{name}-")), {"run": name})
    summary = validate(lm, setting.space, run, samples=samples, seed=0, timing=setting.timing())
    return summary, pd.read_csv(run.file("validation.csv"))


def part1_start(args, root: Path, base: Setting) -> dict:
    start = time.perf_counter()
    lm, profile_s = table_for(base, root)
    log(f"part 1: table profiled in {profile_s:.0f} s; validation right after profiling")
    run1, frame1 = validation_run(lm, base, args.samples, "run1")
    check1 = check_drift(lm.table, timing=base.timing())
    return {"lm": lm, "run1": run1, "frame1": frame1, "check1": check1, "t_run1": time.perf_counter(),
            "profile_s": profile_s, "seconds": time.perf_counter() - start}


def part1_finish(args, state: dict, base: Setting) -> dict:
    wait = state["t_run1"] + 60 * args.gap - time.perf_counter()
    if wait > 0:
        log(f"part 1: waiting {wait / 60:.1f} min for the second validation")
        time.sleep(wait)
    start = time.perf_counter()
    lm = LatencyModel.load(base.device, state["lm"].table.folder.parent)
    check2 = check_drift(lm.table, timing=base.timing())
    run2, frame2 = validation_run(lm, base, args.samples, "run2")
    run1, frame1 = state["run1"], state["frame1"]
    cal = {p: v for p, v in calibration_proxies(lm).items()}
    macs = frame1["macs"].to_numpy(dtype=float)
    params = [arch_params(lm, lm.arch_keys(base.space, validation_archs(base.space, args.samples, 0)[i]))
              for i in range(len(frame1))]
    right_after = figures("fbnet 224px, right after", frame1["predicted_ms"], frame1["measured_ms"],
                          frame2["measured_ms"], {"flops": (macs, cal["flops"]), "params": (params, cal["params"])})
    out = {"figures": right_after, "seconds": state["seconds"] + time.perf_counter() - start,
           "profile_s": state["profile_s"], "runs": []}
    for name, run, check in (("run 1", run1, state["check1"]), (f"run 2 (+{args.gap:g} min)", run2, check2)):
        out["runs"].append({"run": name, **{k: run.get(k) for k in (
            "within_5pct", "within_10pct", "mape", "mean_bias_pct", "raw_mean_bias_pct", "kendall_tau",
            "raw_kendall_tau", "flops_kendall_tau", "drift_pct", "models_drift_pct")},
            "check_drift_pct": check.drift_pct})
    out["bias_gap_points"] = abs(run1["mean_bias_pct"] - run2["mean_bias_pct"])
    out["raw_bias_gap_points"] = abs(run1["raw_mean_bias_pct"] - run2["raw_mean_bias_pct"])
    out["check_vs_models_drift_points"] = abs(check2.drift_pct - run2["models_drift_pct"])
    out["check_vs_references_drift_points"] = abs(check2.drift_pct - run2["drift_pct"])
    out["retest_tau_relative"] = kendall_tau(frame1["measured_ms"], frame2["measured_ms"])
    out["retest_tau_raw"] = kendall_tau(frame1["raw_ms"], frame2["raw_ms"])
    return out


def print_part1(p1: dict) -> None:
    print("\n== part 1: validate twice, latency check before each (relative = at calibration speed) ==")
    print(f"{'run':18s} {'<5%':>5s} {'<10%':>5s} {'MAPE':>5s} {'bias':>6s} {'raw bias':>8s} {'tau':>5s} "
          f"{'raw tau':>7s} {'FLOPs':>5s} {'refs drift':>10s} {'models drift':>12s} {'check drift':>11s}")
    for r in p1["runs"]:
        print(f"{r['run']:18s} {100 * r['within_5pct']:5.1f} {100 * r['within_10pct']:5.1f} {r['mape']:5.1f} "
              f"{r['mean_bias_pct']:+6.1f} {r['raw_mean_bias_pct']:+8.1f} {r['kendall_tau']:5.3f} "
              f"{r['raw_kendall_tau']:7.3f} {r['flops_kendall_tau']:5.3f} {r['drift_pct']:+10.1f} "
              f"{r['models_drift_pct']:+12.1f} {r['check_drift_pct']:+11.1f}")
    print(f"bias of the two runs apart: {p1['bias_gap_points']:.1f} points (raw times: {p1['raw_bias_gap_points']:.1f})"
          f"; check's drift vs the validated models' drift: {p1['check_vs_models_drift_points']:.1f} points "
          f"(vs the references' drift during validate: {p1['check_vs_references_drift_points']:.1f})")
    print(f"test-retest tau of the measurement: {p1['retest_tau_relative']:.3f} relative, {p1['retest_tau_raw']:.3f} "
          f"raw; profiling took {p1['profile_s']:.0f} s")
    print_figures([p1["figures"]])


def readme_table(p1: dict | None, rows: list[Figures]) -> str:
    lines = ["| setting | table tau | FLOPs tau | test-retest tau | table within +-10% | FLOPs fit within +-10% |",
             "|---|---|---|---|---|---|"]
    for f in ([p1["figures"]] if p1 else []) + rows:
        flops = f.proxies.get("flops", {})
        if "bitops" in f.proxies:  # equal FLOPs: the proxy that can rank is BitOps
            flops = f.proxies["bitops"]
        name = f.name + (" (FLOPs equal: BitOps)" if "bitops" in f.proxies else "")
        lines.append(f"| {name} | {f.table['kendall_tau']:.2f} | {flops.get('kendall_tau', float('nan')):.2f} | "
                     f"{f.retest_tau:.2f} | {100 * f.table['within_10pct']:.0f}% | "
                     f"{100 * flops.get('within_10pct', float('nan')):.0f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--gap", type=float, default=10.0, help="minutes between the two validations of part 1")
    parser.add_argument("--clock", default="cpu", choices=["cpu", "wall"], help="clock of the 1-thread settings")
    parser.add_argument("--quick", action="store_true", help="12 samples, a smaller v2 pool, no gap")
    parser.add_argument("--tables-dir", type=Path, default=None, help="keep (and reuse) the tables here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.samples, args.gap = min(args.samples, 12), 0.0
    root = args.tables_dir or Path(tempfile.mkdtemp(prefix="bench-trust-"))
    base = Setting("base", load_space("fbnet", resolution=224), clock=args.clock)
    results: dict = {"samples": args.samples, "clock": args.clock, "tables": str(root), "seconds": {}}
    state = part1_start(args, root, base) if 1 in args.parts else None
    rows = []
    if 2 in args.parts:
        start = time.perf_counter()
        rows = part2(args, root, base)
        results["seconds"]["part2"] = time.perf_counter() - start
        print("\n== part 2: where FLOPs fail (relative times; proxies: a linear fit on the calibration models) ==")
        print_figures(rows)
        results["settings"] = [f.to_dict() for f in rows]
    if 3 in args.parts:
        from bench_predict_onnx import print_onnx, run_onnx
        start = time.perf_counter()
        results["predict_onnx"] = run_onnx(base, root, quick=args.quick)
        results["seconds"]["part3"] = time.perf_counter() - start
        print_onnx(results["predict_onnx"])
    if 4 in args.parts:
        from bench_adapt import print_adapt, run_adapt
        start = time.perf_counter()
        results["adapt"] = run_adapt(base, root, args.samples, quick=args.quick)
        results["seconds"]["part4"] = time.perf_counter() - start
        print_adapt(results["adapt"])
    p1 = None
    if state is not None:
        p1 = part1_finish(args, state, base)
        results["seconds"]["part1"] = p1["seconds"]
        print_part1(p1)
        results["part1"] = {**{k: v for k, v in p1.items() if k != "figures"}, "figures": p1["figures"].to_dict()}
    print("\n== README table (table vs FLOPs per setting) ==")
    print(readme_table(p1, rows))
    print(f"\nseconds per part: {json.dumps({k: round(v) for k, v in results['seconds'].items()})}; tables in {root}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
