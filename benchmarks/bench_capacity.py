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
           validation accuracy and predicted latency, test accuracies, diagnostics (own vs random token
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
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from nas.files import write_json
from nas.run import RunDir
from nas.search.blackbox.pareto import pareto_mask
from nas.search.capacity.checkpoint import load_dynamic_vit, save_dynamic_vit
from nas.search.capacity.config import CapacityConfig, StaticPlan, capacity_factor_plan
from nas.search.capacity.diagnostics import SELECTIONS, expert_choice_overlap, selection_accuracy
from nas.search.capacity.evaluate import CapacityEvaluator
from nas.search.capacity.export import export_plan
from nas.search.capacity.latency import predict_plan
from nas.search.capacity.search import CapacityProblem
from nas.search.capacity.space import CapacitySpace, dense_variant
from nas.search.capacity.strategy import CapacityJob, CapacityStrategy, PreparedCapacity
from nas.search.capacity.task import load_capacity_data
from nas.search.capacity.training import plan_accuracy, train_dynamic
from nas.search.capacity.vit import DynamicViT
from nas.train.engine import engine_for

from capacity_measure import log, measure_phase, profile_table  # benchmarks/ is this script's import path

PLAIN_ORT_IMAGES = 8  # test images each ONNX file is run on in a plain ONNX Runtime session


# ---- the models ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trained:
    """One model the benchmark trains: the dynamic ViT (depth 0; its token ``scoring`` rule names its folder unless
    it is the learned one) or a dense one of ``depth`` blocks, ``dim`` wide."""

    seed: int
    depth: int = 0
    dim: int = 0
    scoring: str = "learned"

    @property
    def dynamic(self) -> bool:
        return self.depth == 0

    @property
    def name(self) -> str:
        return f"dynamic{self.tag}" if self.dynamic else f"dense d{self.depth} w{self.dim}"

    @property
    def tag(self) -> str:
        """What names the files of a dynamic model's planning apart: its scoring rule unless it is the learned one."""
        return "" if self.scoring == "learned" else f"-{self.scoring}"

    def folder(self, out: Path) -> Path:
        return out / f"seed{self.seed}" / (self.name if self.dynamic else f"dense-d{self.depth}-w{self.dim}")

    def space(self, base: CapacitySpace) -> CapacitySpace:
        if self.dynamic:
            return base
        heads = base.spec.heads if self.dim % base.spec.heads == 0 else 1
        return dense_variant(base, depth=self.depth, dim=self.dim, heads=heads)


def dynamic_model(seed: int, space: CapacitySpace) -> Trained:
    return Trained(seed, scoring=space.spec.pruning.scoring)


def parse_dense(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in spec.lower().split("x")) for spec in text.split(",") if spec.strip()]
    except ValueError:
        raise SystemExit(f"--dense / --reference: {text!r} is not a list of DEPTHxDIM") from None


def grid_values(option: str, text: str | None, options: list[float], space: str,
                default: list[float] | None = None) -> list[float]:
    """The grid's values of one decision: those given (each one of the space's options), else ``default`` (else
    every option); SystemExit before any work when a value is not an option of the space."""
    if text is None:
        return list(dict.fromkeys(default or options))
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{option}: {text!r} is not a comma-separated list of numbers") from None
    bad = [v for v in values if not np.isclose(v, options).any()]
    if bad or not values:
        raise SystemExit(f"{option}: {', '.join(map(str, bad)) or 'nothing'} not among {space}'s options "
                         f"({', '.join(f'{o:g}' for o in options)})")
    return values


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
    save_dynamic_vit(result.model, folder / "model.pt", {"dataset": job["dataset"], "seed": which.seed,
                                                         "epochs": recipe.epochs, "training": engine.record(),
                                                         **seconds})
    return {"name": which.name, "seed": which.seed, **seconds}


def load_model(which: Trained, base: CapacitySpace, out: Path) -> DynamicViT:
    weights = which.folder(out) / "model.pt"
    if not weights.is_file():
        raise SystemExit(f"{weights} is missing: run the train phase first")
    if which.dynamic:
        model, _ = load_dynamic_vit(weights, base.path, in_channels=base.in_channels, classes=base.classes)
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
class OnnxFiles:
    """One ONNX file per trained model and plan, named by a hash of the model's folder, its space and the plan, with
    its outputs on a few test images (what the measure phase checks each file's plain ONNX Runtime session against).
    A seed planned in another run has its files added again (``add_cached``), so that a file's weights and its
    expected outputs always come from the same model."""

    def __init__(self, folder: Path, images: torch.Tensor):
        self.folder, self.images = folder, images
        self.folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "check_images.npy", images.numpy())
        self.entries: dict[str, dict] = {}

    def add(self, model: DynamicViT, plan: StaticPlan, which: Trained) -> str:
        key = json.dumps({"model": str(which.folder(Path())), "space": model.space.fingerprint(), **plan.to_dict()},
                         sort_keys=True)
        name = "m" + hashlib.sha1(key.encode()).hexdigest()[:10]
        if name not in self.entries:
            path = self.folder / f"{name}.onnx"
            if not path.is_file():
                export_plan(model, plan, path)
            with torch.no_grad():
                expected = model.eval()(self.images, plan).tolist()
            self.entries[name] = {"file": name, "path": str(path), "depth": which.depth, "dim": which.dim,
                                  "heads": model.space.spec.heads, "plan": plan.to_dict(), "expected": expected}
        return name

    def add_cached(self, candidates: list[dict], files: dict, seed: int, base: CapacitySpace, out: Path) -> None:
        """The files of one seed's cached candidates, added again from that seed's models (each candidate's
        ``file`` is updated to the name ``add`` gives it)."""
        models: dict[Trained, DynamicViT] = {}
        for c in candidates:
            entry = files[c["file"]]
            which = dynamic_model(seed, base) if not entry["depth"] else Trained(seed, entry["depth"], entry["dim"])
            if which not in models:
                models[which] = load_model(which, base, out)
            c["file"] = self.add(models[which], StaticPlan.from_dict(entry["plan"]), which)


def search_targets(args, seed: int, evaluator: CapacityEvaluator, device: str, tables: Path,
                   reference_ms: float) -> list[dict]:
    """The capacity search (``hwnas search capacity``) at each relative target; its configs join the evaluator's
    cache. Returns each search's winner."""
    problem = CapacityProblem(evaluator)
    _, cheapest_ms = problem.cheapest()
    winners = []
    dynamic = dynamic_model(seed, evaluator.model.space)
    weights = dynamic.folder(args.out) / "model.pt"
    for frac in args.targets:
        target = round(frac * reference_ms, 4)
        if target < cheapest_ms:
            log(f"    seed {seed}: no search at {frac:g}x ({target} ms): below the cheapest config ({cheapest_ms:.3f} ms)")
            continue
        job = CapacityJob(space=args.space, checkpoint=str(weights), device=device, target_ms=target,
                          dataset=args.dataset, trials=args.trials, seed=seed, measure=False, allow_fallback=False,
                          tables_dir=str(tables))
        prepared = PreparedCapacity(job, problem, seed)
        run = RunDir(args.out / f"seed{seed}" / f"search{dynamic.tag}-{frac:g}x", prepared.run_config())
        report = CapacityStrategy(job).run(prepared, run)
        chosen = report["capacity"]
        winners.append({"target_fraction": frac, "target_ms": target, "config": chosen["config"],
                        "val_accuracy": chosen["val_accuracy"], "test_accuracy": report["accuracy"],
                        "predicted_ms": report["predicted_ms"], "measured_ms_loaded": report["measured_ms"]})
        log(f"    seed {seed}: search at {frac:g}x ({target} ms predicted): {CapacityConfig.from_dict(chosen['config']).label()}"
            f" val {chosen['val_accuracy']:.4f} test {report['accuracy']:.4f}")
    return winners


def diagnose(model: DynamicViT, data, front: list[dict], evaluator: CapacityEvaluator) -> dict:
    """Figures on what the dynamic model learned: its own vs random vs class-attention token selection, accuracy
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
        dynamic = dynamic_model(seed, base)
        cached = out / f"seed{seed}" / f"plan{dynamic.tag}.json"  # a seed's figures: an interrupted phase resumes
        if cached.is_file():
            done = json.loads(cached.read_text())
            files.add_cached(done["candidates"], done["files"], seed, base, out)
            candidates += done["candidates"]
            searches[seed], diagnostics[seed] = done["searches"], done["diagnostics"]
            log(f"    seed {seed}: planned before ({cached})")
            continue
        first = len(candidates)
        data, _ = load_capacity_data(args.space, args.dataset, seed)
        model = load_model(dynamic, base, out)
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
                               "file": files.add(model, plan, dynamic)})
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
    first_dynamic = dynamic_model(seeds[0], base)
    model = load_model(first_dynamic, base, out)
    sweep = []
    for rho in base.spec.pruning.keep_ratio_options:
        plan = capacity_factor_plan(base, [rho] * len(base.stages), args.sweep_capacity)
        sweep.append({"keep_ratio": rho, "tokens_per_block": base.block_tokens(list(plan.kept_patches)),
                      "expert_tokens": list(plan.expert_tokens), "val_accuracy": plan_accuracy(model, plan, data0.val),
                      "file": files.add(model, plan, first_dynamic)})
    write_json(out / "plan.json", {"space": args.space, "space_args": base.space_args(), "dataset": args.dataset,
                                   "seeds": seeds,
                                   "reference": reference.name, "reference_file": next(
                                       c["file"] for c in candidates if c["name"] == reference.name),
                                   "targets": args.targets, "candidates": candidates, "searches": searches,
                                   "diagnostics": diagnostics, "sweep": sweep,
                                   "files": list(files.entries.values())})
    log(f"    {len(files.entries)} ONNX files for {len(candidates)} candidates -> {out / 'plan.json'}")


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
    ap.add_argument("--grid-keep", default=None, help="keep ratios (every stage) of the grid (default: the space's)")
    ap.add_argument("--grid-thresholds", default=None, help="MoE thresholds of the grid (default: three of the "
                    "space's, its lowest, middle and highest)")
    ap.add_argument("--sweep-capacity", type=float, default=1.0, help="MoE capacity factor held in the keep sweep")
    ap.add_argument("--shift", type=int, default=2, help="random-shift augmentation in pixels")
    ap.add_argument("--models", default="all", choices=("all", "dynamic", "dense"),
                    help="which models the train phase trains (e.g. a second scoring rule's dynamic models only)")
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
    seeds = [int(s) for s in args.seeds.split(",")]
    args.targets = [float(t) for t in args.targets.split(",")]
    args.reference = parse_dense(args.reference)[0]
    dense = list(dict.fromkeys([*parse_dense(args.dense), args.reference]))
    torch.set_num_threads(args.threads)
    if args.dataset == "fashion-mnist":
        from make_fashion_mnist import fashion_mnist_npz  # benchmarks/ is this script's import path

        args.out.mkdir(parents=True, exist_ok=True)  # the data's set-up step: the images, cached once
        args.dataset = f"npz:{fashion_mnist_npz(args.out)}"
    if phase == "setup":
        return 0
    _, base = load_capacity_data(args.space, args.dataset, seeds[0])
    args.space = base.path  # a built-in name resolved to its YAML, as the sidecars record it
    args.grid_keep = grid_values("--grid-keep", args.grid_keep, base.spec.pruning.keep_ratio_options, base.name)
    thresholds = base.spec.moe.threshold_options
    args.grid_thresholds = grid_values("--grid-thresholds", args.grid_thresholds,
                                       thresholds, base.name, default=[thresholds[0], thresholds[len(thresholds) // 2],
                                                                       thresholds[-1]])
    args.out.mkdir(parents=True, exist_ok=True)  # once the options are known to be valid
    log(f"space {base.name}: {base.tokens} tokens, dim {base.spec.dim}, depth {base.spec.depth}, pruning before "
        f"blocks {base.stages}, MoE blocks {base.moe_blocks}; dataset {args.dataset}; seeds {seeds}")
    started = time.perf_counter()
    if phase in ("train", "all"):
        models = [m for s in seeds for m in [dynamic_model(s, base), *(Trained(s, d, w) for d, w in
                                                                     sorted(dense, reverse=True))]]
        train_phase(args, [m for m in models if args.models == "all" or m.dynamic == (args.models == "dynamic")])
    if phase in ("plan", "all"):
        plan_phase(args, base, dense, seeds)
    if phase in ("measure", "all"):
        measure_phase(args.out, args.rounds, args.clock)
    log(f"done ({phase}) in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
