"""``hwnas latency adapt``: device B from device A's table and 20 whole models measured on B (part 4 of
``bench_trust.py``, which runs it).

    .venv/bin/python benchmarks/bench_adapt.py [--samples 30] [--kinds opt-none int8 batch8 threads2] [--quick]
                                               [--clock cpu|wall] [--tables-dir DIR] [--json OUT]

A is fbnet at 224 px, 1 thread, graph optimisation ``all``, fp32 (profiled and calibrated). For each kind of B on
this machine (graph optimisation ``none``; static int8 models; batch 8; 2 intra-op threads, wall clock) it
adapts A's table to B from 20 whole models measured on B (``adapt_here``), profiles and calibrates B fully, and
measures ``--samples`` validation archs on B twice (interleaved with B's reference models). Prints, for the adapted
table and for B's full table against the measurement: within +-10%, MAPE, Kendall tau; the adapted table against the
full table's predictions; A's own table against B; and the measurement's test-retest tau. Target: tau >= 0.9 and
>= 85% within +-10% for at least two kinds of B. About 8 minutes on a loaded 2-core VM when part 2 of
``bench_trust.py`` profiled B's tables already (int8's table is the longest: about 4 minutes), 15 alone;
``--quick``: optimisation none and batch 8.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from trust_common import Setting, log, table_for

from nas.arch.space import load_space
from nas.latency.adapt import MAX_MEASUREMENTS, adapt_here
from nas.latency.model import LatencyModel
from nas.latency.table import DeviceManifest, list_devices
from nas.latency.validate import accuracy, kendall_tau, measure_relative, validation_archs

KINDS = ("opt-none", "int8", "batch8", "threads2")


def kind_setting(base: Setting, kind: str) -> Setting:
    return {"opt-none": replace(base, name=kind, optimization="none"), "int8": replace(base, name=kind, bits=8),
            "batch8": replace(base, name=kind, batch=8),
            "threads2": replace(base, name=kind, threads=2, clock="wall")}[kind]


def run_kind(a: LatencyModel, b: Setting, root: Path, samples: int) -> dict:
    start = time.perf_counter()
    adapted_id = f"{b.device}-adapted"
    if adapted_id not in list_devices(root):
        log(f"adapting to {b.device} from {MAX_MEASUREMENTS} whole models")
        adapt_here(a, DeviceManifest.for_this_machine(adapted_id, threads=b.threads, graph_optimization=b.optimization,
                                                      clock=b.clock, batch=b.batch),
                   b.space, bits=b.bits, tables_dir=root, timing=b.timing())
    adapt_s = time.perf_counter() - start
    full, profile_s = table_for(b, root)
    adapted = LatencyModel.load(adapted_id, root)
    archs = validation_archs(b.space, samples, seed=2)
    log(f"adapt {b.name}: {samples} validation archs timed twice on B")
    first = [m["measured_ms"] for m in measure_relative(full, b.space, archs, b.timing(), b.bits)]
    second = [m["measured_ms"] for m in measure_relative(full, b.space, archs, b.timing(), b.bits)]
    keys = [full.arch_keys(b.space, arch, b.bits) for arch in archs]
    pred_adapted = [adapted.predict_keys(k).ms for k in keys]
    pred_full = [full.predict_keys(k).ms for k in keys]
    pred_a = [a.predict_keys([k.with_bits(32) for k in ks]).ms for ks in keys]
    return {"kind": b.name, "device": b.device, "adapted": accuracy(pred_adapted, first),
            "full_table": accuracy(pred_full, first), "adapted_vs_full": accuracy(pred_adapted, pred_full),
            "table_a": accuracy(pred_a, first), "retest_tau": kendall_tau(first, second),
            "weights": adapted.table.manifest.notes.get("adaptation", {}).get("weights"),
            "validation": {"seed": 2, "measured_ms": [first, second], "adapted_ms": pred_adapted,
                           "full_table_ms": pred_full},
            "adapt_s": adapt_s, "full_profile_s": profile_s, "seconds": time.perf_counter() - start}


def run_adapt(base: Setting, root: Path, samples: int, quick: bool = False, kinds=KINDS) -> dict:
    a, _ = table_for(base, root)
    kinds = [k for k in kinds if not quick or k in ("opt-none", "batch8")]
    rows = [run_kind(a, kind_setting(base, kind), root, samples) for kind in kinds]
    met = [r["kind"] for r in rows if r["adapted"]["kendall_tau"] >= 0.9 and r["adapted"]["within_10pct"] >= 0.85]
    return {"kinds": rows, "target_met_by": met}


def print_adapt(result: dict) -> None:
    print(f"\n== part 4: latency adapt from {MAX_MEASUREMENTS} measurements (against B's measured validation archs) ==")
    print(f"{'B':10s} {'adapted <10%':>12s} {'tau':>5s} {'MAPE':>5s} | {'full <10%':>9s} {'tau':>5s} | "
          f"{'vs full tau':>11s} {'<10%':>5s} | {'A alone tau':>11s} {'MAPE':>6s} | {'retest':>6s}")
    for r in result["kinds"]:
        ad, fu, vs, a = r["adapted"], r["full_table"], r["adapted_vs_full"], r["table_a"]
        print(f"{r['kind']:10s} {100 * ad['within_10pct']:11.0f}% {ad['kendall_tau']:5.3f} {ad['mape']:5.1f} | "
              f"{100 * fu['within_10pct']:8.0f}% {fu['kendall_tau']:5.3f} | {vs['kendall_tau']:11.3f} "
              f"{100 * vs['within_10pct']:4.0f}% | {a['kendall_tau']:11.3f} {a['mape']:6.1f} | {r['retest_tau']:6.3f}")
    print(f"target (tau >= 0.9 and >= 85% within +-10%) met by: {', '.join(result['target_met_by']) or 'none'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tables-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    root = args.tables_dir or Path(tempfile.mkdtemp(prefix="bench-adapt-"))
    result = run_adapt(Setting("base", load_space("fbnet", resolution=224), clock=args.clock), root, args.samples,
                       args.quick, args.kinds)
    print_adapt(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
