"""Multi-objective Optuna search (NSGA-II or TPE) over a joint space or a table, with a latency constraint.

Objectives: the search objective (e.g. validation accuracy) and the free predicted latency on each device.
Constraint: the latency bound (the loosest of the given constraints; the tighter ones are read off the front)
through the samplers' ``constraints_func``. A proposal that breaks it is told to the study as infeasible
without the expensive evaluation, so it costs no budget; the budget counts evaluations only. On a table, where
every row's latency is known, a proposal is repaired to the nearest row that meets the bound and has not been
evaluated, so that every proposal is a new evaluation (samplers re-propose known points often).

Studies live in Optuna storage: SQLite in the run directory by default, or any Optuna RDB URL. Every finished
evaluation is a COMPLETE trial in storage, so a killed search loses nothing: rerunning it first fails the trials
the dead processes left RUNNING and enqueues their parameters again, then continues to the budget.
``workers`` processes (this one and ``workers - 1`` spawned ones) share one study; a file lock in the run
directory makes the budget exact across them. The study opens in optuna-dashboard:
``optuna-dashboard sqlite:///results/RUN/study.db``.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import re
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import optuna
from optuna.trial import TrialState

from nas.errors import SearchError
from nas.predict.decisions import Decision
from nas.predict.problem import Constraint, SearchProblem

optuna.logging.set_verbosity(optuna.logging.WARNING)

ProblemFactory = Callable[[], SearchProblem]
# Optuna 5 takes constraints from the trial (set_constraint); Optuna 4 from the sampler's constraints_func
_TRIAL_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")


@dataclass
class OptunaConfig:
    budget: int
    seed: int = 0
    sampler: str = "nsga2"  # "nsga2" | "tpe"
    storage: str = ""  # an Optuna RDB URL
    study: str = "hwnas"
    lock_path: str = ""  # file lock that makes the budget exact across local workers
    workers: int = 1
    max_proposals_factor: int = 50  # give up after budget * this many proposals in one worker


def default_storage_url(run_path: str | Path) -> str:
    return f"sqlite:///{Path(run_path).resolve() / 'study.db'}"


def masked_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (``postgresql://user:***@host/db``), for showing or storing."""
    return re.sub(r"(//[^/:@]*:)[^/?#]*@", r"\1***@", url)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url``; SearchError with the reason when it cannot be opened."""
    try:
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as e:  # sqlalchemy raises many kinds (bad dialect, unreachable host, unwritable file)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SearchError(f"cannot open the Optuna storage {masked_url(url)!r}: "
                          f"{reason.replace(url, masked_url(url))}") from None


def _constraints_func(trial: optuna.trial.FrozenTrial) -> list[float]:
    return [float(trial.user_attrs.get("violation_ms", 0.0))]


def make_sampler(kind: str, seed: int, budget: int) -> optuna.samplers.BaseSampler:
    constraints_func = None if _TRIAL_CONSTRAINTS else _constraints_func
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(8, min(50, budget // 5)), seed=seed,
                                             constraints_func=constraints_func)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constraints_func=constraints_func,
                                          n_startup_trials=max(5, budget // 10))
    raise SearchError(f"unknown Optuna sampler {kind!r} (nsga2 or tpe)")


def suggest(trial: optuna.Trial, d: Decision):
    if d.kind in ("cat", "ord"):
        return trial.suggest_categorical(d.name, list(d.options))
    if d.kind == "int":
        return trial.suggest_int(d.name, int(d.low), int(d.high))
    return trial.suggest_float(d.name, d.low, d.high, log=d.log)


def directions(problem: SearchProblem) -> list[str]:
    return ["maximize" if problem.maximize else "minimize"] + ["minimize"] * len(problem.devices)


def open_study(config: OptunaConfig, problem: SearchProblem, seed_offset: int = 0) -> optuna.Study:
    storage = open_storage(config.storage)
    try:
        study = optuna.create_study(storage=storage, study_name=config.study, load_if_exists=True,
                                    directions=directions(problem),
                                    sampler=make_sampler(config.sampler, config.seed * 100 + seed_offset,
                                                         config.budget))
    except ValueError as e:  # an existing study with other directions
        raise SearchError(f"study {config.study!r} in {masked_url(config.storage)}: {e}") from None
    if [d.name.lower() for d in study.directions] != directions(problem):
        raise SearchError(f"study {config.study!r} in {masked_url(config.storage)} has other objectives; "
                          f"use another --study")
    return study


@contextmanager
def _budget_lock(path: str):
    if not path:
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def claiming_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Evaluations finished or under way (trials that claimed a unit of the budget)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
            if t.user_attrs.get("claimed")]


def claimed(study: optuna.Study) -> int:
    return len(claiming_trials(study))


def evaluated_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
              if t.user_attrs.get("claimed")]
    return sorted(trials, key=lambda t: (t.datetime_complete, t.number))


def recover_stale_trials(study: optuna.Study) -> int:
    """Fail RUNNING trials whose process (on this host) is gone, and enqueue their parameters again."""
    host = socket.gethostname()
    recovered = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, t_host = t.user_attrs.get("pid"), t.user_attrs.get("host")
        if t_host is not None and t_host != host:
            continue  # another machine's worker: leave it to that machine
        if pid is not None and _alive(int(pid)):
            continue
        study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        recovered += 1
    return recovered


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has just started: anything it "owns" is from a previous life
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_worker(problem: SearchProblem, constraints: list[Constraint], config: OptunaConfig, worker: int = 0,
               on_eval: Callable[[int], None] | None = None, parent_pid: int | None = None) -> dict:
    """Ask/tell loop of one process until the study has ``budget`` evaluations, or until the process
    ``parent_pid`` (the search that spawned this worker) is gone."""
    study = open_study(config, problem, worker)
    space = problem.space
    proposals, infeasible, gave_up = 0, 0, False
    worst = 0.0 if problem.maximize else 1e9  # told for infeasible proposals (their values are not ranked)
    over_bound: set[int] = set()
    if problem.finite and constraints:  # a table's latencies are known: its rows over the bound are never proposed
        lat_all = problem.latency_ms(space.genomes)
        meets = np.any([c.feasible(lat_all, problem.devices) for c in constraints], axis=0)  # the loosest
        over_bound = set(np.flatnonzero(~meets).tolist())
    while True:
        if parent_pid is not None and os.getppid() != parent_pid:
            break  # the search that spawned this worker was killed: stop with it (a rerun resumes the study)
        with _budget_lock(config.lock_path):
            claims = claiming_trials(study)
            if len(claims) >= config.budget:
                break
        if proposals >= config.budget * config.max_proposals_factor:
            gave_up = True  # the sampler keeps proposing infeasible or evaluated candidates
            break
        trial = study.ask()
        proposals += 1
        values = {d.name: suggest(trial, d) for d in space.decisions}
        genome = space.genome(values)
        if problem.finite:  # a table: the nearest row that meets the bound and is not evaluated yet (a repair:
            # every proposal becomes a new evaluation instead of a repeat or an infeasible row)
            taken = space.rows_of_keys(t.user_attrs.get("key") for t in claims) | over_bound
            row = space.untaken_row(genome, taken)
            if row is None:
                study.tell(trial, state=TrialState.FAIL)
                break  # every row of the table that meets the bound is evaluated or under way
            genome = space.genomes[row]
        lat = problem.latency_ms(genome[None, :])
        violation = float(min(c.violation(lat, problem.devices)[0] for c in constraints)) if constraints else 0.0
        violation_ms = max(violation, 0.0) if np.isfinite(violation) else 0.0
        trial.set_user_attr("violation_ms", violation_ms)
        if _TRIAL_CONSTRAINTS:
            trial.set_constraint("latency_violation_ms", violation_ms)
        trial.set_user_attr("latency_ms", [float(v) for v in lat[0]])
        key = space.keys(genome[None, :])[0]
        trial.set_user_attr("key", key)
        if violation > 0:
            infeasible += 1
            trial.set_user_attr("claimed", False)
            study.tell(trial, [worst] + [float(v) for v in lat[0]])
            continue
        done = next((t for t in claims if t.state == TrialState.COMPLETE and t.user_attrs.get("key") == key), None)
        if done is not None:  # an architecture evaluated before, proposed again: its values, no budget spent
            trial.set_user_attr("claimed", False)
            trial.set_user_attr("cached_from", done.number)
            study.tell(trial, list(done.values))
            continue
        with _budget_lock(config.lock_path):
            running = claiming_trials(study)
            if len(running) >= config.budget:
                study.tell(trial, state=TrialState.FAIL)
                break
            if any(t.user_attrs.get("key") == key for t in running):
                study.tell(trial, state=TrialState.FAIL)  # another worker took this row a moment ago
                continue
            trial.set_user_attr("claimed", True)
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("host", socket.gethostname())
        start = time.perf_counter()
        metrics = problem.evaluate(genome)
        trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items()})
        trial.set_user_attr("seconds", time.perf_counter() - start)
        trial.set_user_attr("genome", [float(v) for v in genome])
        value = float(metrics[problem.objective])
        worst = min(worst, value) if problem.maximize else max(worst, value)
        study.tell(trial, [value] + [float(v) for v in lat[0]])
        if on_eval is not None:
            on_eval(trial.number)
    return {"worker": worker, "proposals": proposals, "infeasible": infeasible, "gave_up": gave_up}


def _worker_main(factory: ProblemFactory, constraints, config: OptunaConfig, worker: int, queue,
                 parent_pid: int) -> None:
    try:
        if os.getppid() != parent_pid:
            return  # the parent died while this worker started
        queue.put(("done", run_worker(factory(), constraints, config, worker, parent_pid=parent_pid)))
    except Exception as e:  # reported by the parent, which raises it as one line
        queue.put(("error", f"worker {worker}: {type(e).__name__}: {e}"))


def run_optuna(problem: SearchProblem, factory: ProblemFactory | None, constraints: list[Constraint],
               config: OptunaConfig, on_progress: Callable[[int], None] | None = None) -> dict:
    """Run the study to the budget with ``config.workers`` processes; returns counts and worker stats."""
    study = open_study(config, problem)
    recovered = recover_stale_trials(study)
    stats: list[dict] = []
    procs, queue = [], None
    if config.workers > 1:
        if factory is None:
            raise SearchError("--workers > 1 needs a problem that worker processes can rebuild")
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        for w in range(1, config.workers):
            p = ctx.Process(target=_worker_main, args=(factory, constraints, config, w, queue, os.getpid()),
                            daemon=True)
            p.start()
            procs.append(p)
    try:
        stats.append(run_worker(problem, constraints, config, 0,
                                on_eval=(lambda _n: on_progress(claimed(study))) if on_progress else None))
        while any(p.is_alive() for p in procs):
            time.sleep(1.0)
            if on_progress:
                on_progress(claimed(study))
        errors = []
        while queue is not None and not queue.empty():
            kind, info = queue.get()
            (stats.append(info) if kind == "done" else errors.append(info))
        if errors:
            raise SearchError(errors[0])
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    return {"recovered_trials": recovered, "workers": stats,
            "trials": len(study.get_trials(deepcopy=False)), "evaluations": len(evaluated_trials(study))}
