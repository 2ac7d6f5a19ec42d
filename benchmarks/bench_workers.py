"""Claims of many workers on one Optuna study: 2 workers finish a search about 1.8x and 4 workers about 3x faster
than 1, at the same quality, and killed workers lose or repeat no evaluation.

On the table space (benchmarks/data/digits_joint.csv), each lookup sleeps the row's measured training time
(``train_seconds``) times ``--scale``, as a stand-in for training. Prints:
- wall time and speed-up of a NARS search with 1, 2 and 4 local workers (``--workers-list``), and the search
  quality (best val_accuracy under the median latency) over ``--seeds`` seeds, against 1 worker's;
- a fault run: ``--kills`` SIGKILLs of random `hwnas worker` processes during one search (each replaced by a new
  one), then the budget, lost and duplicated evaluations.

    python benchmarks/bench_workers.py                       # budget 100, 5 seeds, scale 0.1 (minutes)
    python benchmarks/bench_workers.py --budget 20 --seeds 1 --scale 0.02 --kills 1   # smoke test
- ``--real``: real trainings instead: NARS on the fbnet space with digits (``--real-budget`` evaluations of at most
  ``--real-epochs`` epochs each, one CPU thread per worker) with 1 and 2 local workers; wall time, speed-up, and
  the storage's overhead per trial (a trial's time in the study less its evaluation's own time).
Use ``--storage postgresql://USER@HOST/DB`` to run on PostgreSQL instead of SQLite files.

    python benchmarks/bench_workers.py --real --storage postgresql://postgres@127.0.0.1:54331/bench
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import harness  # first: the repository on the import path
import numpy as np

ROOT = harness.ROOT
TABLE = harness.JOINT_TABLE


def settings_for(storage: str, study: str, budget: int, seed: int, scale: float, workers: int, bound: str):
    from nas.search.predict.search_setup import PredictorSearchSettings

    return PredictorSearchSettings(strategy="nars", space=f"table:{TABLE}", objective="val_accuracy",
                                   latency_columns=["latency_ms"], metric_columns=["test_accuracy", "train_seconds"],
                                   budget=budget, seed=seed, targets=[bound], storage=storage, study=study,
                                   workers=workers, sleep_column="train_seconds", sleep_scale=scale)


def run_search(settings, out: Path) -> tuple[float, float]:
    """Wall seconds and the best val_accuracy under the bound."""
    from nas.search.predict.runner import PredictorStrategy
    from nas.search.strategy import open_run

    strategy = PredictorStrategy(settings)
    prepared = strategy.prepare()
    start = time.perf_counter()
    report = strategy.run(prepared, open_run(strategy, prepared, out))
    winner = report[report["method"]]["winners"][0]
    return time.perf_counter() - start, float(winner.get("val_accuracy", float("nan")))


def storage_url(base: str | None, tmp: Path, tag: str) -> str:
    return base or f"sqlite:///{tmp / f'{tag}.db'}"


def speedup(args, bound: str) -> None:
    results: dict[int, list[tuple[float, float]]] = {n: [] for n in args.workers_list}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for n in args.workers_list:
                tag = f"s{seed}w{n}-{uuid.uuid4().hex[:6]}"
                s = settings_for(storage_url(args.storage, Path(tmp), tag), tag, args.budget, seed, args.scale, n,
                                 bound)
                wall, best = run_search(s, Path(tmp) / tag)
                results[n].append((wall, best))
                print(f"[workers] seed {seed}, {n} worker(s): {wall:.1f} s, best {best:.4f}", flush=True)
    base_wall = np.mean([w for w, _ in results[args.workers_list[0]]])
    base_best = np.mean([b for _, b in results[args.workers_list[0]]])
    print(f"[workers] budget {args.budget}, scale {args.scale}, bound {bound} ms, {args.seeds} seed(s):")
    for n, rows in results.items():
        wall, best = np.mean([w for w, _ in rows]), np.mean([b for _, b in rows])
        print(f"[workers]   {n} worker(s): wall {wall:.1f} s, speed-up {base_wall / wall:.2f}x, "
              f"mean best {best:.4f} ({'no worse than' if best >= base_best - 1e-12 else 'WORSE than'} "
              f"{args.workers_list[0]} worker's {base_best:.4f})")


def faults(args, bound: str) -> None:
    from nas.search.predict.optuna_search import OptunaConfig, open_job
    from nas.search.blackbox.study import evaluated_trials, study_status
    from nas.search.predict.search_setup import build_constraints, build_problem

    env = harness.child_env()
    with tempfile.TemporaryDirectory() as tmp:
        tag = f"faults-{uuid.uuid4().hex[:6]}"
        url = storage_url(args.storage, Path(tmp), tag)
        s = settings_for(url, tag, args.budget, 0, args.scale, 1, bound)
        problem = build_problem(s)
        constraints, _ = build_constraints(s, problem)
        study = open_job(OptunaConfig(budget=s.budget, storage=url, study=tag, proposer=True), problem, constraints,
                         s).study

        def worker():
            return subprocess.Popen([sys.executable, "-m", "cli.main", "worker", "--storage", url, "--study", tag],
                                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        workers = [worker() for _ in range(args.fault_workers)]
        proposer = subprocess.Popen([sys.executable, "-c", "import json,sys; from bench_workers import "
                                     "run_search; from nas.search.predict.search_setup import "
                                     "PredictorSearchSettings as S; print(run_search(S(**json.loads(sys.argv[1])), "
                                     "sys.argv[2]))",
                                     json.dumps(s.__dict__), str(Path(tmp) / "run")], cwd=ROOT, env=env)
        rng, kills = random.Random(0), 0
        try:
            while kills < args.kills and proposer.poll() is None:
                time.sleep(rng.uniform(1.0, 3.0))
                victim = rng.choice(workers)
                if victim.poll() is None:
                    victim.send_signal(signal.SIGKILL)
                    victim.wait()
                    kills += 1
                    workers[workers.index(victim)] = worker()
            proposer.wait()
        finally:
            for w in workers:
                if w.poll() is None:
                    w.terminate()
                w.wait()
        keys = [t.user_attrs["key"] for t in evaluated_trials(study)]
        status = study_status(study)
        print(f"[faults] {kills} SIGKILLs among {args.fault_workers} workers: {len(keys)} evaluations of budget "
              f"{args.budget} ({'exact' if len(keys) == args.budget else 'NOT exact'}), "
              f"{len(keys) - len(set(keys))} duplicated, {max(0, args.budget - len(set(keys)))} lost, "
              f"{status['failed']} trials failed and {status['retried']} retried; proposer exit {proposer.returncode}")


def real(args) -> None:
    from nas.search.blackbox.study import evaluated_trials, load_study
    from nas.search.predict.search_setup import PredictorSearchSettings

    with tempfile.TemporaryDirectory() as tmp:
        tables = Path(tmp) / "tables"
        subprocess.run([sys.executable, "-m", "cli.main", "latency", "profile", "--space", "fbnet", "--device",
                        "bench-cpu", "--resolution", "8", "--classes", "10", "--in-channels", "1", "--calibration",
                        "0", "--tables-dir", str(tables)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       env=harness.child_env())
        walls = {}
        for n in args.workers_list[:2]:
            tag = f"real-w{n}-{uuid.uuid4().hex[:6]}"
            url = storage_url(args.storage, Path(tmp), tag)
            settings = PredictorSearchSettings(strategy="nars", space="fbnet", dataset="digits",
                                               devices=["bench-cpu"], tables_dir=str(tables), budget=args.real_budget,
                                               seed=0, max_epochs=args.real_epochs, pool=512, population=256,
                                               generations=10, storage=url, study=tag, workers=n, export="none")
            walls[n], _ = run_search(settings, Path(tmp) / tag)
            trials = evaluated_trials(load_study(url, tag))
            spans = np.array([(t.datetime_complete - t.datetime_start).total_seconds() for t in trials])
            own = np.array([float(t.user_attrs["seconds"]) for t in trials])
            print(f"[real] {n} worker(s): {len(trials)} trainings in {walls[n]:.1f} s (speed-up "
                  f"{walls[args.workers_list[0]] / walls[n]:.2f}x); a training {np.median(own):.2f} s median; "
                  f"storage overhead per trial {np.mean(spans - own) * 1000:.0f} ms mean, "
                  f"{np.median(spans - own) * 1000:.0f} ms median ({masked(url)})", flush=True)


def masked(url: str) -> str:
    from nas.search.blackbox.study import masked_url

    return masked_url(url).split("///")[0] if url.startswith("sqlite") else masked_url(url)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--scale", type=float, default=0.1, help="seconds slept per second of train_seconds")
    ap.add_argument("--workers-list", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--fault-workers", type=int, default=4)
    ap.add_argument("--storage", default=None, help="an RDB URL (default: a SQLite file per run)")
    ap.add_argument("--real", action="store_true", help="real trainings on digits instead of the table")
    ap.add_argument("--real-budget", type=int, default=24)
    ap.add_argument("--real-epochs", type=int, default=3)
    args = ap.parse_args()
    if args.real:
        real(args)
        return
    import pandas as pd

    bound = f"{float(np.median(pd.read_csv(TABLE)['latency_ms'])):.4f}"
    speedup(args, bound)
    if args.kills:
        faults(args, bound)


if __name__ == "__main__":
    main()
