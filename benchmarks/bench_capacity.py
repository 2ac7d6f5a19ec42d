"""Claims of dynamic capacity: latency falls with the keep ratio, the chosen config's measured latency is within
10% of its prediction, and the dynamic model's configs beat dense models shrunk to the same latency. Prints:

1. Measured ONNX Runtime latency against the keep ratio (the same ratio at every pruning stage, the MoE
   capacity factor fixed): is it monotonic, and the speed-up at keep ratio 0.7 at three stages over no pruning.
2. A capacity search for a target: the chosen config's measured latency against its prediction and the target.
3. Accuracy-latency curves on real data: the dynamic model's configs (the Pareto front of a coarse grid of configs
   and the search's, so that the curve spans every latency the checkpoint reaches) against dense models shrunk to
   the same latency (fewer blocks or narrower), each trained with the same recipe; both curves are printed.

Everything is cached under --out (rerun to resume), the device's latency table included
(``<out>/tables/<device>/``, never the repository's ``latency_tables/``). Timings come from ONNX Runtime (1 thread,
batch 1, the calling thread's CPU time by default); on a shared machine they are noisy, so models are timed in
interleaved rounds and the median is reported.

    .venv/bin/python benchmarks/bench_capacity.py [--epochs N] [--trials 20] [--clock cpu|wall]
        [--checkpoint results/RUN/model.pt]   # reuse a `hwnas train-dynamic` checkpoint instead of training
        [--dataset npz:results/cluttered_digits.npz --tables-dir results/bench-capacity/tables]

On plain digits a two-block dense transformer is already at ~99% test accuracy, so the dense curve is flat and
no config of a deeper model can lie above it; benchmarks/make_cluttered_digits.py writes a harder dataset from the
same real digits (one digit on a 24 px canvas with clutter), where most tokens are background;
benchmarks/make_fashion_mnist.py writes a Fashion-MNIST subset from local IDX files (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import harness  # first: the repository on the import path
import numpy as np
import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from nas.files import write_json
from nas.latency.device import Device
from nas.latency.model import LatencyModel
from nas.latency.table import LatencyTable
from nas.run import RunDir
from nas.search.blackbox.pareto import pareto_mask
from nas.search.capacity.checkpoint import load_dynamic_vit, save_dynamic_vit
from nas.search.capacity.config import CapacityConfig, capacity_factor_plan
from nas.search.capacity.evaluate import CapacityEvaluator, calibration_images
from nas.search.capacity.export import export_plan, interleaved_ms
from nas.search.capacity.latency import predict_plan
from nas.search.capacity.planning import plan_for_config
from nas.search.capacity.plots import plot_curves
from nas.search.capacity.search import CapacityProblem
from nas.search.capacity.space import dense_variant
from nas.search.capacity.strategy import CapacityJob, CapacityStrategy, PreparedCapacity
from nas.search.capacity.task import load_capacity_data
from nas.search.capacity.training import plan_accuracy, train_dynamic
from nas.search.capacity.vit import ConfiguredViT, DynamicViT


def log(msg: str) -> None:
    print(msg, flush=True)


def check_cache(folder: Path, settings: dict) -> None:
    """A cached model must have been trained with the same settings; otherwise ask for another --out."""
    stored = folder / "settings.json"
    if stored.is_file() and json.loads(stored.read_text()) != json.loads(json.dumps(settings)):
        raise SystemExit(f"{folder} holds a model trained with other settings; use another --out")
    write_json(stored, settings)


def train_and_save(space, data, recipe, folder: Path, shift: int) -> DynamicViT:
    """Train once-for-all (resumable from folder/train_state.pt) and write folder/model.pt + sidecar."""
    check_cache(folder, {"space": space.fingerprint(), "recipe": recipe.model_dump(), "shift": shift,
                         "dynamic_training": space.spec.dynamic_training.model_dump()})
    torch.manual_seed(recipe.seed)
    model = DynamicViT(space)
    t0 = time.perf_counter()
    result = train_dynamic(model, data, recipe, shift_pixels=shift, checkpoint=folder / "train_state.pt",
                           on_epoch=lambda e, r: log(f"    epoch {e}/{recipe.epochs} loss {r['train_loss']:.3f} "
                                                     f"val (full) {r['val_accuracy_full']:.3f}") if e % 5 == 0 else None)
    pd.DataFrame(result.history).to_csv(folder / "train_history.csv", index=False)
    save_dynamic_vit(result.model, folder / "model.pt", {"train_seconds": time.perf_counter() - t0})
    return result.model


def load_dense(space, folder: Path) -> DynamicViT | None:
    weights = folder / "model.pt"
    if not weights.is_file():
        return None
    model = DynamicViT(space)
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def macs(model: DynamicViT, plan) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        ConfiguredViT(model, plan)(torch.zeros(1, *model.input_shape))
    return counter.get_total_flops() // 2


def interleaved(paths: dict[str, Path], manifest, rounds: int) -> dict[str, dict]:
    """Median over interleaved rounds (nas.search.capacity.export.interleaved_ms), keyed ``ms``."""
    return {n: {"ms": r["measured_ms"], "min_ms": r["measured_min_ms"], "max_ms": r["measured_max_ms"]}
            for n, r in interleaved_ms(paths, manifest, rounds).items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="vit_capacity")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--device", default=None, help="device id (default: bench-capacity-<clock>)")
    ap.add_argument("--tables-dir", default=None, help="latency tables base folder (default: <out>/tables)")
    ap.add_argument("--out", default="results/bench-capacity")
    ap.add_argument("--checkpoint", default=None, help="a `hwnas train-dynamic` model.pt to use instead of training")
    ap.add_argument("--epochs", type=int, default=40, help="training epochs of the dynamic and dense models "
                                                          "(0: the space recipe's)")
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--target-ms", type=float, default=None, help="search target (default: 85%% of the full "
                                                                   "config's predicted latency)")
    ap.add_argument("--clock", default="cpu", choices=("wall", "cpu"))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per model")
    ap.add_argument("--dense", default="2x64,3x64,4x64,6x32",
                    help="dense baselines as DEPTHxDIM, comma-separated")
    ap.add_argument("--grid-keep", default="1,0.8,0.6,0.4",
                    help="keep ratios per stage of the grid that spans the dynamic curve")
    ap.add_argument("--grid-thresholds", default="0.1,0.5", help="MoE thresholds of that grid")
    ap.add_argument("--shift", type=int, default=2)
    ap.add_argument("--sweep-capacity", type=float, default=1.0, help="MoE capacity factor held in the keep sweep")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.tables_dir = args.tables_dir or str(out / "tables")
    device = args.device or f"bench-capacity-{args.clock}"
    started = time.perf_counter()
    log("NOTE: timings are ONNX Runtime batch-1, 1 thread; other jobs share this CPU, so they are noisy "
        "(interleaved rounds, median reported). Rerun on a quiet machine for final figures.")

    data, space = load_capacity_data(args.space, args.dataset, args.seed)
    recipe = space.recipe().model_copy(update={"seed": args.seed, **({"epochs": args.epochs} if args.epochs else {})})
    log(f"space {space.name}: {space.tokens} tokens, dim {space.spec.dim}, depth {space.spec.depth}, "
        f"stages before blocks {space.stages}, MoE blocks {space.moe_blocks}; data {data.sizes()}")

    # ---- 1. the dynamic model, trained once -------------------------------------------------------------------
    (out / "dynamic").mkdir(exist_ok=True)
    weights = out / "dynamic" / "model.pt"
    if args.checkpoint:
        log(f"[1/5] once-for-all checkpoint {args.checkpoint} (trained by `hwnas train-dynamic`)")
        model, meta = load_dynamic_vit(args.checkpoint, args.space, in_channels=space.in_channels,
                                       classes=space.classes)
        if meta.get("epochs"):
            recipe = recipe.model_copy(update={"epochs": int(meta["epochs"])})  # dense baselines get the same
    elif weights.is_file():
        log(f"[1/5] once-for-all training ({recipe.epochs} epochs): cached in {out / 'dynamic'}")
        check_cache(out / "dynamic", {"space": space.fingerprint(), "recipe": recipe.model_dump(), "shift": args.shift,
                                      "dynamic_training": space.spec.dynamic_training.model_dump()})
        model, _ = load_dynamic_vit(weights, args.space, in_channels=space.in_channels, classes=space.classes)
    else:
        log(f"[1/5] once-for-all training ({recipe.epochs} epochs) -> {out / 'dynamic'}")
        model = train_and_save(space, data, recipe, out / "dynamic", args.shift)
    model.eval()

    # ---- 2. token-count latency tables ------------------------------------------------------------------------
    log(f"[2/5] profiling the token-count units of {space.name} into device {device!r} (clock {args.clock})")
    t0 = time.perf_counter()
    counts, corr = harness.profile_table(Device(clock=args.clock, device_id=device), space,
                                         tables_dir=args.tables_dir, calibration=12)
    log(f"    measured {counts['measured']} units (had {counts['skipped']}) in {time.perf_counter() - t0:.0f} s; "
        f"correction on {corr.fitted_on} models: base {corr.base_ms:.3f} ms, scale {corr.scale:.3f}, per unit "
        f"{corr.per_block_ms * 1000:+.1f} us; MAPE {corr.fit_mape or 0:.1f}% (uncorrected {corr.raw_mape or 0:.1f}%)")
    lm = LatencyModel.load(device, args.tables_dir, allow_fallback=False)
    manifest = LatencyTable.open(device, args.tables_dir).manifest
    x_calib = calibration_images(data)

    # ---- 3. latency against keep ratio ------------------------------------------------------------------------
    thresholds = space.spec.moe.threshold_options
    ratios = space.spec.pruning.keep_ratio_options
    # The MoE capacity is held at a fixed capacity factor (each expert takes factor * tokens / experts), so the
    # sweep isolates token pruning; a fixed threshold would let the calibrated capacity move with the ratio.
    log(f"[3/5] keep-ratio sweep at {len(space.stages)} stages, MoE capacity factor {args.sweep_capacity:g}")
    sweep_dir = out / "sweep"
    sweep_dir.mkdir(exist_ok=True)
    sweep = []
    paths = {}
    for rho in ratios:
        plan = capacity_factor_plan(space, [rho] * len(space.stages), args.sweep_capacity)
        paths[f"{rho:g}"] = export_plan(model, plan, sweep_dir / f"keep{rho:g}.onnx")
        sweep.append({"keep_ratio": rho, "tokens_per_block": space.block_tokens(list(plan.kept_patches)),
                      "expert_tokens": list(plan.expert_tokens), "macs": macs(model, plan),
                      "predicted_ms": predict_plan(lm, space, plan).ms,
                      "val_accuracy": plan_accuracy(model, plan, data.val)})
    timed = interleaved(paths, manifest, args.rounds)
    for row in sweep:
        t = timed[f"{row['keep_ratio']:g}"]
        row |= {"measured_ms": t["ms"], "measured_best_round_ms": t["min_ms"], "measured_worst_round_ms": t["max_ms"]}
    full = sweep[0]
    log(f"    {'keep':>5s} {'tokens per block':26s} {'experts':>7s} {'MMACs':>6s} {'pred ms':>8s} {'meas ms (median / best round)':>30s} "
        f"{'speed-up':>15s} {'val acc':>7s}")
    for row in sweep:
        log(f"    {row['keep_ratio']:5.2f} {' '.join(map(str, row['tokens_per_block'])):26s} "
            f"{' '.join(map(str, row['expert_tokens'])):>7s} {row['macs'] / 1e6:6.2f} "
            f"{row['predicted_ms']:8.3f} {row['measured_ms']:20.3f} / {row['measured_best_round_ms']:.3f} "
            f"{full['measured_ms'] / row['measured_ms']:7.2f}x / {full['measured_best_round_ms'] / row['measured_best_round_ms']:.2f}x "
            f"{row['val_accuracy']:7.3f}")
    monotonic = {}
    for col in ("measured_ms", "measured_best_round_ms", "predicted_ms"):
        values = [r[col] for r in sweep]
        monotonic[col] = all(b < a for a, b in zip(values, values[1:]))
        first_bad = next((sweep[i + 1]["keep_ratio"] for i, (a, b) in enumerate(zip(values, values[1:])) if b >= a), None)
        log(f"    {col} falls monotonically as the keep ratio falls: " +
            ("YES" if monotonic[col] else f"NO (first rise at keep {first_bad:g})"))
    at07 = next((r for r in sweep if abs(r["keep_ratio"] - 0.7) < 1e-9), None)
    if at07:
        log(f"    keep 0.7 at {len(space.stages)} stages vs no pruning: measured speed-up "
            f"{full['measured_ms'] / at07['measured_ms']:.2f}x median ({full['measured_ms']:.3f} -> {at07['measured_ms']:.3f} ms), "
            f"{full['measured_best_round_ms'] / at07['measured_best_round_ms']:.2f}x best round; predicted "
            f"{full['predicted_ms'] / at07['predicted_ms']:.2f}x; MACs -{1 - at07['macs'] / full['macs']:.0%}; "
            f"val accuracy {full['val_accuracy']:.3f} -> {at07['val_accuracy']:.3f}")

    # ---- 4. search for a target -------------------------------------------------------------------------------
    evaluator = CapacityEvaluator(model, data, lm, measure=True)
    full_ms = evaluator.predicted_ms(CapacityConfig(tuple([1.0] * len(space.stages)), thresholds[0]))
    target = args.target_ms or round(0.85 * full_ms, 3)
    log(f"[4/5] capacity search: target {target} ms ({args.trials} trials; full config predicted {full_ms:.3f} ms)")
    run = RunDir(out / f"search-{device}", {"space": space.fingerprint(), "device": device, "target_ms": target,
                                  "trials": args.trials, "seed": args.seed, "epochs": recipe.epochs,
                                  "checkpoint": str(args.checkpoint or weights)})
    job = CapacityJob(space=space.name, checkpoint=str(args.checkpoint or weights), device=device, target_ms=target,
                      trials=args.trials, seed=args.seed)
    report = CapacityStrategy(job).run(PreparedCapacity(job, CapacityProblem(evaluator), args.seed), run)
    rows = list(evaluator.cache.values())  # every config the search evaluated
    chosen = report["capacity"]
    err_pred = report["prediction_error_pct"] / 100
    log(f"    chosen keep {chosen['config']['keep_ratios']} threshold {chosen['config']['threshold']}: val "
        f"{chosen['val_accuracy']:.3f}, test {report['accuracy']:.3f}, onnx max abs diff {report['onnx_max_abs_diff']:.1e}")
    log(f"    predicted {report['predicted_ms']:.3f} ms, measured {report['measured_ms']:.3f} ms ({err_pred:+.1%} vs "
        f"predicted: {'within' if abs(err_pred) <= 0.1 else 'OUTSIDE'} +-10%), target {target} ms "
        f"({chosen['measured_vs_target_pct']:+.1f}%: {'meets' if report['within_target'] else 'MISSES'} "
        f"'under or within +-10%')")
    errors = [r["measured_ms"] / r["predicted_ms"] - 1 for r in rows]
    log(f"    over all {len(rows)} configs tried: {np.mean(np.abs(errors)) * 100:.1f}% mean |measured/predicted - 1|, "
        f"{np.mean(np.abs(errors) <= 0.1) * 100:.0f}% within +-10%")

    # ---- 5. accuracy-latency curves: dynamic configs vs dense models ------------------------------------------
    log(f"[5/5] dense baselines ({args.dense}), same recipe and epochs")
    dense_models = {}
    for spec in args.dense.split(","):
        depth, dim = (int(v) for v in spec.lower().split("x"))
        heads = space.spec.heads if dim % space.spec.heads == 0 else 1
        dspace = dense_variant(space, depth=depth, dim=dim, heads=heads)
        folder = out / "dense" / f"d{depth}w{dim}"
        folder.mkdir(parents=True, exist_ok=True)
        dmodel = load_dense(dspace, folder)
        if dmodel is not None:
            check_cache(folder, {"space": dspace.fingerprint(), "recipe": recipe.model_dump(), "shift": args.shift,
                                 "dynamic_training": dspace.spec.dynamic_training.model_dump()})
        else:
            log(f"    training dense depth {depth} dim {dim}")
            dmodel = train_and_save(dspace, data, recipe, folder, args.shift)
        dense_models[f"dense d{depth} w{dim}"] = dmodel.eval()
    # The dynamic curve spans every latency the checkpoint reaches, not only the search's neighbourhood of the
    # target: a coarse grid of configs (validation accuracy, predicted latency; inference only) joins the
    # search's configs, and their Pareto front is exported, timed and scored on the test split.
    grid_keep = [float(v) for v in args.grid_keep.split(",")]
    grid_thresholds = [float(v) for v in args.grid_thresholds.split(",")]
    grid = list(itertools.product(itertools.product(grid_keep, repeat=len(space.stages)), grid_thresholds))
    log(f"    dynamic curve: {len(grid)} grid configs (keep {grid_keep} per stage, thresholds {grid_thresholds}) "
        f"+ {len(rows)} search configs")
    scorer = CapacityEvaluator(model, data, lm, measure=False)
    candidates = rows + [scorer.evaluate(CapacityConfig(keep, thr)) for keep, thr in grid]
    unique = list({r["config"]: r for r in candidates}.values())
    front = [r for r, keep in zip(unique, pareto_mask(np.array([r["val_accuracy"] for r in unique]),
                                                      np.array([[r["predicted_ms"]] for r in unique]))) if keep]
    curve_dir = out / "curves"
    curve_dir.mkdir(exist_ok=True)
    paths, acc = {}, {}
    for r in front:
        config = CapacityConfig(tuple(r["keep_ratios"]), r["threshold"])
        plan, _ = plan_for_config(model, config, x_calib)
        name = f"dynamic {config.label()}"
        paths[name] = export_plan(model, plan, curve_dir / f"dyn{len(paths)}.onnx")
        acc[name] = plan_accuracy(model, plan, data.test)
    for name, dmodel in dense_models.items():
        plan, _ = plan_for_config(dmodel, CapacityConfig((), 0.5), x_calib)
        paths[name] = export_plan(dmodel, plan, curve_dir / f"{name.replace(' ', '_')}.onnx")
        acc[name] = plan_accuracy(dmodel, plan, data.test)
    timed = interleaved(paths, manifest, args.rounds)
    dyn_curve = sorted((timed[n]["ms"], acc[n], n) for n in paths if n.startswith("dynamic"))
    dense_curve = sorted((timed[n]["ms"], acc[n], n) for n in paths if n.startswith("dense"))
    best_round = {n: timed[n]["min_ms"] for n in paths}
    log("    dynamic configs (Pareto front of grid + search by validation accuracy and predicted latency):")
    for ms, a, n in dyn_curve:
        log(f"      {ms:7.3f} ms (best round {best_round[n]:.3f})  test acc {a:.4f}  {n}")
    log("    dense models:")
    for ms, a, n in dense_curve:
        log(f"      {ms:7.3f} ms (best round {best_round[n]:.3f})  test acc {a:.4f}  {n}")
    wins = 0
    comparisons = []
    for ms, a, n in dense_curve:
        best = max((da for dms, da, _ in dyn_curve if dms <= ms), default=None)
        comparisons.append({"dense": n, "dense_ms": ms, "dense_accuracy": a, "best_dynamic_accuracy_at_or_under": best})
        if best is not None and best > a:
            wins += 1
        shown = "no dynamic config this fast" if best is None else f"best dynamic {best:.4f} ({best - a:+.4f})"
        log(f"      at {ms:.3f} ms: dense {a:.4f} vs {shown}")
    log(f"    dynamic curve above dense at {wins} of {len(dense_curve)} dense latencies")
    above = 0
    for ms, a, n in dyn_curve:
        best = max((da for dms, da, _ in dense_curve if dms <= ms), default=None)
        above += best is None or a > best
        shown = "no dense model this fast" if best is None else f"best dense {best:.4f} ({a - best:+.4f} for dynamic)"
        log(f"      at {ms:.3f} ms: dynamic {a:.4f} vs {shown}")
    log(f"    dynamic above the dense curve at {above} of {len(dyn_curve)} dynamic latencies")
    plot_curves({"dynamic (one checkpoint)": [(m, a) for m, a, _ in dyn_curve],
                 "dense, fewer blocks / narrower": [(m, a) for m, a, _ in dense_curve]}, out / "curves.png",
                ylabel="test accuracy")
    write_json(out / "bench.json", {"device": device, "clock": args.clock, "sweep": sweep, "monotonic": monotonic, "best_round_ms": best_round,
                                    "search": report, "dynamic_curve": dyn_curve, "dense_curve": dense_curve,
                                    "comparisons": comparisons, "seconds": time.perf_counter() - started})
    log(f"done in {time.perf_counter() - started:.0f} s -> {out}/bench.json, curves.png, {run.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
