"""``hwnas latency predict model.onnx`` on published architectures (part 3 of ``bench_trust.py``, which runs it).

    .venv/bin/python benchmarks/bench_predict_onnx.py [--clock cpu|wall] [--quick] [--tables-dir DIR] [--json OUT]

Profiles fbnet at 224 px into a device table (blocks and calibration, which keeps the reference models the kernel
correction is fitted on), then for each architecture of ``published_archs.py`` (ResNet-18/50, MobileNetV2/V3,
SqueezeNet, ShuffleNetV2, GoogLeNet, a VGG-11, a ViT-Ti; 224 px, written in plain torch from their papers' tables):
exports it, predicts it with ``predict_onnx(..., profile=True)`` (its missing kernels timed on the spot), and times
the whole model twice, interleaved with the reference models (at calibration speed). Prints each model's prediction
against the measurement (and the plain sum of kernel times, without the correction), the share within +-10%, the
Kendall tau of the predictions and of FLOPs, the test-retest tau, and checks that every breakdown sums to its total.
About 4 minutes on a loaded 2-core VM after the table (1 minute); ``--quick``: five architectures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from published_archs import ARCHITECTURES, export
from trust_common import Setting, log, table_for

from nas.arch.space import load_space
from nas.latency.drift import time_against_references
from nas.latency.kernel_table import KernelCorrection, read_kernels
from nas.latency.kernels import kernel_graph
from nas.latency.onnx_predict import kernel_costs, predict_onnx
from nas.latency.validate import accuracy, kendall_tau

QUICK = ("resnet18", "mobilenet_v2", "shufflenet_v2", "googlenet", "vit_tiny")


def run_onnx(base: Setting, root: Path, quick: bool = False) -> dict:
    lm, _ = table_for(base, root)
    names = list(QUICK if quick else ARCHITECTURES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        paths = [export(name, Path(tmp) / f"{name}.onnx") for name in names]
        for name, path in zip(names, paths):
            start = time.perf_counter()
            p = predict_onnx(path, base.device, root, profile=True, timing=base.timing())
            graph = kernel_graph(path, lm.device)
            plain, _ = kernel_costs(graph, read_kernels(lm.table.folder), KernelCorrection())
            rows.append({"model": name, "predicted_ms": p.total_ms, "plain_sum_ms": p.call_ms + sum(plain),
                         "kernels": len(p.kernels), "unique_kernels": p.profiled.get("kernels"),
                         "estimated": p.estimated, "macs": sum(k.macs for k in graph.kernels),
                         "breakdown_sums": abs(p.call_ms + sum(k["ms"] for k in p.kernels) - p.total_ms) < 1e-9,
                         "profile_s": time.perf_counter() - start})
            log(f"predict {name}: {p.total_ms:.2f} ms ({len(p.kernels)} kernels)")
        log(f"timing the {len(names)} whole models twice")
        first = time_against_references(lm.table, paths, timing=base.timing())
        second = time_against_references(lm.table, paths, timing=base.timing())
    for row, a, b, raw in zip(rows, first.relative_ms, second.relative_ms, first.stats):
        row |= {"measured_ms": a, "retest_ms": b, "raw_ms": raw.p50_ms,
                "error_pct": 100 * (row["predicted_ms"] - a) / a, "plain_error_pct": 100 * (row["plain_sum_ms"] - a) / a}
    measured = [r["measured_ms"] for r in rows]
    summary = accuracy([r["predicted_ms"] for r in rows], measured)
    return {"models": rows, **summary, "plain_sum": accuracy([r["plain_sum_ms"] for r in rows], measured),
            "flops_kendall_tau": kendall_tau([r["macs"] for r in rows], measured),
            "retest_tau": kendall_tau(measured, [r["retest_ms"] for r in rows]),
            "breakdowns_sum_to_total": all(r["breakdown_sums"] for r in rows),
            "correction": asdict(KernelCorrection.load(lm.table.folder))}


def print_onnx(result: dict) -> None:
    print("\n== part 3: latency predict model.onnx on published architectures (224 px) ==")
    print(f"{'model':20s} {'kernels':>7s} {'GMACs':>6s} {'predicted':>9s} {'measured':>9s} {'error':>7s} "
          f"{'plain sum':>9s} {'est.':>4s}")
    for r in result["models"]:
        print(f"{r['model']:20s} {r['kernels']:7d} {r['macs'] / 1e9:6.2f} {r['predicted_ms']:9.2f} "
              f"{r['measured_ms']:9.2f} {r['error_pct']:+6.1f}% {r['plain_error_pct']:+8.1f}% {r['estimated']:4d}")
    c = result["correction"]
    print(f"within +-10%: {100 * result['within_10pct']:.0f}% (plain kernel sum {100 * result['plain_sum']['within_10pct']:.0f}%)"
          f", MAPE {result['mape']:.1f}%, tau {result['kendall_tau']:.3f} (FLOPs {result['flops_kendall_tau']:.3f}, "
          f"retest {result['retest_tau']:.3f}); every breakdown sums to its total: {result['breakdowns_sum_to_total']}; "
          f"correction {c['per_mb_ms'] * 1e3:.1f} us per MB read and written, fitted on {c['fitted_on']} reference "
          f"models")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tables-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    root = args.tables_dir or Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    result = run_onnx(Setting("base", load_space("fbnet", resolution=224), clock=args.clock), root, args.quick)
    print_onnx(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
