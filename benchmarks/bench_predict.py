"""Claims of predictor-guided search: the evolutionary search scores candidates fast, NARS and GP-BO beat random
search at the same budget, and pretraining on free proxies helps the predictor. Prints:

1. Evolutionary-search throughput: candidates scored per CPU-minute with a fitted FBNetV3 MLP predictor on the
   fbnet_v2 joint arch x recipe space (34 arch + 9 recipe decisions), with the vectorised LatencyModel of a real
   (short) profile of that space on this machine. Target: >= 100,000 per CPU-minute.
2. Search quality on a table space built from real measurements (benchmarks/data/digits_joint.csv, see
   benchmarks/make_predict_table.py): with a budget of 100 evaluations, the best validation accuracy under
   a latency constraint found by NARS (MLP), GP-BO (ChamNet GP + EI), Optuna NSGA-II / TPE and random search,
   averaged over seeds (``--optuna-seeds N`` runs Optuna on the first N seeds only). Random search
   is shown twice: drawing any row (a draw over the bound is spent and useless) and drawing only rows that meet
   the bound (latency is free). Target: NARS and GP-BO beat random.
3. Proxy pretraining: held-out Kendall tau of the MLP with 20/30/50 labels, without pretraining and with
   pretraining on free proxies of every row: FBNetV3's (MACs, params, latency), and those plus the recipe's free
   proxy train_steps (epochs x batches per epoch), averaged over seeds.

Usage: .venv/bin/python benchmarks/bench_predict.py [--seeds 10] [--budget 100] [--quantiles 25 50]
       [--optuna-seeds 3] [--only throughput|quality|pretraining] [--quick]
Timings are CPU-time based but still noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import harness  # first: the repository on the import path
import numpy as np
import torch

TABLE = harness.JOINT_TABLE


def throughput(quick: bool) -> None:
    from nas.arch.space import load_space
    from nas.latency.device import Device
    from nas.latency.timing import TimingConfig
    from nas.search.blackbox.evolution import evolve
    from nas.search.blackbox.problem import Constraint
    from nas.search.predict.joint_space import JointSpace
    from nas.search.predict.model_costs import ModelSpaceCosts, load_latency_models
    from nas.search.predict.predictors import ArchRecipePredictor

    space = load_space("fbnet_v2", resolution=32, width_multiplier=0.25, classes=10, in_channels=1)
    joint = JointSpace(space)
    tables = Path(os.environ.get("BENCH_TABLES_DIR") or tempfile.mkdtemp(prefix="bench_predict_tables_"))
    t0 = time.perf_counter()
    counts, _ = harness.profile_table(Device(device_id="bench-fbnet-v2"), space, tables_dir=tables,
                                      timing=TimingConfig(warmup=2, min_rounds=2, max_rounds=3, max_seconds=0.3))
    print(f"[throughput] profiled fbnet_v2 @32px x0.25 ({counts['total']} keys) in "
          f"{time.perf_counter() - t0:.0f} s into {tables}")
    costs = ModelSpaceCosts(joint, load_latency_models(["bench-fbnet-v2"], tables))
    rng = np.random.default_rng(0)
    pool = joint.sobol(4096, 0)
    x_pool = joint.encode(pool)
    predictor = ArchRecipePredictor(seed=0).pretrain(x_pool, costs.proxies(pool))
    labelled = pool[:100]
    # labels: a smooth function of the proxies and the recipe (only the predictor's speed is measured here)
    y = np.log(costs.macs(labelled)) * 0.1 + joint.encode(labelled)[:, -20:].sum(1) * 0.01
    predictor.fit(joint.encode(labelled), y)
    lat = costs.latency_ms(pool)[:, 0]
    constraints = [Constraint(((None, float(np.percentile(lat, q))),)) for q in (25, 50, 75)]
    torch.set_num_threads(1)

    def score(g):
        return predictor.predict(joint.encode(g))

    evolve(joint, score, costs.latency_ms, constraints, ["bench-fbnet-v2"], rng=rng, population=2048,
           generations=3)  # warm-up: fills the latency cost table for shapes seen first here
    res = evolve(joint, score, costs.latency_ms, constraints, ["bench-fbnet-v2"], rng=rng, population=4096,
                 generations=10 if quick else 40)
    print(f"[throughput] evolution: {res.scored:,} candidates in {res.cpu_seconds:.2f} CPU-s "
          f"({res.seconds:.2f} wall-s): {res.candidates_per_cpu_minute:,.0f} candidates per CPU-minute "
          f"(target >= 100,000); {len(constraints)} constraints at once, best predicted per constraint "
          f"{[round(float(s[0]), 4) for s in res.scores]}")


FBNETV3_PROXIES = ["macs", "params"]  # + the latency column: FBNetV3's free proxies
ALL_PROXIES = ["macs", "params", "train_steps"]  # + the recipe's free proxy (optimiser steps)


def _problem(proxies=ALL_PROXIES):
    from nas.search.blackbox.problem import TableProblem
    from nas.search.predict.table_space import TableEvaluator, TableSpace

    metrics = [c for c in ["test_accuracy", "predicted_latency_ms", "train_seconds", *ALL_PROXIES] if c not in proxies]
    table = TableSpace(TABLE, "val_accuracy", ["latency_ms"], proxy_columns=list(proxies), metric_columns=metrics)
    return TableProblem(table, TableEvaluator(table))


def _random_search(problem, constraint, budget, seed, aware):
    rng = np.random.default_rng(seed)
    lat = problem.table.latency_ms(np.arange(problem.table.rows))
    ok = constraint.feasible(lat, problem.devices)
    rows = np.flatnonzero(ok) if aware else np.arange(problem.table.rows)
    picks = rng.choice(rows, size=min(budget, len(rows)), replace=False)
    acc = problem.table.values["val_accuracy"][picks]
    good = ok[picks]
    return float(acc[good].max()) if good.any() else float("nan")


def search_quality(seeds: int, budget: int, quantiles: list[int], optuna_seeds: int) -> None:
    from nas.search.blackbox.history import History
    from nas.search.predict.optuna_search import OptunaConfig, run_optuna
    from nas.search.blackbox.problem import Constraint
    from nas.search.blackbox.study import evaluated_trials, load_study
    from nas.search.predict.nars import NarsConfig, run_nars

    problem = _problem()
    t = problem.table
    lat = t.latency_ms(np.arange(t.rows))[:, 0]
    print(f"[quality] table {TABLE.name}: {t.rows} candidates ({len(t.decisions)} decisions), budget {budget}, "
          f"{seeds} seeds")
    for q in quantiles:
        bound = float(np.percentile(lat, q))
        c = Constraint(((None, bound),))
        ok = c.feasible(t.latency_ms(np.arange(t.rows)), problem.devices)
        oracle = float(t.values["val_accuracy"][ok].max())
        results: dict[str, list[float]] = {k: [] for k in ("NARS (MLP)", "GP-BO (GP+EI)", "Optuna NSGA-II",
                                                           "Optuna TPE", "random (any row)",
                                                           "random (rows meeting the bound)")}
        seconds: dict[str, float] = {k: 0.0 for k in results}
        for seed in range(seeds):
            for name, kind in (("NARS (MLP)", "mlp"), ("GP-BO (GP+EI)", "gp")):
                start = time.perf_counter()
                p = _problem()
                h = History(p, budget, [c])
                run_nars(p, [c], h, NarsConfig(budget=budget, seed=seed, predictor=kind, cv_folds=0))
                results[name].append(h.best_score_under(c))
                seconds[name] += time.perf_counter() - start
            for name, sampler in (("Optuna NSGA-II", "nsga2"), ("Optuna TPE", "tpe")):
                if seed >= optuna_seeds:
                    continue
                start = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp:
                    cfg = OptunaConfig(budget=budget, seed=seed, sampler=sampler,
                                       storage=f"sqlite:///{tmp}/s.db", study="bench")
                    p = _problem()
                    run_optuna(p, [c], cfg)
                    vals = [tr.user_attrs["metrics"]["val_accuracy"] for tr in
                            evaluated_trials(load_study(cfg.storage, cfg.study))]
                results[name].append(max(vals))
                seconds[name] += time.perf_counter() - start
            results["random (any row)"].append(_random_search(problem, c, budget, seed, aware=False))
            results["random (rows meeting the bound)"].append(_random_search(problem, c, budget, seed, aware=True))
            print(f"[quality]   seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in results.items()
                                                         if len(v) == seed + 1), flush=True)
        print(f"[quality] latency_ms <= {bound:.4f} ({q}th percentile; {ok.sum()} of {t.rows} rows meet it; "
              f"best in the table {oracle:.4f}):")
        for name, vals in results.items():
            if not vals:
                continue
            v = np.asarray(vals, float)
            beats = ""
            if name in ("NARS (MLP)", "GP-BO (GP+EI)"):
                for base in ("random (any row)", "random (rows meeting the bound)"):
                    r = np.asarray(results[base], float)[:len(v)]
                    verdict = "BEATS" if np.nanmean(v) > np.nanmean(r) else "does NOT beat"
                    beats += (f"; {verdict} {base} (better/tied/worse in {(v > r).sum()}/{(v == r).sum()}/"
                              f"{(v < r).sum()} seeds)")
            found = int((v >= oracle - 1e-9).sum())
            print(f"    {name:34s} mean best val_accuracy {np.nanmean(v):.4f} +- {np.nanstd(v):.4f}  "
                  f"(found the table's best in {found}/{len(v)} seeds; mean regret {oracle - np.nanmean(v):.4f}; "
                  f"{seconds[name] / max(len(v), 1):.1f} s per run; {len(v)} seeds{beats})")


def pretraining(seeds: int, labels: list[int]) -> None:
    from nas.search.predict.predictors import ArchRecipePredictor, kendall_tau

    variants = {"FBNetV3 proxies": _problem(FBNETV3_PROXIES), "+ train_steps": _problem(ALL_PROXIES)}
    problem = variants["FBNetV3 proxies"]
    t = problem.table
    all_rows = np.arange(t.rows)
    x = t.encode(t.genomes)
    y = t.values["val_accuracy"]
    proxies = {name: p.proxies(t.genomes) for name, p in variants.items()}
    print(f"[pretraining] held-out Kendall tau of the MLP on {TABLE.name} ({t.rows} rows), trained on N random "
          f"labelled rows, tested on all the others; pretrained on free proxies of every row: FBNetV3 proxies = "
          f"{', '.join(variants['FBNetV3 proxies'].proxy_names)}; + train_steps = "
          f"{', '.join(variants['+ train_steps'].proxy_names)}. Mean +- std over {seeds} seeds")
    for n in labels:
        taus: dict[str, list[float]] = {"none": [], **{k: [] for k in variants}}
        for seed in range(seeds):
            rng = np.random.default_rng(1000 + seed)
            train = rng.choice(all_rows, size=n, replace=False)
            test = np.setdiff1d(all_rows, train)
            plain = ArchRecipePredictor(seed=seed).fit(x[train], y[train])
            taus["none"].append(kendall_tau(plain.predict(x[test]), y[test]))
            for name in variants:
                pre = ArchRecipePredictor(seed=seed).pretrain(x, proxies[name]).fit(x[train], y[train])
                taus[name].append(kendall_tau(pre.predict(x[test]), y[test]))
        base = np.asarray(taus["none"])
        shown = [f"no pretraining {base.mean():.3f} +- {base.std():.3f}"]
        for name in variants:
            a = np.asarray(taus[name])
            shown.append(f"{name} {a.mean():.3f} +- {a.std():.3f} (better in {(a > base).sum()}/{seeds})")
        print(f"    {n:3d} labels: " + "; ".join(shown))


def main() -> None:
    ap = argparse.ArgumentParser(description="predictor-guided search benchmark")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--quick", action="store_true", help="fewer generations, 3 seeds")
    ap.add_argument("--quantiles", type=int, nargs="+", default=[25],
                    help="latency bounds of the quality comparison, as percentiles of the table's latency")
    ap.add_argument("--optuna-seeds", type=int, default=None,
                    help="seeds that also run the two Optuna samplers (default: all; ~10 s of CPU per study)")
    ap.add_argument("--only", choices=["throughput", "quality", "pretraining"], default=None)
    args = ap.parse_args()
    seeds = 3 if args.quick else args.seeds
    if args.only in (None, "throughput"):
        throughput(args.quick)
    if args.only in (None, "pretraining"):
        pretraining(seeds, [20, 30, 50])
    if args.only in (None, "quality"):
        search_quality(seeds, args.budget, args.quantiles,
                       seeds if args.optuna_seeds is None else min(args.optuna_seeds, seeds))


if __name__ == "__main__":
    main()
