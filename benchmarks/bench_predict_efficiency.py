"""Predictor-guided searches find good candidates in fewer evaluations than random search and evolution, on a table
space. Prints, per latency bound:

    searcher | mean best | regret | optimum found | within 0.1 by the budget | evals to within 0.1

for NARS (FBNetV3 MLP), ChamNet (GP-BO) and Optuna, each run as `hwnas search nars|chamnet|optuna --space
table:CSV` runs (``PredictorStrategy`` on ``PredictorSearchSettings``, a run directory per seed, seeds one after
another),
beside random search (exact expectation: draws without replacement among the rows meeting the bound, as a search
that knows the free latency draws; and among all rows, the draws over the bound spent) and regularised evolution
(Real et al. 2019; population 20, tournament 5, one decision mutated, on the rows meeting the bound; 100 seeds).

- mean best: the best objective meeting the bound after the budget, averaged over seeds; regret: the table's best
  meeting the bound minus that.
- optimum found: seeds whose best is the table's best meeting the bound (random: the exact probability).
- evals to within 0.1: the evaluations a seed needed to get within ``--within`` (objective units) of that optimum,
  the median over seeds (a seed that never got there counts as more than the budget: shown as ">budget" when half
  or more never did); random: the expected position of the first such row in a random order.

On ``nb201`` the benchmark also names the optimum's *cell function* (``nb201_cell_function``): NAS-Bench-201 trained
every row separately, so cells that compute the same thing (ops on edges whose paths are cut by a ``none``, or skip
connections moved along a path) appear as several rows whose accuracies differ by training noise alone. The table
prints how many rows compute the optimum's function and the spread of their accuracies, and per searcher the seeds
whose best candidate computes it ("function found"): the part of finding the optimum that a search can control.

Tables (``--table``): ``nb201`` (the shared NAS-Bench-201 CIFAR-10 / Xeon Gold 6226 table, shared/data/README.md),
``graph`` (NAS-Bench-Graph ogbn-arxiv, built by benchmarks/bench_predict_graph_table.py from the PyPI package's
data) or ``PATH.csv --objective COL --latency-column COL``.

Usage: .venv/bin/python benchmarks/bench_predict_efficiency.py [--table nb201] [--seeds 10] [--budget 100]
       [--quantiles 25 50] [--searchers nars chamnet optuna] [--jobs 2] [--json out.json]
Nothing here is timed; every figure is a count or an accuracy, so machine load does not change them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass
class TableSpec:
    path: Path
    objective: str
    latency_column: str
    metric_columns: tuple[str, ...] = ()


def _shared(name: str) -> Path:
    for base in (ROOT.parent / "shared" / "data", Path("/work/shared/data")):
        if (base / name).is_file():
            return base / name
    return ROOT.parent / "shared" / "data" / name


def table_spec(name: str, objective: str | None, latency_column: str | None) -> TableSpec:
    if name == "nb201":
        return TableSpec(_shared("nb201_cifar10_gold6226.csv"), "acc", "gold_6226_ms")
    if name == "graph":
        from bench_predict_graph_table import DEFAULT_OUT, build
        if not DEFAULT_OUT.is_file():
            build("arxiv", DEFAULT_OUT)
        return TableSpec(DEFAULT_OUT, "valid_acc", "latency_ms", ("test_acc", "params"))
    if not (objective and latency_column):
        raise SystemExit("a table given as a path needs --objective and --latency-column")
    return TableSpec(Path(name), objective, latency_column)


@dataclass
class SearchRun:
    values: np.ndarray  # the objective of each evaluation in order, NaN where it broke the bound
    best_row: int  # the table row (``TableSpace`` candidate) of the best evaluation meeting the bound; -1: none


def run_searcher(strategy: str, spec: TableSpec, bound: float, budget: int, seed: int, sampler: str) -> SearchRun:
    """One search through the CLI's code path."""
    from nas.search.predict.runner import PredictorStrategy
    from nas.search.predict.search_setup import PredictorSearchSettings
    from nas.search.strategy import open_run

    settings = PredictorSearchSettings(strategy=strategy, space=f"table:{spec.path}", objective=spec.objective,
                              latency_columns=[spec.latency_column], metric_columns=list(spec.metric_columns),
                              targets=[f"{bound!r}ms"], budget=budget, seed=seed, sampler=sampler, export="none")
    with tempfile.TemporaryDirectory(prefix="bench_eff_") as tmp:
        strategy_obj = PredictorStrategy(settings)
        prepared = strategy_obj.prepare()
        report = strategy_obj.run(prepared, open_run(strategy_obj, prepared, Path(tmp) / "run"))
        frame = pd.read_csv(Path(tmp) / "run" / "history.csv", dtype={"key": str})
    label = report[strategy]["constraints"][0]["label"]
    ok = frame[f"feasible[{label}]"].astype(bool).to_numpy()
    values = np.where(ok, frame[spec.objective].to_numpy(float), np.nan)
    if not np.isfinite(values).any():
        return SearchRun(values, -1)
    best_key = frame["key"].iloc[int(np.nanargmax(values))]
    return SearchRun(values, int(next(iter(prepared.problem.table.rows_of_keys({best_key})))))


def regularised_evolution(table, ok: np.ndarray, values: np.ndarray, budget: int, seed: int,
                          population: int = 20, tournament: int = 5) -> SearchRun:
    """Regularised (aging) evolution on the rows meeting the bound: random rows first, then each step mutates one
    decision of a tournament's best, snapped to the nearest row, redrawn until a new row meeting the bound."""
    rng = np.random.default_rng(seed)
    feasible = np.flatnonzero(ok)
    taken: set[int] = set()
    order: list[int] = []
    for r in rng.permutation(feasible)[:min(population, budget)]:
        taken.add(int(r))
        order.append(int(r))
    alive = list(order)
    while len(order) < min(budget, len(feasible)):
        contenders = rng.choice(len(alive), size=min(tournament, len(alive)), replace=False)
        parent = alive[max(contenders, key=lambda i: values[alive[i]])]
        child = None
        for _ in range(50):
            g = table.genomes[parent].copy()
            j = int(rng.integers(table.dims))
            d = table.decisions[j]
            if d.kind in ("cat", "ord"):
                g[j] = float(rng.choice([o for o in range(d.size) if o != int(round(g[j]))]))
            else:
                g[j] = float(np.clip(g[j] + rng.normal(0, 0.2), 0, 1))
            r = int(table.row_of(g[None, :])[0])
            if ok[r] and r not in taken:
                child = r
                break
        if child is None:
            child = int(rng.choice([r for r in feasible if r not in taken]))
        taken.add(child)
        order.append(child)
        alive.append(child)
        if len(alive) > population:
            alive.pop(0)
    order = np.asarray(order)
    return SearchRun(values[order], int(order[np.argmax(values[order])]))


def summarise(runs: list[SearchRun], optimum: float, within: float, budget: int,
              optimum_function: np.ndarray | None = None) -> dict:
    """``optimum_function``: per table row, whether it computes the optimum's function (nb201 only)."""
    best = np.asarray([np.nanmax(r.values) if np.isfinite(r.values).any() else np.nan for r in runs])
    to_within = []
    for r in runs:
        hit = np.flatnonzero(np.nan_to_num(r.values, nan=-np.inf) >= optimum - within - 1e-9)
        to_within.append(int(hit[0]) + 1 if len(hit) else np.inf)
    out = {"seeds": len(runs), "mean_best": float(np.nanmean(best)), "regret": float(optimum - np.nanmean(best)),
           "found": int((best >= optimum - 1e-9).sum()), "within": int(np.isfinite(to_within).sum()),
           "evals_to_within": float(np.median(to_within)), "best_per_seed": best.tolist(),
           "evals_to_within_per_seed": [None if not np.isfinite(v) else int(v) for v in to_within],
           "best_row_per_seed": [r.best_row for r in runs]}
    if optimum_function is not None:
        out["function_found"] = int(sum(r.best_row >= 0 and optimum_function[r.best_row] for r in runs))
    return out


def random_rows(values_ok: np.ndarray, n_infeasible: int, optimum: float, within: float, budget: int,
                optimum_function: np.ndarray | None = None) -> dict:
    """``optimum_function``: per row of ``values_ok``, whether it computes the optimum's function; then also the
    exact chance that the best of the draws is such a row."""
    from nas.search.predict.convergence import (chance_best_draw_is_marked, chance_of_any_draw,
                                                expected_best_of_draws, expected_draws_to_hit)

    total = len(values_ok) + n_infeasible
    mean_best = float(expected_best_of_draws(values_ok, budget, n_infeasible)[-1])
    n_opt = int((values_ok >= optimum - 1e-9).sum())
    n_within = int((values_ok >= optimum - within - 1e-9).sum())
    out = {"seeds": "exact", "mean_best": mean_best, "regret": optimum - mean_best,
           "found_share": chance_of_any_draw(n_opt, total, budget),
           "within_share": chance_of_any_draw(n_within, total, budget),
           "evals_to_within": expected_draws_to_hit(n_within, total)}
    if optimum_function is not None:
        out["function_found_share"] = chance_best_draw_is_marked(values_ok, optimum_function, budget, n_infeasible)
    return out


def nb201_cell_function(edges) -> tuple:
    """What a NAS-Bench-201 cell computes, as its sum of paths from the input node to the output node: each path
    the operations along it (edge order 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2, the benchmark's), skip connections
    (identities) dropped, a path through a ``none`` edge absent. Cells with equal functions differ only in the
    training run behind their rows."""
    e = list(edges)
    paths = [(e[3],), (e[0], e[4]), (e[1], e[5]), (e[0], e[2], e[5])]
    return tuple(sorted(tuple(op for op in p if op != "skip_connect") for p in paths if "none" not in p))


def _line(name: str, r: dict, budget: int, functions: bool) -> str:
    if r["seeds"] == "exact":
        found = f"{100 * r['found_share']:.1f}%"
        within = f"{100 * r['within_share']:.1f}%"
        evals = f"{r['evals_to_within']:.0f} (expected)"
        function = f"{100 * r['function_found_share']:.1f}%" if functions else ""
    else:
        found = f"{r['found']}/{r['seeds']}"
        within = f"{r['within']}/{r['seeds']}"
        evals = f"{r['evals_to_within']:.0f}" if np.isfinite(r["evals_to_within"]) else f">{budget}"
        function = f"{r['function_found']}/{r['seeds']}" if functions else ""
    return (f"| {name} | {r['mean_best']:.3f} | {r['regret']:.3f} | {found} | {within} | {evals} |"
            + (f" {function} |" if functions else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", default="nb201", help="nb201, graph, or a CSV path")
    ap.add_argument("--objective")
    ap.add_argument("--latency-column")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--quantiles", type=float, nargs="+", default=[25, 50])
    ap.add_argument("--within", type=float, default=0.1, help="objective units (accuracy points here)")
    ap.add_argument("--searchers", nargs="+", default=["nars", "chamnet", "optuna"])
    ap.add_argument("--sampler", default="nsga2", help="Optuna's sampler (nsga2 or tpe)")
    ap.add_argument("--evolution-seeds", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=1, help="searches run at once (processes, one thread each)")
    ap.add_argument("--json", type=Path, help="also write every figure and per-seed result here")
    args = ap.parse_args()
    if args.jobs < 1:
        raise SystemExit("--jobs must be at least 1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    torch.set_num_threads(1)
    from nas.search.predict.table_space import TableSpace

    spec = table_spec(args.table, args.objective, args.latency_column)
    table = TableSpace(spec.path, spec.objective, [spec.latency_column], metric_columns=list(spec.metric_columns))
    values = table.values[spec.objective]
    lat = table.values[spec.latency_column]
    out: dict = {"table": str(spec.path), "rows": table.rows, "budget": args.budget, "bounds": {}}
    print(f"table {spec.path.name}: {table.rows} rows, objective {spec.objective}, latency {spec.latency_column}, "
          f"budget {args.budget}, {args.seeds} seeds")
    bounds = {q: float(np.percentile(lat, q)) for q in args.quantiles}
    # seed by seed, so that an interrupted run has every bound and searcher
    tasks = [(q, name, seed) for seed in range(args.seeds) for q in bounds for name in args.searchers]
    runs: dict[tuple[float, str], list[SearchRun]] = {(q, n): [] for q in args.quantiles for n in args.searchers}
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_searcher, name, spec, bounds[q], args.budget, seed, args.sampler)
                   for q, name, seed in tasks]
        for (q, name, seed), future in zip(tasks, futures):
            runs[q, name].append(future.result())
            print(f"  p{q:g} {name} seed {seed}: best {np.nanmax(runs[q, name][-1].values):.3f}", flush=True)
    functions = None
    if args.table == "nb201":
        column = {d.name: j for j, d in enumerate(table.decisions)}
        edges = np.stack([table.decisions[column[f"edge{i}"]].values(table.genomes[:, column[f"edge{i}"]])
                          for i in range(6)], axis=1)
        functions = [nb201_cell_function(row) for row in edges]
    for q, bound in bounds.items():
        ok = lat <= bound + 1e-12
        optimum = float(values[ok].max())
        same = None
        if functions is not None:
            best_function = functions[int(np.flatnonzero(ok)[np.argmax(values[ok])])]
            same = np.asarray([f == best_function for f in functions]) & ok
        results: dict[str, dict] = {name: summarise(runs[q, name], optimum, args.within, args.budget, same)
                                    for name in args.searchers}
        same_ok = None if same is None else same[ok]
        results["random (rows meeting the bound)"] = random_rows(values[ok], 0, optimum, args.within, args.budget,
                                                                 same_ok)
        results["random (any row)"] = random_rows(values[ok], int((~ok).sum()), optimum, args.within, args.budget,
                                                  same_ok)
        evo = [regularised_evolution(table, ok, values, args.budget, s) for s in range(args.evolution_seeds)]
        results["regularised evolution"] = summarise(evo, optimum, args.within, args.budget, same)
        entry = out["bounds"][f"p{q:g}"] = {
            "bound_ms": bound, "feasible_rows": int(ok.sum()), "optimum": optimum,
            "rows_within": int((values[ok] >= optimum - args.within - 1e-9).sum()), "results": results}
        print(f"\n{spec.latency_column} <= {bound:.4g} ({q:g}th percentile): {ok.sum()} rows meet it, best "
              f"{spec.objective} {optimum:.3f}, {entry['rows_within']} rows within {args.within:g} of it")
        if same is not None:
            scores = values[same]
            entry["optimum_function"] = {"function": [list(p) for p in best_function], "rows": int(same.sum()),
                                         "objective": [float(scores.min()), float(np.median(scores)),
                                                       float(scores.max())]}
            print(f"the optimum's cell function {best_function}: {same.sum()} rows meeting the bound compute it, "
                  f"{spec.objective} {scores.min():.2f} to {scores.max():.2f} (median {np.median(scores):.2f}; "
                  f"the same cell trained in separate runs)")
        print(f"| searcher | mean best | regret | optimum found | within {args.within:g} by {args.budget} | "
              f"evals to within {args.within:g} (median) |" + (" optimum's function found |" if same is not None
                                                                else ""))
        print("|---|---|---|---|---|---|" + ("---|" if same is not None else ""))
        for name, r in results.items():
            print(_line(name, r, args.budget, same is not None))
        print(flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=float))


if __name__ == "__main__":
    main()
