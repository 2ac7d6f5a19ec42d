"""Claims of mixed precision: the searched assignment is not dominated by uniform fp32 or int8, and the exported
ONNX model keeps the fake-quant model's accuracy. A mixed-precision search on digits:

1. Profiles the model's blocks (fp32 and int8) into a device table, then runs ``search mixed-precision`` twice:
   - cost ``size`` with a target of 4 mean weight bits (the size of the all-4-bit model);
   - cost ``latency`` (int8 / fp32 per layer) with no target.
2. Prints, per run, the mixed model and the uniform fp32 / int8 baselines (accuracy of the fake-quant torch model and
   of the exported ONNX model on the test split, measured and predicted latency, size, mean weight bits), the
   target checks, the latency-cost fit, and the measured int8-vs-fp32 speed-up per layer kind.
3. Profiles the same model's layers, fp32 and int8, at a larger size (``--speedup-resolution``, no training) and
   prints the int8-vs-fp32 speed-up per layer kind there too (the search's 32px layers are mostly call overhead).

Timings are taken on a shared machine; ``--clock cpu`` (the default) times the calling thread's CPU time, which
other processes do not inflate, but caches are still shared: expect a few percent of noise.

    .venv/bin/python benchmarks/bench_quant.py [--space fbnet_a --width 0.5 --resolution 32] [--out results/bench_quant]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import harness  # first: the repository on the import path
import torch

from nas.arch.space import resolve_model_ref  # noqa: E402
from nas.data.task import load_task  # noqa: E402
from nas.files import write_json  # noqa: E402
from nas.latency.device import Device  # noqa: E402
from nas.latency.precision import int8_speedups  # noqa: E402
from nas.latency.profile import profile_items  # noqa: E402
from nas.latency.table import LatencyTable  # noqa: E402
from nas.models.builder import build_model  # noqa: E402
from nas.models.onnx_io import export_onnx  # noqa: E402
from nas.run import RunDir  # noqa: E402
from nas.search.quant.costs import SizeCost  # noqa: E402
from nas.search.quant.graph import attach_onnx, trace_layers  # noqa: E402
from nas.search.quant.mixed import BitOption, MixedPrecisionNet  # noqa: E402
from nas.search.quant.pipeline import run_mixed_precision  # noqa: E402
from nas.search.quant.prepare import MixedPrecisionConfig, prepare_mixed_precision  # noqa: E402
from nas.search.quant.profile import layer_items, precision_graph  # noqa: E402
from nas.search.quant.search import SearchConfig  # noqa: E402


def run(kind: str, args, data, space, arch, tables: Path, out: Path, target_mb: float | None = None) -> dict:
    cfg = MixedPrecisionConfig(
        cost=kind, weight_bits=[8, 32] if kind == "latency" else [2, 4, 8, 32], act_bits=[8, 32],
        target_mb=target_mb, pretrain_epochs=args.pretrain_epochs, pretrain_lr=args.lr,
        search=SearchConfig(epochs=args.epochs, seed=args.seed), finetune_epochs=args.finetune_epochs,
        latency_fit_models=args.fit_models)
    prep = prepare_mixed_precision(space, arch, data, args.device, cfg, tables_dir=tables, progress=harness.progress)
    rundir = RunDir(out, {"bench": "quant", "cost": kind, "space_args": space.space_args(), "arch": arch.to_dict(),
                          "device": args.device, **cfg.to_dict()})
    return run_mixed_precision(prep, rundir, progress=harness.progress)["mixed_precision"]


def speedups_at(args, tables: Path, resolution: int, width: float) -> dict:
    """Per-layer fp32 / int8 rows of the model at a larger size (no training): the int8 speed-up per layer kind
    where layers are big enough for their own time, not the session-call overhead, to dominate."""
    import tempfile

    space, arch = resolve_model_ref(args.space, resolution=resolution, width_multiplier=width, classes=10,
                                    in_channels=1)
    net = MixedPrecisionNet(build_model(space, arch), [BitOption(8, 8), BitOption(32, 32)])
    layers = trace_layers(net.model, net.names, net.input_shape)
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as tmp:
        path = Path(tmp) / "fp32.onnx"
        export_onnx(net.float_model([BitOption(32, 32)] * len(layers)), net.input_shape, path)
        graph = attach_onnx(layers, path)
    items = layer_items(graph)
    name = f"profile layers fp32+int8 at {resolution}px x{width:g}"
    profile_items(Device(clock=args.clock, device_id=args.device), items, tables_dir=tables,
                  on_progress=lambda done, total, note: harness.progress(name, done, total, note))
    return int8_speedups(LatencyTable.open(args.device, tables), precision_graph(graph))


def print_speedups(speedups: dict) -> None:
    for kind, s in speedups.items():
        lo, hi = s["isolated_speedup_range"]
        clo, chi = s["in_int8_chain_speedup_range"]
        print(f"    {kind:5s} x{s['layers']:2d}: fp32 {s['fp32_ms']:.4f} ms int8 {s['int8_ms']:.4f} ms | alone with its "
              f"Q/DQ {s['isolated_speedup']:.2f} ({lo:.2f}-{hi:.2f}) | inside an int8 chain "
              f"{s['in_int8_chain_speedup']:.2f} ({clo:.2f}-{chi:.2f})")
    if speedups:
        print(f"    (each p50 is one session call and includes ~{next(iter(speedups.values()))['call_overhead_ms']:.4f}"
              f" ms of call overhead)")


def share_checkpoints(src: Path, dst: Path) -> None:
    """The fp32 pretraining and the uniform baselines do not depend on the cost: reuse them."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("pretrain.pt", "uniform_fp32_finetune.pt", "uniform_int8_finetune.pt"):
        if (src / name).is_file() and not (dst / name).is_file():
            shutil.copyfile(src / name, dst / name)


def point(f: dict) -> str:
    pred = f"{f['predicted_ms']:.4f}" if f.get("predicted_ms") is not None else "  n/a "
    return (f"acc torch {f['accuracy_torch']:.4f} onnx {f['accuracy_onnx']:.4f} | measured {f['measured_ms']:.4f} ms "
            f"predicted {pred} ms | {f['size_mb']:.4f} MB (stored {f['storage_size_mb']:.4f}) | mean w bits "
            f"{f['mean_weight_bits']:5.2f} | int8 layers {f['int8_layers']:2d}/{f['layers']} | {f['format']}")


def show(title: str, report: dict) -> None:
    print(f"\n== {title} ==")
    print(f"  mixed  {point(report['mixed'])}")
    for name in ("fp32", "int8"):
        print(f"  {name:6s} {point(report['baselines'][name])}")
    fmts = report["mixed"]["formats"]
    if len(fmts) > 1:
        print("  mixed model formats: " + ", ".join(f"{k} {v['measured_ms']:.4f} ms acc {v['accuracy_onnx']:.4f}"
                                                    for k, v in fmts.items()))
    if "latency_fit" in report:
        fit = report["latency_fit"]
        print(f"  latency cost fit on {fit['models']} measured mixed models: coef {json.dumps(fit['coef'])}; "
              f"MAPE table-only {fit['delta_mape_table_pct']:.1f}% -> fitted {fit['delta_mape_fitted_pct']:.1f}%; "
              f"fp32 model measured {fit['measured_fp32_ms']:.4f} ms vs table {fit['table_fp32_ms']:.4f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="fbnet_a", help="the model whose bits are searched")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--epochs", type=int, default=8, help="bit-search epochs")
    p.add_argument("--pretrain-epochs", type=int, default=8)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.01, help="pretraining learning rate")
    p.add_argument("--fit-models", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    p.add_argument("--device", default=None, help="device id (default: bench-quant-<clock>)")
    p.add_argument("--out", type=Path, default=harness.ROOT / "results" / "bench_quant")
    p.add_argument("--only", choices=["size", "latency", "speedup"], default=None)
    p.add_argument("--speedup-resolution", type=int, default=112, help="size of the per-layer speed-up figures "
                   "(0: skip)")
    p.add_argument("--speedup-width", type=float, default=1.0)
    args = p.parse_args()
    args.device = args.device or f"bench-quant-{args.clock}"
    torch.set_num_threads(1)  # shared 2-core machine: oversubscribed torch threads are many times slower

    tables = args.out / "tables"
    data, space, arch = load_task("digits", args.space, resolution=args.resolution, width=args.width, seed=args.seed)
    print(f"{space.name} @ {space.resolution}px x{space.width_multiplier:g} on digits {data.sizes()}; device "
          f"{args.device} (CPUExecutionProvider, 1 thread, clock {args.clock}); tables in {tables}")
    harness.profile_table(Device(clock=args.clock, device_id=args.device), space, tables_dir=tables, bits=(32, 8),
                          calibration=1, on_progress=lambda done, total, note: harness.progress(
                              "profile blocks fp32+int8", done, total, note))

    reports = {}
    if args.only in (None, "size"):
        probe = prepare_mixed_precision(space, arch, data, args.device,
                                        MixedPrecisionConfig(cost="size", latency_fit_models=0), tables_dir=tables)
        n = len(probe.graph.layers)
        target_mb = SizeCost(probe.graph, [BitOption(4, 8)]).of([BitOption(4, 8)] * n)
        reports["size"] = run("size", args, data, space, arch, tables, args.out / "size", target_mb)
    if args.only in (None, "latency"):
        share_checkpoints(args.out / "size", args.out / "latency")
        reports["latency"] = run("latency", args, data, space, arch, tables, args.out / "latency")

    if args.only in (None, "speedup") and args.speedup_resolution:
        reports["speedup"] = speedups_at(args, tables, args.speedup_resolution, args.speedup_width)

    print("\nTimings: ONNX Runtime p50s at batch 1, 1 thread, on a machine shared with other jobs: expect noise.")
    ok = {}
    if "size" in reports:
        r = reports["size"]
        show(f"cost size, target {r['target']['value']:.4f} MB (= all layers at 4 bits)", r)
        fp32 = r["baselines"]["fp32"]
        gap = r["mixed"]["accuracy_onnx"] - fp32["accuracy_onnx"]
        ok["size: mean weight bits <= 4"] = r["mixed"]["mean_weight_bits"] <= 4 + 1e-9
        ok["size: accuracy (onnx) within 1 point of fp32"] = gap >= -0.01
        print(f"  mean weight bits {r['mixed']['mean_weight_bits']:.2f}; accuracy vs fp32 (onnx): {gap * 100:+.2f} "
              f"points; torch {100 * (r['mixed']['accuracy_torch'] - fp32['accuracy_torch']):+.2f} points")
        print(f"  {r['mixed']['sub8_layers']} layers below 8 bits: stored and run as int8 in ONNX Runtime; "
              f"effective size {r['mixed']['size_mb']:.4f} MB, stored {r['mixed']['storage_size_mb']:.4f} MB")
    if "latency" in reports:
        r = reports["latency"]
        show("cost latency (int8 / fp32 per layer), no target", r)
        ok["latency: on or beyond the fp32 / int8 front"] = not r["dominated_by"]
        print(f"  dominated by: {r['dominated_by'] or 'nothing'}"
              + (f"; the search chose the same assignment as uniform {', '.join(r['same_assignment_as'])}"
                 if r["same_assignment_as"] else ""))
        print("  measured int8 vs fp32 speed-up per layer kind, the search's own layers (table rows; > 1: int8 faster):")
        print_speedups(r.get("int8_speedup_by_layer_kind", {}))
    if "speedup" in reports:
        print(f"\n== measured int8 vs fp32 speed-up per layer kind, {args.space} at {args.speedup_resolution}px "
              f"x{args.speedup_width:g} (no training) ==")
        print_speedups(reports["speedup"])
    for kind, r in reports.items():
        if kind == "speedup":
            continue
        gap = abs(r["mixed"]["accuracy_onnx"] - r["mixed"]["accuracy_torch"])
        ok[f"{kind}: onnx accuracy within 1 point of fake-quant torch"] = gap <= 0.01
    print("\nTargets:")
    for name, passed in ok.items():
        print(f"  [{'met' if passed else 'MISSED'}] {name}")
    summary = {"speedup_at_larger_size": reports.get("speedup")}
    summary |= {k: {"mixed": v["mixed"], "baselines": v["baselines"], "dominated_by": v["dominated_by"],
                   "latency_fit": v.get("latency_fit"), "speedups": v.get("int8_speedup_by_layer_kind")}
               for k, v in reports.items() if k != "speedup"}
    write_json(args.out / "summary.json", {"targets": ok, **summary})
    print(f"\n-> {args.out}")


if __name__ == "__main__":
    main()
