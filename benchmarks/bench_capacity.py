"""Dynamic capacity against dense ViTs shrunk to the same measured latency (Fashion-MNIST by default).

The claim (DynamicViT, DiffMoE): a ViT that spends less compute on easy tokens (keep ratios) or sends tokens to
fewer experts (MoE capacity) keeps more accuracy than a dense ViT shrunk to the same latency. The benchmark trains
the once-for-all dynamic ViT of a vit_capacity space and dense ViTs shrunk in depth and width (the same recipe and
epochs), finds the dynamic model's configs with the capacity search, and compares the two families at targets
relative to the device (fractions of the measured latency of the full-size dense ViT), mean ± std over the seeds:
at each target and seed, each family's candidate with the best validation accuracy at or under the target, scored
on the test split (``nas.search.capacity.comparison``).

Phases (each resumable: everything is cached under --out):
  setup    Fashion-MNIST from Debian's dataset-fashion-mnist (apt-get install when missing), all 70,000 images as
           <out>/fashion_mnist_70k.npz (60/20/20 train/val/test split by seed).
  train    per seed, the dynamic ViT and the dense baselines: accuracy only, so load slows it but does not spoil
           it; --jobs trainings run in parallel with --threads torch threads each (run it under nice).
  plan     inference only: the device's token-count table (profiled here under whatever load: it only ranks
           configs), per seed the capacity search at each target and a grid of configs, their Pareto front by
           validation accuracy and predicted latency, test accuracies, diagnostics (learned vs random token
           selection, gates vs capacity predictor), one ONNX file per distinct graph; writes <out>/plan.json.
  measure  latency only, for a quiet machine (--measure-only reruns just this): a fresh token-count table and
           correction, then ONE interleaved timing pass of every ONNX file; each file run in a plain ONNX Runtime
           session against the torch outputs, measured vs predicted (±10%), the comparison at each target, the
           keep-ratio sweep, the latency breakdown; comparison.png, comparison.md, <out>/measure.json.

    nice -n 10 .venv/bin/python benchmarks/bench_capacity.py --seeds 0,1,2 --jobs 2 --threads 1   # all phases
    .venv/bin/python benchmarks/bench_capacity.py --seeds 0,1,2 --measure-only                    # quiet machine
    .venv/bin/python benchmarks/bench_capacity.py --dataset digits --space PATH.yaml --dense 2x32 --reference 3x32 \\
        --epochs 2 --out results/bench-capacity-smoke                                             # a smoke run

Training runs through the engine (--accelerator cuda --precision bf16 on a GPU machine). Timings are ONNX Runtime,
batch 1, one thread, the calling thread's CPU time by default (--clock).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nas.files import write_json, write_text
from nas.latency.model import LatencyModel
from nas.latency.profile import profile_items
from nas.latency.table import LatencyTable
from nas.latency.timing import TimingConfig
from nas.run import RunDir
from nas.search.blackbox.pareto import pareto_mask
from nas.search.capacity.checkpoint import load_checkpoint, save_checkpoint
from nas.search.capacity.comparison import Candidate, compare_at_target, relative_targets
from nas.search.capacity.config import CapacityConfig, StaticPlan, capacity_factor_plan
from nas.search.capacity.diagnostics import SELECTIONS, expert_choice_overlap, latency_breakdown, selection_accuracy
from nas.search.capacity.evaluate import CapacityEvaluator
from nas.search.capacity.export import export_plan, interleaved_ms
from nas.search.capacity.latency import calibrate_capacity, capacity_profile_items, predict_plan
from nas.search.capacity.plots import plot_comparison
from nas.search.capacity.search import CapacityProblem
from nas.search.capacity.space import CapacitySpace, dense_variant
from nas.search.capacity.strategy import CapacityJob, CapacityStrategy, PreparedCapacity
from nas.search.capacity.task import load_capacity_data
from nas.search.capacity.training import plan_accuracy, train_dynamic
from nas.search.capacity.vit import DynamicViT
from nas.train.engine import engine_for

PLAIN_ORT_IMAGES = 8  # test images each ONNX file is run on in a plain ONNX Runtime session


def log(msg: str) -> None:
    print(msg, flush=True)


# ---- the models ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trained:
    """One model the benchmark trains: the dynamic ViT (depth 0) or a dense one of ``depth`` blocks, ``dim`` wide."""

    seed: int
    depth: int = 0
    dim: int = 0

    @property
    def dynamic(self) -> bool:
        return self.depth == 0

    @property
    def name(self) -> str:
        return "dynamic" if self.dynamic else f"dense d{self.depth} w{self.dim}"

    def folder(self, out: Path) -> Path:
        return out / f"seed{self.seed}" / ("dynamic" if self.dynamic else f"dense-d{self.depth}-w{self.dim}")

    def space(self, base: CapacitySpace) -> CapacitySpace:
        if self.dynamic:
            return base
        heads = base.spec.heads if self.dim % base.spec.heads == 0 else 1
        return dense_variant(base, depth=self.depth, dim=self.dim, heads=heads)


def parse_dense(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in spec.lower().split("x")) for spec in text.split(",") if spec.strip()]
    except ValueError:
        raise SystemExit(f"--dense / --reference: {text!r} is not a list of DEPTHxDIM") from None


def settings(space: CapacitySpace, recipe, args) -> dict:
    """What a cached model must have been trained with."""
    return {"space": space.fingerprint(), "recipe": recipe.model_dump(), "shift": args["shift"],
            "dataset": args["dataset"], "precision": args["precision"],
            "dynamic_training": space.spec.dynamic_training.model_dump()}


def check_cache(folder: Path, wanted: dict) -> None:
    stored = folder / "settings.json"
    if stored.is_file() and json.loads(stored.read_text()) != json.loads(json.dumps(wanted)):
        raise SystemExit(f"{folder} holds a model trained with other settings; use another --out")
    write_json(stored, wanted)


def train_one(job: dict) -> dict:
    """Train one model (in a worker process); resumable from its folder's train_state.pt."""
    torch.set_num_threads(job["threads"])
    which = Trained(**job["model"])
    data, base = load_capacity_data(job["space"], job["dataset"], which.seed)
    space = which.space(base)
    recipe = base.recipe().model_copy(update={"seed": which.seed, **({"epochs": job["epochs"]} if job["epochs"] else {})})
    folder = which.folder(Path(job["out"]))
    folder.mkdir(parents=True, exist_ok=True)
    check_cache(folder, settings(space, recipe, job))
    if (folder / "model.pt").is_file():
        return {"name": which.name, "seed": which.seed, "cached": True}
    engine = engine_for(job["accelerator"], job["precision"], job["threads"])
    torch.manual_seed(which.seed)
    wall, cpu = time.perf_counter(), time.process_time()

    def on_epoch(epoch: int, row: dict) -> None:
        log(f"    seed {which.seed} {which.name}: epoch {epoch}/{recipe.epochs} loss {row['train_loss']:.3f} val "
            f"{row['val_accuracy_full']:.4f} ({time.perf_counter() - wall:.0f} s, {time.process_time() - cpu:.0f} "
            f"CPU s)")

    result = train_dynamic(DynamicViT(space), data, recipe, engine=engine, shift_pixels=job["shift"],
                           checkpoint=folder / "train_state.pt", on_epoch=on_epoch)
    pd.DataFrame(result.history).to_csv(folder / "train_history.csv", index=False)
    seconds = {"train_seconds": time.perf_counter() - wall, "train_cpu_seconds": time.process_time() - cpu}
    save_checkpoint(result.model, folder / "model.pt", {"dataset": job["dataset"], "seed": which.seed,
                                                         "epochs": recipe.epochs, "training": engine.record(),
                                                         **seconds})
    return {"name": which.name, "seed": which.seed, **seconds}


def load_model(which: Trained, base: CapacitySpace, out: Path) -> DynamicViT:
    weights = which.folder(out) / "model.pt"
    if not weights.is_file():
        raise SystemExit(f"{weights} is missing: run the train phase first")
    if which.dynamic:
        model, _ = load_checkpoint(weights, base.path, in_channels=base.in_channels, classes=base.classes)
        return model
    model = DynamicViT(which.space(base))
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval()


def train_phase(args, models: list[Trained]) -> None:
    job = {k: getattr(args, k) for k in ("space", "dataset", "epochs", "shift", "threads", "precision",
                                         "accelerator")} | {"out": str(args.out)}
    jobs = [job | {"model": vars(m)} for m in models]
    log(f"[train] {len(jobs)} models, {args.jobs} at a time, {args.threads} thread(s) each, precision {args.precision}")
    if args.jobs == 1:
        done = [train_one(j) for j in jobs]
    else:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            done = list(pool.map(train_one, jobs))
    for d in done:
        if not d.get("cached"):
            log(f"    seed {d['seed']} {d['name']}: trained in {d['train_seconds']:.0f} s "
                f"({d['train_cpu_seconds']:.0f} CPU s)")


# ---- plan: configs, accuracies, ONNX files (inference only) --------------------------------------------------
def profile_table(device: str, tables: Path, spaces: list[CapacitySpace], clock: str,
                  calibrate: bool = True) -> LatencyModel:
    """Every token-count unit of ``spaces`` in the device table, and (``calibrate``) the dynamic space's whole-model
    correction. Under load the correction is not worth fitting: whole models, whose weights no longer stay in cache,
    measured 1.7-2.3x their units' sum here (CPU clock) where units alone held, so the plan phase ranks by the sum."""
    t0 = time.perf_counter()
    measured = sum(profile_items(device, capacity_profile_items(s), tables_dir=tables,
                                 timing=TimingConfig(clock=clock))["measured"] for s in spaces)
    shown = "no whole-model correction"
    if calibrate:
        corr = calibrate_capacity(device, spaces[0], models=12, tables_dir=tables)
        shown = (f"correction on {corr.fitted_on} models: base {corr.base_ms:.3f} ms, scale {corr.scale:.3f}, per unit "
                 f"{1000 * corr.per_block_ms:+.1f} us, MAPE {corr.fit_mape or 0:.1f}% (uncorrected {corr.raw_mape or 0:.1f}%)")
    log(f"    table {device!r}: {measured} units measured in {time.perf_counter() - t0:.0f} s; {shown}")
    return LatencyModel.load(device, tables, allow_fallback=False)


class OnnxFiles:
    """One ONNX file per distinct graph (space and plan; latency does not depend on the weights), named by a hash of
    both, written with the weights of the first model that needed it, with its outputs on a few test images."""

    def __init__(self, folder: Path, images: torch.Tensor):
        self.folder, self.images = folder, images
        self.folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "check_images.npy", images.numpy())
        self.entries: dict[str, dict] = {}

    def add(self, model: DynamicViT, plan: StaticPlan, which: Trained) -> str:
        key = json.dumps({"space": model.space.fingerprint(), **plan.to_dict()}, sort_keys=True)
        name = "m" + hashlib.sha1(key.encode()).hexdigest()[:10]
        if name not in self.entries:
            path = self.folder / f"{name}.onnx"
            if not path.is_file():
                export_plan(model, plan, path)
            with torch.no_grad():
                expected = model.eval()(self.images, plan).tolist()
            self.entries[name] = {"file": name, "path": str(path), "depth": which.depth, "dim": which.dim,
                                  "plan": plan.to_dict(), "expected": expected}
        return name


def search_targets(args, seed: int, evaluator: CapacityEvaluator, device: str, tables: Path,
                   reference_ms: float) -> list[dict]:
    """The capacity search (``hwnas search capacity``) at each relative target; its configs join the evaluator's
    cache. Returns each search's winner."""
    problem = CapacityProblem(evaluator)
    _, cheapest_ms = problem.cheapest()
    winners = []
    weights = Trained(seed).folder(args.out) / "model.pt"
    for frac in args.targets:
        target = round(frac * reference_ms, 4)
        if target < cheapest_ms:
            log(f"    seed {seed}: no search at {frac:g}x ({target} ms): below the cheapest config ({cheapest_ms:.3f} ms)")
            continue
        job = CapacityJob(args.space, str(weights), device, target, args.dataset, args.trials, seed, measure=False,
                          allow_fallback=False, tables_dir=str(tables))
        prepared = PreparedCapacity(job, problem, seed)
        run = RunDir(args.out / f"seed{seed}" / f"search-{frac:g}x", prepared.run_config())
        report = CapacityStrategy(job).run(prepared, run)
        chosen = report["capacity"]
        winners.append({"target_fraction": frac, "target_ms": target, "config": chosen["config"],
                        "val_accuracy": chosen["val_accuracy"], "test_accuracy": report["accuracy"],
                        "predicted_ms": report["predicted_ms"], "measured_ms_loaded": report["measured_ms"]})
        log(f"    seed {seed}: search at {frac:g}x ({target} ms predicted): {CapacityConfig.from_dict(chosen['config']).label()}"
            f" val {chosen['val_accuracy']:.4f} test {report['accuracy']:.4f}")
    return winners


def diagnose(model: DynamicViT, data, front: list[dict], evaluator: CapacityEvaluator) -> dict:
    """Figures on what the dynamic model learned: learned vs random vs class-attention token selection, accuracy
    against the MoE
    capacity factor, and how often the capacity predictor's token ranking agrees with the gates'."""
    space = model.space
    stages = len(space.stages)
    selection = []
    for rho in (0.8, 0.6, 0.4):
        plan = capacity_factor_plan(space, [rho] * stages, 1.0)
        selection.append({"keep_ratio": rho, "kept_patches": list(plan.kept_patches),
                          **{how: selection_accuracy(model, plan, data.val, how) for how in SELECTIONS}})
    capacity = [{"capacity_factor": cf, "val_accuracy": plan_accuracy(
        model, capacity_factor_plan(space, [1.0] * stages, cf), data.val)} for cf in (0.25, 1.0, 2.0)]
    overlap = []
    for r in front:
        plan, _ = evaluator.plan(CapacityConfig(tuple(r["keep_ratios"]), r["threshold"]))
        overlap.append({"config": r["config"], "expert_tokens": list(plan.expert_tokens),
                        "predictor_gate_overlap": expert_choice_overlap(model, evaluator.x_calib, plan.kept_patches,
                                                                        plan.expert_tokens)})
    return {"selection": selection, "capacity": capacity, "overlap": overlap}


def plan_phase(args, base: CapacitySpace, dense: list[tuple[int, int]], seeds: list[int]) -> None:
    out, device, tables = args.out, "bench-capacity-plan", args.out / "tables"
    log("[plan] token-count table (load is tolerable: it only ranks configs; the measure phase profiles afresh)")
    dense_spaces = [Trained(seeds[0], d, w).space(base) for d, w in dense]
    lm = profile_table(device, tables, [base, *dense_spaces], args.clock, calibrate=False)
    reference = Trained(seeds[0], *args.reference)
    reference_ms = predict_plan(lm, reference.space(base), capacity_factor_plan(reference.space(base), [], 1.0)).ms
    data0, _ = load_capacity_data(args.space, args.dataset, seeds[0])
    files = OnnxFiles(out / "onnx", data0.test.first(PLAIN_ORT_IMAGES))
    candidates, searches, diagnostics = [], {}, {}
    grid = [CapacityConfig(tuple([rho] * len(base.stages)), thr)
            for rho, thr in itertools.product(args.grid_keep, args.grid_thresholds)]
    for seed in seeds:
        cached = out / f"seed{seed}" / "plan.json"  # a seed's figures, so that an interrupted phase resumes
        if cached.is_file():
            done = json.loads(cached.read_text())
            candidates += done["candidates"]
            searches[seed], diagnostics[seed] = done["searches"], done["diagnostics"]
            files.entries |= done["files"]
            log(f"    seed {seed}: planned before ({cached})")
            continue
        first = len(candidates)
        data, _ = load_capacity_data(args.space, args.dataset, seed)
        model = load_model(Trained(seed), base, out)
        evaluator = CapacityEvaluator(model, data, lm, measure=False)
        searches[seed] = search_targets(args, seed, evaluator, device, tables, reference_ms)
        for config in grid:
            evaluator.evaluate(config)
        rows = list(evaluator.cache.values())
        keep = pareto_mask(np.array([r["val_accuracy"] for r in rows]), np.array([[r["predicted_ms"]] for r in rows]))
        front = sorted((r for r, k in zip(rows, keep) if k), key=lambda r: r["predicted_ms"])
        log(f"    seed {seed}: {len(rows)} dynamic configs evaluated, {len(front)} on the Pareto front")
        for r in front:
            plan, _ = evaluator.plan(CapacityConfig(tuple(r["keep_ratios"]), r["threshold"]))
            candidates.append({"family": "dynamic", "seed": seed, "name": f"dynamic {r['config']}",
                               "val_accuracy": r["val_accuracy"], "test_accuracy": plan_accuracy(model, plan, data.test),
                               "file": files.add(model, plan, Trained(seed))})
        for depth, dim in dense:
            which = Trained(seed, depth, dim)
            dmodel = load_model(which, base, out)
            plan = capacity_factor_plan(dmodel.space, [], 1.0)
            candidates.append({"family": "dense", "seed": seed, "name": which.name,
                               "val_accuracy": plan_accuracy(dmodel, plan, data.val),
                               "test_accuracy": plan_accuracy(dmodel, plan, data.test),
                               "file": files.add(dmodel, plan, which)})
        diagnostics[seed] = diagnose(model, data, front, evaluator)
        shown = "; ".join(f"keep {s['keep_ratio']:g}: " + ", ".join(f"{how} {s[how]:.4f}" for how in SELECTIONS)
                          for s in diagnostics[seed]["selection"])
        log(f"    seed {seed}: token selection (val) {shown}")
        mine = candidates[first:]
        write_json(cached, {"candidates": mine, "searches": searches[seed], "diagnostics": diagnostics[seed],
                            "files": {c["file"]: files.entries[c["file"]] for c in mine}})
    # the keep-ratio sweep (the same ratio at every stage, the MoE capacity factor held): latency against tokens
    model = load_model(Trained(seeds[0]), base, out)
    sweep = []
    for rho in base.spec.pruning.keep_ratio_options:
        plan = capacity_factor_plan(base, [rho] * len(base.stages), args.sweep_capacity)
        sweep.append({"keep_ratio": rho, "tokens_per_block": base.block_tokens(list(plan.kept_patches)),
                      "expert_tokens": list(plan.expert_tokens), "val_accuracy": plan_accuracy(model, plan, data0.val),
                      "file": files.add(model, plan, Trained(seeds[0]))})
    write_json(out / "plan.json", {"space": args.space, "dataset": args.dataset, "seeds": seeds,
                                   "reference": reference.name, "reference_file": next(
                                       c["file"] for c in candidates if c["name"] == reference.name),
                                   "targets": args.targets, "candidates": candidates, "searches": searches,
                                   "diagnostics": diagnostics, "sweep": sweep,
                                   "files": list(files.entries.values())})
    log(f"    {len(files.entries)} ONNX files for {len(candidates)} candidates -> {out / 'plan.json'}")


# ---- measure: one interleaved pass (a quiet machine) ----------------------------------------------------------
def plain_ort_check(files: list[dict], images: np.ndarray) -> dict[str, float]:
    """Each file in a plain ONNX Runtime session (default options, no hwnas code): max |ONNX - torch| on the images."""
    import onnxruntime as ort

    diffs = {}
    for f in files:
        session = ort.InferenceSession(f["path"], providers=["CPUExecutionProvider"])
        y = session.run(None, {session.get_inputs()[0].name: images})[0]
        diffs[f["file"]] = float(np.abs(y - np.asarray(f["expected"], np.float32)).max())
    return diffs


def measure_phase(args, base: CapacitySpace) -> None:
    out = args.out
    if not (out / "plan.json").is_file():
        raise SystemExit(f"{out / 'plan.json'} is missing: run the train and plan phases first")
    plan = json.loads((out / "plan.json").read_text())
    files = plan["files"]
    spaces = {f["file"]: Trained(0, f["depth"], f["dim"]).space(base) for f in files}
    device, tables = "bench-capacity-measure", out / "measure-tables"
    log(f"[measure] {len(files)} ONNX files: a fresh table, then one interleaved pass ({args.rounds} rounds, clock "
        f"{args.clock}). Timings are only meaningful on a quiet machine.")
    shutil.rmtree(tables, ignore_errors=True)  # this pass's own table: predictions from this machine, now
    distinct = list({s.fingerprint(): s for s in [base, *spaces.values()]}.values())
    lm = profile_table(device, tables, distinct, args.clock)
    diffs = plain_ort_check(files, np.load(out / "onnx" / "check_images.npy"))
    timed = interleaved_ms({f["file"]: Path(f["path"]) for f in files}, LatencyTable.open(device, tables).manifest,
                           args.rounds, TimingConfig(clock=args.clock))
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
    lines = report_comparisons(comparisons, plan["reference"], reference_ms)
    sweep = report_sweep(plan["sweep"], per_file)
    plot_comparison([c.to_dict() for c in candidates], targets, out / "comparison.png",
                    title=f"{plan['space']} on {plan['dataset']}: test accuracy vs measured latency")
    write_text(out / "comparison.md", "\n".join(lines) + "\n")
    write_json(out / "measure.json", {"device": device, "clock": args.clock, "rounds": args.rounds,
                                      "reference_ms": reference_ms, "targets_ms": targets, "files": per_file,
                                      "comparisons": comparisons, "sweep": sweep})
    log(f"    -> {out / 'measure.json'}, {out / 'comparison.md'}, {out / 'comparison.png'}")


def report_comparisons(comparisons: dict, reference: str, reference_ms: float) -> list[str]:
    """Print each target's per-seed picks and verdict; return the markdown table."""
    lines = [f"Reference: {reference}, measured {reference_ms:.3f} ms.", "",
             "| target | ms | best dynamic (test, mean ± std) | best dense (test, mean ± std) | dynamic - dense "
             "(points) | dynamic wins |", "|---|---|---|---|---|---|"]
    for name, c in comparisons.items():
        log(f"    target {name} = {c['target_ms']:.3f} ms (measured):")
        for row in c["per_seed"]:
            shown = [f"{f} {row[f]['name'].removeprefix(f + ' ')} {row[f]['measured_ms']:.3f} ms val "
                     f"{row[f]['val_accuracy']:.4f} test {row[f]['test_accuracy']:.4f}" if row[f] else f"no {f} model"
                     for f in ("dynamic", "dense")]
            log(f"      seed {row['seed']}: " + " | ".join(shown))
        n = c["seeds_compared"]
        log(f"      over {n} seed(s): dynamic {c['dynamic_test_mean']:.4f} ± {c['dynamic_test_std']:.4f}, dense "
            f"{c['dense_test_mean']:.4f} ± {c['dense_test_std']:.4f}: dynamic {100 * c['difference_mean']:+.2f} ± "
            f"{100 * c['difference_std']:.2f} points, wins {c['dynamic_wins']} of {n}")
        lines.append(f"| {name} | {c['target_ms']:.3f} | {c['dynamic_test_mean']:.4f} ± {c['dynamic_test_std']:.4f} "
                     f"| {c['dense_test_mean']:.4f} ± {c['dense_test_std']:.4f} | {100 * c['difference_mean']:+.2f} ± "
                     f"{100 * c['difference_std']:.2f} | {c['dynamic_wins']} of {n} |")
    return lines


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


# ---- main ------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", default="vit_capacity_fashion", help="vit_capacity space name or YAML")
    ap.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (installed by the setup phase), "
                                                             "digits or npz:PATH")
    ap.add_argument("--out", type=Path, default=Path("results/bench-capacity"))
    ap.add_argument("--seeds", default="0", help="comma-separated data split and training seeds")
    ap.add_argument("--epochs", type=int, default=0, help="epochs of every model (0: the space recipe's)")
    ap.add_argument("--dense", default="2x64,3x64,4x64,5x64,6x48,6x40",
                    help="dense baselines as DEPTHxDIM, comma-separated (the reference is added)")
    ap.add_argument("--reference", default="6x64", help="the full-size dense ViT (DEPTHxDIM) targets are relative to")
    ap.add_argument("--targets", default="0.75,0.9", help="latency targets as fractions of the reference's")
    ap.add_argument("--trials", type=int, default=12, help="capacity search trials per target and seed")
    ap.add_argument("--grid-keep", default="1,0.9,0.8,0.7,0.6,0.5,0.4", help="keep ratios (every stage) of the grid")
    ap.add_argument("--grid-thresholds", default="0.1,0.4,0.7", help="MoE thresholds of the grid")
    ap.add_argument("--sweep-capacity", type=float, default=1.0, help="MoE capacity factor held in the keep sweep")
    ap.add_argument("--shift", type=int, default=2, help="random-shift augmentation in pixels")
    ap.add_argument("--jobs", type=int, default=1, help="trainings run in parallel")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training")
    ap.add_argument("--accelerator", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--precision", default="bf16", help="32 | bf16 | 16-mixed (training)")
    ap.add_argument("--clock", default="cpu", choices=("wall", "cpu"))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds of the measure pass")
    ap.add_argument("--phase", default="all", choices=("setup", "train", "plan", "measure", "all"))
    ap.add_argument("--measure-only", action="store_true", help="only the measure phase (same as --phase measure)")
    args = ap.parse_args(argv)
    phase = "measure" if args.measure_only else args.phase
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.targets = [float(t) for t in args.targets.split(",")]
    args.grid_keep = [float(v) for v in args.grid_keep.split(",")]
    args.grid_thresholds = [float(v) for v in args.grid_thresholds.split(",")]
    args.reference = parse_dense(args.reference)[0]
    dense = list(dict.fromkeys([*parse_dense(args.dense), args.reference]))
    torch.set_num_threads(args.threads)
    if args.dataset == "fashion-mnist":
        from make_fashion_mnist import all_images_npz  # benchmarks/ is this script's import path

        args.dataset = f"npz:{all_images_npz(args.out)}"
    if phase == "setup":
        return 0
    _, base = load_capacity_data(args.space, args.dataset, seeds[0])
    args.space = base.path  # a built-in name resolved to its YAML, as the sidecars record it
    log(f"space {base.name}: {base.tokens} tokens, dim {base.spec.dim}, depth {base.spec.depth}, pruning before "
        f"blocks {base.stages}, MoE blocks {base.moe_blocks}; dataset {args.dataset}; seeds {seeds}")
    started = time.perf_counter()
    if phase in ("train", "all"):
        train_phase(args, [Trained(s, *m) for s in seeds for m in [(0, 0), *sorted(dense, reverse=True)]])
    if phase in ("plan", "all"):
        plan_phase(args, base, dense, seeds)
    if phase in ("measure", "all"):
        measure_phase(args, base)
    log(f"done ({phase}) in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
