"""Workers: evaluate a study's trials (``hwnas worker``, ``--workers N``, and the search process itself).

A worker runs ``study.optimize`` one trial at a time, so Optuna beats the trial's heartbeat and fails the stale
trials of dead workers (enqueuing their candidates again). A trial is one candidate: an enqueued one (NARS and
ChamNet enqueue every candidate they propose; a table's repaired proposals are enqueued too) or, in a study whose
sampler proposes (Optuna), a sampled one.

The budget is exact across machines through the storage: before and after an evaluation a trial claims its unit
(user attr ``claimed``) and counts the claims ahead of it: those of lower-numbered trials, and those of
higher-numbered ones that passed their last check (``counted``; a retried or late-taken trial can claim after
them). A trial with ``budget`` claims ahead of it, or one whose candidate a claim ahead holds, is pruned without
counting. A killed worker's claim fails with its trial, and the retried trial claims again (and reuses the result
when the worker died after evaluating, before telling the study). A proposer's rerun rebuilds its history from the
study (``StudyEvaluations.stored`` and ``pending``); a study that holds its budget ends the proposer's wait.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import optuna
from optuna.trial import TrialState

from nas.errors import SearchError
from nas.search.blackbox.decisions import Decision
from nas.search.blackbox.problem import Constraint, SearchProblem
from nas.search.blackbox.study import (
    EXHAUSTED_ATTR,
    GRACE_S,
    ORPHAN_S,
    PROPOSER_DONE_ATTR,
    RECENT_S,
    claims,
    evaluated_trials,
    fail_stale_trials,
)

POLL_S = 0.2  # a worker waiting for a trial
PROPOSER_POLL_S = 0.05  # a proposer waiting for results (its next proposal keeps workers busy)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_gone(worker: str) -> bool:
    """Whether ``worker`` (``host:pid``) ran on this machine and its process is gone (a killed run's worker)."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def suggest(trial: optuna.Trial, d: Decision):
    if d.kind in ("cat", "ord"):
        return trial.suggest_categorical(d.name, list(d.options))
    if d.kind == "int":
        return trial.suggest_int(d.name, int(d.low), int(d.high))
    return trial.suggest_float(d.name, d.low, d.high, log=d.log)


@dataclass(kw_only=True)
class StudyJob:
    """A study and what evaluating its trials needs. ``proposer``: NARS/ChamNet enqueue every candidate (workers
    wait for them); otherwise the study's sampler proposes (Optuna)."""

    study: optuna.Study
    storage: optuna.storages.RDBStorage
    problem: SearchProblem
    constraints: list[Constraint]
    budget: int
    proposer: bool
    max_proposals_factor: int = 50  # a sampler's proposals per budget unit before a worker gives up
    counts: dict = field(default_factory=lambda: {"trials": 0, "evaluated": 0, "infeasible": 0, "gave_up": False})
    current: int | None = None  # the number of the trial being evaluated
    _over_bound: set | None = None
    _worst: float | None = None

    def over_bound(self) -> set[int]:
        """Rows of a table whose latency breaks every constraint (never proposed)."""
        if self._over_bound is None:
            self._over_bound = set()
            if self.problem.finite and self.constraints:
                lat = self.problem.latency_ms(self.problem.space.genomes)
                meets = np.any([c.feasible(lat, self.problem.devices) for c in self.constraints], axis=0)
                self._over_bound = set(np.flatnonzero(~meets).tolist())
        return self._over_bound

    def beat(self, trial: optuna.Trial) -> None:
        """Record the trial's first heartbeat now: Optuna's heartbeat thread may not have run yet, and a trial
        without any heartbeat is never found stale if its worker dies."""
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        self.storage.record_heartbeat(self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))

    def finished(self) -> bool:
        return len(evaluated_trials(self.study)) >= self.budget or bool(self.study.user_attrs.get(EXHAUSTED_ATTR))

    def drop_waiting(self) -> int:
        """Prune the trials still waiting in a study that holds its budget (no worker will take them, and the
        status would count them as waiting forever), once no trial runs (``settle``); returns how many."""
        if len(evaluated_trials(self.study)) < self.budget:
            return 0
        self.settle()
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        dropped = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            try:
                self.storage.set_trial_user_attr(trial_id, "note", "budget reached before it ran")
                self.storage.set_trial_state_values(trial_id, TrialState.PRUNED)
                dropped += 1
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # a worker took it meanwhile (and prunes it: the budget is reached)
        return dropped

    def settle(self, timeout_s: float = GRACE_S + ORPHAN_S) -> None:
        """Wait, at most ``timeout_s``, until no trial runs. A killed worker's trial shows running until the
        heartbeat check fails it (``GRACE_S`` after its last heartbeat, ``ORPHAN_S`` after its start if it had
        none); a run that reached its budget sooner would leave it running in the study for good."""
        deadline = time.monotonic() + timeout_s
        while self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) and time.monotonic() < deadline:
            fail_stale_trials(self.study, self.storage)
            time.sleep(POLL_S)


def _prune(trial: optuna.Trial, note: str):
    trial.set_user_attr("claimed", False)
    trial.set_user_attr("note", note)
    raise optuna.TrialPruned(note)


def _holder(study: optuna.Study, trial: optuna.Trial, key: str, budget: int) -> tuple[str | None, object]:
    """Why this trial may not evaluate (budget reached, or a claim ahead of it holds its candidate), if so. Ahead:
    every lower-numbered claim, and a higher-numbered one that has passed its last check (``counted``): a retried or
    late-taken trial can claim after a higher-numbered one has counted itself within the budget."""
    ahead = [t for t in claims(study) if t.number < trial.number or t.user_attrs.get("counted")]
    same = next((t for t in ahead if t.user_attrs.get("key") == key), None)
    if same is not None:
        return f"candidate held by trial {same.number}", same
    if len(ahead) >= budget:
        return "budget reached", None
    return None, None


def evaluate_trial(job: StudyJob, trial: optuna.Trial) -> list[float]:
    """The objective every worker runs: the trial's candidate, evaluated once within the budget."""
    problem, space, study = job.problem, job.problem.space, job.study
    job.current = trial.number
    evaluated = dict(trial.user_attrs)  # a retried trial's copy of the failed one's: its result, if it had one
    job.beat(trial)
    trial.set_user_attr("worker", worker_id())
    trial.set_user_attr("counted", False)  # a retried trial carries the failed one's attributes
    trial.set_user_attr("last_seen", time.time())
    proposed = "proposed" in trial.user_attrs
    if job.proposer and not proposed:
        _prune(trial, "no waiting candidate")  # another worker took the last waiting trial a moment ago
    values = {d.name: suggest(trial, d) for d in space.decisions}
    genome = space.genome(values)
    if problem.finite:  # a table: its rows are the only candidates; params are the evaluated row's decisions
        if proposed:
            genome = space.genomes[int(space.row_of(genome[None, :])[0])]
        else:
            taken = space.rows_of_keys(t.user_attrs.get("key") for t in claims(study)) | job.over_bound() | \
                space.rows_of_keys(t.user_attrs.get("key") for t in
                                   study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            row = space.untaken_row(genome, taken)
            if row is None:
                study.set_user_attr(EXHAUSTED_ATTR, True)
                _prune(trial, "every row is evaluated or taken")
            if space.describe(space.genomes[row]) != values:  # the nearest free row, as its own trial
                study.enqueue_trial(space.describe(space.genomes[row]),
                                    user_attrs={"proposed": f"repair of trial {trial.number}",
                                                "key": space.keys(space.genomes[row][None, :])[0]})
                _prune(trial, f"repaired to row {row}")
            genome = space.genomes[row]
    lat = problem.latency_ms(genome[None, :])[0]
    violation = float(min(c.violation(lat[None, :], problem.devices)[0] for c in job.constraints)) \
        if job.constraints else 0.0
    violation_ms = max(violation, 0.0) if np.isfinite(violation) else 0.0
    key = space.keys(genome[None, :])[0]
    trial.set_user_attr("key", key)
    trial.set_user_attr("latency_ms", [float(v) for v in lat])
    trial.set_user_attr("violation_ms", violation_ms)
    trial.set_constraint("latency_violation_ms", violation_ms)
    if violation > 0:  # told with the worst value seen, without the expensive evaluation
        job.counts["infeasible"] += 1
        trial.set_user_attr("claimed", False)
        worst = job._worst if job._worst is not None else (0.0 if problem.maximize else 1e9)
        return [worst] + [float(v) for v in lat]
    trial.set_user_attr("claimed", True)
    reason, holder = _holder(study, trial, key, job.budget)
    if holder is not None and holder.state == TrialState.COMPLETE:  # evaluated before: its values, no budget
        trial.set_user_attr("claimed", False)
        trial.set_user_attr("cached_from", holder.number)
        return list(holder.values)
    if reason:
        _prune(trial, reason)
    start = time.perf_counter()
    if evaluated.get("key") == key and "metrics" in evaluated:  # its worker died after evaluating, before telling
        metrics, seconds = evaluated["metrics"], float(evaluated.get("seconds", np.nan))
        trial.set_user_attr("recovered", True)
    else:
        try:
            metrics = problem.evaluate(genome)
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {' '.join(str(e).split())}")
            raise
        seconds = time.perf_counter() - start
    reason, _ = _holder(study, trial, key, job.budget)
    if reason:  # a claim ahead appeared meanwhile (a race between machines): this one does not count
        _prune(trial, reason)
    trial.set_user_attr("counted", True)
    value = float(metrics[problem.objective])
    trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items()})
    trial.set_user_attr("seconds", seconds)
    trial.set_user_attr("genome", [float(v) for v in genome])
    trial.set_user_attr("last_seen", time.time())
    job.counts["evaluated"] += 1
    if job._worst is None or (value < job._worst if problem.maximize else value > job._worst):
        job._worst = value
    return [value] + [float(v) for v in lat]


def stored_row(trial: optuna.trial.FrozenTrial) -> dict:
    """An evaluated trial as the history row a rerun replays (``History``'s stored rows)."""
    attrs = trial.user_attrs
    return {"key": attrs["key"], **{f"m:{k}": v for k, v in attrs["metrics"].items()},
            "seconds": attrs.get("seconds", np.nan), "phase": attrs.get("proposed", "optuna"),
            "genome": attrs["genome"], "predicted": attrs.get("predicted"), "predicted_std": attrs.get("predicted_std"),
            "trial": trial.number}


def _state(study: optuna.Study, number: int) -> TrialState:
    return next(t.state for t in study.get_trials(deepcopy=False) if t.number == number)


def _waiting(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def run_worker(job: StudyJob, wait: bool = True, stop: Callable[[], bool] = lambda: False,
               on_trial: Callable[[int], None] | None = None) -> dict:
    """Evaluate trials until the study has its budget (or its table is exhausted, or, for a proposer's study,
    the proposer is done and nothing waits). ``wait=False``: return as soon as there is nothing to take;
    ``stop``: checked before each trial; ``on_trial(evaluations so far)`` after each."""
    study = job.study
    while not stop() and not job.finished():
        fail_stale_trials(study, job.storage)
        if job.proposer:
            if not _waiting(study):
                if not wait or study.user_attrs.get(PROPOSER_DONE_ATTR):
                    break
                time.sleep(POLL_S)
                continue
        else:
            if job.counts["trials"] >= job.budget * job.max_proposals_factor:
                job.counts["gave_up"] = True  # the sampler keeps proposing infeasible or evaluated candidates
                break
            if len(claims(study)) >= job.budget and not _waiting(study):
                if not wait:
                    break
                time.sleep(POLL_S)  # the last evaluations are under way; one may die and be retried
                continue
        job.counts["trials"] += 1
        job.current = None
        try:
            study.optimize(lambda t: evaluate_trial(job, t), n_trials=1, catch=(), gc_after_trial=False)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            if job.current is None or _state(study, job.current) == TrialState.RUNNING:
                raise
            # another process finished the trial under this one (its heartbeat came too late and it was failed
            # and retried): the trial counts once, through whoever finished it
        if on_trial is not None:
            on_trial(len(evaluated_trials(study)))
    return dict(job.counts)


class StudyEvaluations:
    """A proposer's evaluations (``History``'s backend): each candidate becomes an enqueued trial; its result comes
    back from whichever worker evaluated it. Candidates evaluated before (a rerun resuming from the storage) are not
    enqueued again. ``work``: this process evaluates waiting trials too while it waits (until ``work`` returns:
    with ``local`` worker processes, only while they start). ``asynchronous``: the proposer may go on while its
    trials run (``History.submit``), using ``slots()``: this process when it started no worker processes, plus
    the ``local`` ones it started or, if more, the other workers seen recently."""

    def __init__(self, job: StudyJob, work: Callable[[], None] | None, local: int = 0, asynchronous: bool = False):
        self.job, self.work, self.local, self.asynchronous = job, work, local, asynchronous

    def __call__(self, genomes: np.ndarray, phase: str, predicted=None, predicted_std=None
                 ) -> list[tuple[dict, float] | None]:
        keys = self.job.problem.space.keys(genomes)
        self.submit(genomes, phase, predicted, predicted_std)
        done = self.finished(keys, 0)
        return [done.get(k) for k in keys]

    def submit(self, genomes: np.ndarray, phase: str, predicted=None, predicted_std=None) -> None:
        """Enqueue each candidate not evaluated, waiting or running yet, with what a rerun rebuilds its history row
        from: the phase, genome and the predictions made before evaluating it."""
        study, space = self.job.study, self.job.problem.space
        trials = study.get_trials(deepcopy=False)
        active = {t.user_attrs.get("key") for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)} | \
            {t.user_attrs.get("key") for t in evaluated_trials(study, trials)}
        for i, (g, k) in enumerate(zip(genomes, space.keys(genomes))):
            if k not in active:
                attrs = {"proposed": phase, "key": k, "genome": [float(v) for v in g]}
                for name, values in (("predicted", predicted), ("predicted_std", predicted_std)):
                    if values is not None and values[i] is not None and np.isfinite(values[i]):
                        attrs[name] = float(values[i])
                study.enqueue_trial(space.describe(g), user_attrs=attrs)
                active.add(k)

    def full(self) -> bool:
        """The study holds its budget of evaluations: nothing more runs."""
        return len(evaluated_trials(self.job.study)) >= self.job.budget

    def finished(self, keys: list[str], unfinished: int) -> dict[str, tuple[dict, float]]:
        """Wait until at most ``unfinished`` of ``keys`` are not evaluated, or the study holds its budget (the rest
        never run); the evaluated ones' (metrics, seconds) in the order they finished. SearchError when one failed
        with an error and is not retried."""
        study, wanted = self.job.study, set(keys)
        while True:
            trials = study.get_trials(deepcopy=False)
            evaluated = evaluated_trials(study, trials)
            done = {t.user_attrs["key"]: t for t in evaluated if t.user_attrs["key"] in wanted}
            if len(wanted - set(done)) <= unfinished or len(evaluated) >= self.job.budget:
                return {k: (t.user_attrs["metrics"], float(t.user_attrs.get("seconds", np.nan)))
                        for k, t in done.items()}
            pending = {t.user_attrs.get("key") for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
            broken = next((t for t in trials if t.state == TrialState.FAIL and "error" in t.user_attrs and
                           t.user_attrs.get("key") in wanted - set(done) - pending), None)
            if broken is not None:
                raise SearchError(f"trial {broken.number} failed on worker {broken.user_attrs.get('worker')}: "
                                  f"{broken.user_attrs['error']}")
            if self.work is not None:
                self.work()
            fail_stale_trials(study, self.job.storage)
            time.sleep(PROPOSER_POLL_S)

    def stored(self) -> dict[str, dict]:
        """The study's evaluations, in the order they finished, as history rows to replay: key -> ``m:`` metrics,
        seconds, phase, genome and predictions."""
        return {t.user_attrs["key"]: stored_row(t) for t in evaluated_trials(self.job.study)}

    def pending(self) -> dict[str, tuple]:
        """Proposed candidates waiting or running (an interrupted proposer's): key -> (genome, phase, predicted,
        std)."""
        trials = self.job.study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        return {t.user_attrs["key"]: (np.asarray(t.user_attrs["genome"], float), t.user_attrs["proposed"],
                                      t.user_attrs.get("predicted"), t.user_attrs.get("predicted_std"))
                for t in trials if "genome" in t.user_attrs and "proposed" in t.user_attrs}

    def slots(self) -> int:
        if not self.asynchronous:
            return 1
        me, now = worker_id(), time.time()
        others = {t.user_attrs.get("worker") for t in self.job.study.get_trials(deepcopy=False)
                  if t.user_attrs.get("worker") not in (None, me) and
                  (t.state == TrialState.RUNNING or now - float(t.user_attrs.get("last_seen", 0)) <= RECENT_S)}
        others = {w for w in others if not worker_gone(w)}
        return (self.work is not None and not self.local) + max(self.local, len(others))
