"""Running a predictor-guided search on its Optuna study: opening or joining the study, local worker processes,
and the multi-objective Optuna search (NSGA-II or TPE) over a joint space or a table.

Objectives: the search objective (e.g. validation accuracy) and the free predicted latency on each device.
Constraint: the latency bound (the loosest of the given constraints; the tighter ones are read off the front)
through the trial's constraint. A proposal that breaks it is told to the study as infeasible without the
expensive evaluation, so it costs no budget. On a table, where every row's latency is known, a proposal is
repaired to the nearest row that meets the bound and is not taken: that row is enqueued as its own trial, so
that every stored trial's params are the decisions of the row it evaluated.

NARS and ChamNet (``nas.search.predict.nars``) propose; their candidates are enqueued trials (``proposer`` studies).
Either way, ``workers`` processes on this machine (this one and ``workers - 1`` spawned ones) and any
``hwnas worker`` started elsewhere on the same storage evaluate the trials (``nas.search.blackbox.worker``); a worker
rebuilds the problem from the settings stored in the study and refuses a study whose fingerprint (space, data,
code version) differs from its own. A rerun resumes from the storage.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Callable

import optuna

from nas.errors import HwnasError, SearchError
from nas.search.blackbox.problem import Constraint, SearchProblem
from nas.search.blackbox.study import (
    FINGERPRINT_ATTR,
    PROPOSER_DONE_ATTR,
    SETTINGS_ATTR,
    check_fingerprint,
    evaluated_trials,
    fingerprint,
    load_study,
    masked_url,
    open_storage,
    open_study,
    storage_errors,
)
from nas.search.blackbox.worker import StudyJob, run_worker


@dataclass
class OptunaConfig:
    budget: int
    seed: int = 0
    sampler: str = "nsga2"  # "nsga2" | "tpe"; a proposer's study ignores it
    storage: str = ""  # an Optuna RDB URL
    study: str = "hwnas"
    workers: int = 1
    proposer: bool = False  # NARS / ChamNet enqueue the candidates; the sampler proposes nothing


def make_sampler(kind: str, seed: int, budget: int) -> optuna.samplers.BaseSampler:
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=max(8, min(50, budget // 5)), seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=max(5, budget // 10))
    raise SearchError(f"unknown Optuna sampler {kind!r} (nsga2 or tpe)")


def directions(problem: SearchProblem) -> list[str]:
    return ["maximize" if problem.maximize else "minimize"] + ["minimize"] * len(problem.devices)


def metric_names(problem: SearchProblem) -> list[str]:
    return [problem.objective] + [f"latency_ms[{d}]" for d in problem.devices]


def _constraint_attrs(problem: SearchProblem, constraints: list[Constraint]) -> list[dict]:
    out = []
    for c in constraints:
        bounds = c.bound(problem.devices) if problem.devices else []
        out.append({"label": c.label, "given": c.given or c.label,
                    "index_limits": [[j, float(b)] for j, b in enumerate(bounds) if b < 1e300]})
    return out


def stored_constraints(study: optuna.Study, problem: SearchProblem) -> list[Constraint] | None:
    """The constraints the proposer resolved (in milliseconds, per device), as stored in the study: a worker
    bounds its trials by them rather than resolving relative targets on its own machine."""
    stored = study.user_attrs.get("hwnas_constraints")
    if not stored or any("given" not in c for c in stored):
        return None
    return [Constraint(tuple((problem.devices[j], ms) for j, ms in c["index_limits"]), given=c["given"])
            for c in stored]


def open_job(config: OptunaConfig, problem: SearchProblem, constraints: list[Constraint], settings=None,
             worker: int = 0) -> StudyJob:
    """Create or resume the study of ``config``; with the search ``settings``, record them (for workers) and the
    fingerprint, and refuse a study made by another search."""
    sampler = optuna.samplers.RandomSampler(seed=config.seed) if config.proposer else \
        make_sampler(config.sampler, config.seed * 100 + worker, config.budget)
    storage = open_storage(config.storage)
    study = open_study(config.storage, config.study, directions(problem), metric_names(problem), sampler, storage)
    if settings is not None:
        where = f"{config.study!r} in {masked_url(config.storage)}"
        check_fingerprint(study, fingerprint(settings), where)
        stored = study.user_attrs.get(SETTINGS_ATTR)
        if stored and stored.get("strategy") != settings.strategy:
            raise SearchError(f"study {where} holds a {stored.get('strategy')} search, not {settings.strategy}; "
                              f"use another --study")
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint(settings))
        study.set_user_attr(SETTINGS_ATTR, settings.config())
        study.set_user_attr("hwnas_constraints", _constraint_attrs(problem, constraints))
    if config.proposer:
        study.set_user_attr(PROPOSER_DONE_ATTR, False)
    return StudyJob(study=study, storage=storage, problem=problem, constraints=constraints, budget=config.budget,
                    proposer=config.proposer)


def join_job(url: str, name: str, machine: dict | None = None) -> StudyJob:
    """A worker's job on an existing study: the problem rebuilt from the stored settings, checked against the
    stored fingerprint (space, data, code version); ``machine``: where this worker trains (``accelerator``,
    ``precision``, ``threads``: ``search_setup.MACHINE_SETTINGS``)."""
    from nas.search.predict.search_setup import PredictorSearchSettings, build_constraints, build_problem

    storage = open_storage(url, must_exist=True)
    study = load_study(url, name, storage=storage)
    stored = study.user_attrs.get(SETTINGS_ATTR)
    if not stored:
        raise SearchError(f"study {name!r} in {masked_url(url)} was not made by `hwnas search` (no settings)")
    known = PredictorSearchSettings.__dataclass_fields__  # settings of another code version: its fingerprint says so
    settings = PredictorSearchSettings(**{k: v for k, v in stored.items() if k in known}, **(machine or {}))
    check_fingerprint(study, fingerprint(settings), f"{name!r} in {masked_url(url)}")
    problem = build_problem(settings)
    constraints = stored_constraints(study, problem) or build_constraints(settings, problem)[0]
    config = OptunaConfig(budget=settings.budget, seed=settings.seed, sampler=settings.sampler, storage=url,
                          study=name, proposer=settings.strategy != "optuna")
    sampler = optuna.samplers.RandomSampler() if config.proposer else \
        make_sampler(config.sampler, settings.seed * 100 + os.getpid() % 1000, settings.budget)
    return StudyJob(study=load_study(url, name, sampler, storage), storage=storage, problem=problem,
                    constraints=constraints, budget=settings.budget, proposer=config.proposer)


def work(url: str, name: str, stop: Callable[[], bool] = lambda: False,
         on_trial: Callable[[int], None] | None = None, machine: dict | None = None,
         on_ready: Callable[[], None] | None = None) -> dict:
    """``hwnas worker``: join the study and evaluate its trials until its budget is reached (``on_ready`` once
    joined)."""
    with storage_errors(url):
        job = join_job(url, name, machine)
        if on_ready is not None:
            on_ready()
        if job.finished():
            return {"nothing_to_do": True, **job.counts}
        return {"nothing_to_do": False, **run_worker(job, wait=True, stop=stop, on_trial=on_trial)}


def machine_settings(settings) -> dict | None:
    """What local workers take from the search's settings besides the study: where they train."""
    from nas.search.predict.search_setup import MACHINE_SETTINGS

    if settings is None:
        return None
    return {k: getattr(settings, k) for k in MACHINE_SETTINGS if k not in ("workers", "asynchronous")}


def _worker_main(url: str, name: str, parent_pid: int, queue, machine: dict | None, ready) -> None:
    def joined():
        with ready.get_lock():
            ready.value += 1

    try:
        if os.getppid() == parent_pid:
            queue.put(("done", work(url, name, stop=lambda: os.getppid() != parent_pid, machine=machine,
                                    on_ready=joined)))
    except Exception as e:  # reported by the parent, which raises it as one line
        queue.put(("error", f"worker {os.getpid()}: " + (str(e) if isinstance(e, HwnasError) else
                                                        f"{type(e).__name__}: {e}")))


class LocalWorkers:
    """``n`` worker processes on this machine (spawned, so each has its own torch state), training where
    ``machine`` says (``join_job``); they stop when the process that started them dies."""

    def __init__(self, url: str, name: str, n: int, machine: dict | None = None):
        self.procs, self.queue, self._ready = [], None, None
        if n < 1:
            return
        ctx = multiprocessing.get_context("spawn")
        self.queue, self._ready = ctx.Queue(), ctx.Value("i", 0)
        for _ in range(n):
            p = ctx.Process(target=_worker_main, args=(url, name, os.getpid(), self.queue, machine, self._ready),
                            daemon=True)
            p.start()
            self.procs.append(p)

    def ready(self) -> bool:
        """Every worker has started (imported, rebuilt the problem and joined the study): a process spawned with
        torch takes seconds to get there."""
        return self._ready is None or self._ready.value >= len(self.procs)

    def alive(self) -> bool:
        return any(p.is_alive() for p in self.procs)

    def close(self, wait: bool = True) -> list[dict]:
        """Wait for (or stop) the workers; their stats; SearchError for the first worker that failed."""
        if wait:
            while self.alive():
                time.sleep(0.2)
        stats, errors = [], []
        while self.queue is not None and not self.queue.empty():
            kind, info = self.queue.get()
            (stats.append(info) if kind == "done" else errors.append(info))
        for p in self.procs:
            if p.is_alive():
                p.terminate()
            p.join()
        if errors:
            raise SearchError(errors[0])
        return stats


def run_optuna(problem: SearchProblem, constraints: list[Constraint], config: OptunaConfig, settings=None,
               on_progress: Callable[[int], None] | None = None) -> dict:
    """Run the sampler's study to the budget with ``config.workers`` local processes (workers beyond this one
    need the ``settings`` stored in the study to rebuild the problem); returns counts and worker stats."""
    job = open_job(config, problem, constraints, settings)
    if config.workers > 1 and settings is None:
        raise SearchError("--workers > 1 needs search settings that worker processes can rebuild the problem from")
    nothing_to_do = job.finished()
    workers = LocalWorkers(config.storage, config.study, 0 if nothing_to_do else config.workers - 1,
                           machine_settings(settings))
    try:
        stats = [run_worker(job, wait=True, on_trial=on_progress)]
        stats += workers.close(wait=True)
    finally:
        workers.close(wait=False)
    return {"nothing_to_do": nothing_to_do, "workers": stats, "trials": len(job.study.get_trials(deepcopy=False)),
            "evaluations": len(evaluated_trials(job.study))}
