"""A searched model beats the shortcuts: a DMasking search against what a user would do instead, at equal measured
latency, on Fashion-MNIST. Prints a table and writes a plot; asserts nothing.

    nice -n 10 .venv/bin/python benchmarks/bench_compare.py --threads 1 [--out results/bench-compare]
    nice -n 10 .venv/bin/python benchmarks/bench_compare.py --measure-only     # on a quiet machine, afterwards

Contenders, each trained with the same recipe on the same split over ``--seeds`` seeds (mean and std):
- the DMasking winner at a device-relative latency target (the ``--target-quantile`` of random archs' predicted
  latency on the device);
- (a) FBNet-A and MobileNetV2 width-scaled to the winner's measured latency (``hwnas compare``'s scaling);
- (b) the ``--cost flops`` ablation: the same search, target and seed with latency as a line in FLOPs;
- (c) ``--randoms`` random archs of the space whose measured latency is within 5% of the winner's.
With ``--search-seeds N`` the search and its ablation (``--flops-seeds``) run with seeds 0 .. N-1 on one data split (the
baselines and random archs are scaled to seed 0's winner), each a contender of its own, then pooled over searches
and seeds. ``--space`` searches another space (``fbnet_v2_fixed_resolution``: no resolution choice).

Phases, each timed: set-up (Debian's ``dataset-fashion-mnist``, installed here with apt when missing: never by the
tests or CI; all 70,000 images into an npz), searches, contender choice (widths, random archs: short interleaved
timings), trainings (accuracy does not depend on machine load), then ONE interleaved measurement pass of every
exported model, which ``--measure-only`` reruns alone: run it on a quiet machine. Everything resumes from ``--out``.
Reduced runs: ``--per-class N`` (a class-balanced subset), ``--search-epochs``, ``--final-epochs``, ``--seeds 1``.
Side by side on a machine with cores to spare: ``--only-search search`` and ``--only-search flops`` in two processes,
then ``--stop-after-contenders``, then ``--shard 0/2`` and ``--shard 1/2``, then the plain command (which then only
measures and reports).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.make_fashion_mnist import fashion_mnist_npz  # noqa: E402
from nas.latency.timing import TimingConfig  # noqa: E402
from nas.models.builder import build_model  # noqa: E402
from nas.models.onnx_io import export_onnx  # noqa: E402
from nas.run import RunDir  # noqa: E402
from nas.search.compare.contenders import Contender, trained_report  # noqa: E402
from nas.search.compare.job import (  # noqa: E402
    CompareJob,
    baseline_contender,
    measure_all,
    prepare_compare,
    searched_contender,
    train_all,
    write_results,
)
from nas.search.dnas.search import SupernetSearchSettings  # noqa: E402
from nas.search.dnas.strategy import SearchJob, SupernetStrategy  # noqa: E402
from nas.search.strategy import open_run  # noqa: E402
from nas.train.accelerator import resolve_accelerator  # noqa: E402
from nas.train.engine import Engine  # noqa: E402
from nas.train.recipe import Recipe  # noqa: E402

TOLERANCE = 0.05
FOLDERS = {"latency": "search", "flops": "flops"}  # each cost's search folder under --out (seed 0's)


def log(text: str) -> None:
    print(text, flush=True)


def setup_data(args) -> str:
    """Debian's Fashion-MNIST (apt, when missing) as an npz: all 70,000 images, or ``--per-class`` of each class."""
    return f"npz:{fashion_mnist_npz(ROOT / 'results', args.per_class)}"


def settings(args, **extra) -> SupernetSearchSettings:
    overrides = {}
    for item in args.search_setting:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)  # numbers, null
    return SupernetSearchSettings(epochs=args.search_epochs, **{"alpha": args.alpha, **overrides, **extra})


def search_folders(args) -> dict[str, tuple[str, int]]:
    """Each search's folder under ``--out`` and its cost and search seed: "search" and "flops" (seed 0), then
    "search-seed1", "flops-seed1", ... The data split is seed 0's for all of them."""
    seeds = {"latency": args.search_seeds, "flops": 0 if args.no_flops else args.flops_seeds or args.search_seeds}
    return {FOLDERS[cost] + (f"-seed{seed}" if seed else ""): (cost, seed)
            for seed in range(max(seeds.values())) for cost in seeds if seed < seeds[cost]}


def search_job(args, dataset: str, engine: Engine, cost: str, target_ms: float | None, seed: int = 0) -> SearchJob:
    return SearchJob(method="dmasking", space=args.space, device=args.device, dataset=dataset, width=args.width,
                     target_ms=target_ms, seed=seed, split_seed=0,
                     settings=settings(args, target_ms=target_ms), cost=cost, tables_dir=args.tables_dir, profile=True,
                     engine=engine, recipe=Recipe(epochs=args.final_epochs, batch_size=args.batch))


def relative_target(args, dataset: str, engine: Engine) -> float:
    """The ``--target-quantile`` of 400 random archs' predicted latency on the device (the table's)."""
    prep = SupernetStrategy(search_job(args, dataset, engine, "latency", None)).prepare()
    rng = np.random.default_rng(0)
    return float(np.quantile([prep.lm.predict(prep.space, prep.space.sample(rng)) for _ in range(400)],
                             args.target_quantile))


def run_search(args, dataset: str, engine: Engine, cost: str, seed: int, target_ms: float, out: Path) -> dict:
    strategy = SupernetStrategy(search_job(args, dataset, engine, cost, target_ms, seed))
    prepared = strategy.prepare()
    if (out / "report.json").is_file():
        return json.loads((out / "report.json").read_text())
    return strategy.run(prepared, open_run(strategy, prepared, out),
                        lambda stage, done, total, note: log(f"    {out.name} {stage} {done}/{total} {note}")
                        if stage == "search" else None)


def random_contenders(prep, run, folder: Path, count: int, timing: TimingConfig | None) -> list[Contender]:
    """``count`` random archs of the run's space whose measured latency is within 5% of the winner's: archs
    predicted within 15% of it are timed, eight a round, interleaved with the winner's model. Kept in
    ``folder/randoms.json``."""
    from nas.arch.space import Arch

    path = folder / "randoms.json"
    space, lm = run.space, prep.models[run.device]
    if count == 0:
        return []
    if path.is_file():
        found = json.loads(path.read_text())["archs"]
    else:
        device = prep.measure_on(run).device
        predicted = lm.predict(space, run.arch)
        rng, found, sampled = np.random.default_rng(1), [], 0
        with tempfile.TemporaryDirectory() as tmp:
            for round_ in range(50):
                batch = []
                while len(batch) < 8 and sampled < 50_000:
                    arch, sampled = space.sample(rng), sampled + 1
                    if abs(lm.predict(space, arch) / predicted - 1) <= 0.15:
                        batch.append(arch)
                paths = [run.model] + [export_onnx(build_model(space, a).eval(), build_model(space, a).input_shape,
                                                   Path(tmp) / f"r{round_}_{i}.onnx") for i, a in enumerate(batch)]
                stats = device.time_files(paths, timing)
                found += [{"arch": a.to_dict(), "measured_ratio": st.p50_ms / stats[0].p50_ms}
                          for a, st in zip(batch, stats[1:]) if abs(st.p50_ms / stats[0].p50_ms - 1) <= TOLERANCE]
                log(f"    random archs: {min(len(found), count)}/{count} within 5% after {round_ + 1} rounds")
                if len(found) >= count or not batch:
                    break
        found = found[:count]
        RunDir(folder, {"command": "bench random archs", "run": str(run.path)}).write_json("randoms.json",
                                                                                          {"archs": found})
    return [Contender(run, f"random{i + 1}", f"random {i + 1}", "random", space,
                      space.validate(Arch.from_dict(f["arch"]))) for i, f in enumerate(found)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench-compare")
    ap.add_argument("--device", default="local-cpu")
    ap.add_argument("--tables-dir", default=None)
    ap.add_argument("--per-class", type=int, default=None, help="a class-balanced subset (default: all 70,000)")
    ap.add_argument("--space", default="fbnet_v2", help="the searched space: a name or YAML")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--search-epochs", type=int, default=12)
    ap.add_argument("--final-epochs", type=int, default=8, help="the recipe's epochs (every contender)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=1.0, help="the latency weight the target controller starts from")
    ap.add_argument("--search-setting", action="append", default=[], help="SupernetSearchSettings field=value")
    ap.add_argument("--target-quantile", type=float, default=0.25)
    ap.add_argument("--target-ms", type=float, default=None, help="a fixed target instead of the quantile (e.g. an "
                    "earlier run's, to compare searches of a changed space against its contenders)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--search-seeds", type=int, default=1, help="searches (and FLOPs ablations) with seeds 0, 1, "
                    "... on one data split; the other contenders are scaled to seed 0's winner")
    ap.add_argument("--flops-seeds", type=int, default=None, help="FLOPs ablations (default: --search-seeds)")
    ap.add_argument("--randoms", type=int, default=5)
    ap.add_argument("--baseline", action="append", default=None, help="default fbnet_a and mobilenet_v2")
    ap.add_argument("--no-flops", action="store_true", help="leave out the --cost flops ablation")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--measure-only", action="store_true", help="only the final interleaved measurement pass")
    ap.add_argument("--only-search", choices=("search", "flops"), default=None,
                    help="run those searches only and stop (two processes can run the searches side by side)")
    ap.add_argument("--stop-after-contenders", action="store_true", help="stop once widths and random archs are "
                    "chosen (then --shard processes can train side by side)")
    ap.add_argument("--shard", default=None, help="K/N: train only every N-th contender from the K-th, and stop")
    args = ap.parse_args()
    baselines = args.baseline or ["fbnet_a", "mobilenet_v2"]
    engine = Engine(resolve_accelerator("cpu", "32", args.threads))
    phases = {}
    begin = time.perf_counter()
    dataset = setup_data(args)
    phases["set-up"] = time.perf_counter() - begin
    searches = search_folders(args)
    if not args.measure_only:
        t = time.perf_counter()
        target = args.target_ms or relative_target(args, dataset, engine)
        how = "as given" if args.target_ms else (f"the {args.target_quantile:g} quantile of random archs' predicted "
                                                 f"latency on {args.device}")
        log(f"== searches: DMasking on {dataset}, target {target:.4f} ms ({how}), {args.search_epochs} epochs, "
            f"{args.threads} threads")
        for folder, (cost, seed) in searches.items():
            if args.only_search not in (None, folder.split("-")[0]):
                continue
            report = run_search(args, dataset, engine, cost, seed, target, args.out / folder)
            d, ops = report["dmasking"], report["dmasking"]["decidedness"]["ops"]
            log(f"  {folder}: predicted {report['predicted_ms']:.4f} ms, measured {report['measured_ms']:.4f} ms, "
                f"test accuracy {report['accuracy']:.4f}; ops: mean argmax p {ops['mean_argmax_probability']:.2f}, "
                f"entropy {ops['mean_entropy_nats']:.2f} of {ops['uniform_entropy_nats']:.2f} nats; "
                f"{d['search_seconds']:.0f} s")
        phases["searches"] = time.perf_counter() - t
        if args.only_search:
            return
    prep = prepare_compare(CompareJob([str(args.out / f) for f in searches], [], args.seeds, args.tables_dir,
                                      engine))
    t = time.perf_counter()
    winner = prep.runs[0]
    labels = {"latency": "DMasking", "flops": "DMasking --cost flops"}
    per_cost = Counter(cost for cost, _ in searches.values())
    searched = [replace(searched_contender(run, labels[cost] + (f" (search seed {seed})" if seed else "")),
                        group=f"{labels[cost]} ({per_cost[cost]} searches)" if per_cost[cost] > 1 else None)
                for run, (cost, seed) in zip(prep.runs, searches.values())]
    found = searched[:1]

    def width_progress(stage, done, total, note):
        if note:
            log(f"    width: {note}")

    found += [baseline_contender(prep, winner, b, args.out / "contenders" / b, width_progress) for b in baselines]
    found += random_contenders(prep, winner, args.out / "contenders", args.randoms, None)
    found += searched[1:]
    phases["contenders"] = time.perf_counter() - t
    if args.stop_after_contenders:
        return
    if args.shard:
        k, n = map(int, args.shard.split("/"))
        found = found[k::n]

    def folder_of(c: Contender) -> Path:
        return args.out / "contenders" / c.run.path.name / c.slug

    if args.measure_only:
        missing = [f"{c.label} seed {s}" for c in found for s in range(args.seeds)
                   if not (c.kind == "searched" and s == 0) and trained_report(folder_of(c) / f"seed{s}") is None]
        if missing:
            raise SystemExit(f"--measure-only: not trained yet: {', '.join(missing)}")
    t = time.perf_counter()
    rows = train_all(prep, found, folder_of, lambda stage, done, total, note: log(f"    {stage} {done}/{total} {note}")
                     if "epoch" not in note else None)
    phases["trainings"] = time.perf_counter() - t
    if args.shard:
        log(f"shard {args.shard}: {len(rows)} trainings done in {phases['trainings'] / 60:.1f} min")
        return
    run = RunDir(args.out, {"command": "bench compare"})  # the one writer of the results (not of the shards')
    t = time.perf_counter()
    measured = measure_all(prep, rows)
    phases["measurement"] = time.perf_counter() - t
    summary = write_results(prep, run, measured, args.seeds)
    log(f"== results ({'mean ± std over ' + str(args.seeds) + ' seeds' if args.seeds > 1 else '1 seed'}; latency "
        f"from one interleaved pass over {len(measured)} models on {args.device})")
    first = summary["results"][0]
    for r in summary["results"]:
        std = f" ± {r['accuracy_std']:.4f}" if r["accuracy_std"] is not None else ""
        ms_std = f" ± {r['measured_ms_std']:.4f}" if r["measured_ms_std"] is not None else ""
        log(f"  {r['label']:24s} accuracy {r['accuracy']:.4f}{std}  measured {r['measured_ms']:.4f}{ms_std} ms  "
            f"({r['measured_ms'] / first['measured_ms']:.2f}x the winner's latency, "
            f"{100 * (r['accuracy'] - first['accuracy']):+.2f} pt)")
    randoms = [r for r in summary["results"] if r["kind"] == "random"]
    if randoms:
        best = max(randoms, key=lambda r: r["accuracy"])
        log(f"  random archs: mean of means {np.mean([r['accuracy'] for r in randoms]):.4f}, best {best['label']} "
            f"{best['accuracy']:.4f}")
    for group in dict.fromkeys(r["group"] for r in summary["results"] if r["group"]):  # several search seeds
        accuracy = [m["accuracy"] for m in summary["models"] if m["group"] == group]
        means = [r["accuracy"] for r in summary["results"] if r["group"] == group]
        ms = [r["measured_ms"] / first["measured_ms"] for r in summary["results"] if r["group"] == group]
        log(f"  {group} x {args.seeds} seeds: accuracy {np.mean(accuracy):.4f} ± {np.std(accuracy, ddof=1):.4f} "
            f"(each search's mean {min(means):.4f}-{max(means):.4f}) at {min(ms):.2f}-{max(ms):.2f}x the winner's "
            f"latency")
    for w in summary["warnings"]:
        log(f"  warning: {w}")
    log(f"  plot: {summary['plot']}")
    log("  phases: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in phases.items()) + " (the measurement "
        "pass's figures count only from a quiet machine: rerun it alone with --measure-only)")


if __name__ == "__main__":
    main()
