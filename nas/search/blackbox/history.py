"""The evaluation log of a search: every evaluation in order, the budget, and resuming from ``history.csv``.

Every expensive evaluation (training a candidate, or a lookup in a user's table) goes through
``History.evaluate``: it counts against the budget, is written to ``history.csv`` at once (atomically), with the
decisions, the predicted figures the strategy had before evaluating (predicted objective, its std, the free
predicted latency per device) and the actual metrics. A rerun of the same search replays it: searches are
deterministic for a seed, and an evaluation found in the stored history is returned from there instead of being
run again, so a killed search resumes where it stopped. ``History.evaluate_batch`` evaluates a strategy's batch
here one at a time, or all at once through ``evaluations`` (a search's Optuna study and its workers:
``nas.search.blackbox.worker.StudyEvaluations``), recording the rows in the batch's order either way. ``History.submit``
and ``History.collect`` do the same without waiting for a whole batch (``AsyncEvaluations``): the strategy
proposes more while the workers evaluate, and the rows are recorded in the order the evaluations finished.

With a study behind it (``evaluations`` that have ``stored()``), the study is the source of truth and history.csv
is only written: a rerun replays the study's evaluations (a torn or deleted history.csv loses nothing). A rerun that
leaves the killed run's path (asynchronous rounds follow the order results arrived in) records the killed run's
other evaluations, and adopts its waiting ones, before it evaluates anything new (``_take_over``), so that the
budget counts them; if the study holds its budget anyway (other proposers or workers), what is still submitted is
dropped and the search ends (``BudgetExhausted``); ``absorb`` records whatever the study holds at the end.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pandas as pd

from nas.errors import SearchError
from nas.files import write_csv
from nas.search.blackbox.problem import Constraint, SearchProblem

EvalCallback = Callable[[dict], None]
# evaluates a batch of genomes elsewhere (an Optuna study's workers): (metrics, seconds) per genome, in order
BatchEvaluations = Callable[[np.ndarray, str], list[tuple[dict, float]]]


class AsyncEvaluations(Protocol):
    """Evaluations that run while the strategy goes on (a study's workers): ``submit`` starts them, ``finished``
    waits until at most ``unfinished`` of ``keys`` are not done (or until ``full()``: the study holds its budget,
    and the rest never run) and returns the done ones' (metrics, seconds), in the order they finished; ``slots()``
    is how many run at once. Called with a batch, they evaluate it whole (``BatchEvaluations``; None for a
    candidate dropped because the study is full). ``stored()``: every evaluation the study holds, as stored rows
    (key -> ``m:`` metrics, seconds, phase, genome, predictions); ``pending()``: the proposed candidates waiting or
    running (key -> genome, phase, predicted, std)."""

    def __call__(self, genomes: np.ndarray, phase: str, predicted=None, predicted_std=None
                 ) -> list[tuple[dict, float] | None]: ...

    def submit(self, genomes: np.ndarray, phase: str, predicted=None, predicted_std=None) -> None: ...

    def finished(self, keys: list[str], unfinished: int) -> dict[str, tuple[dict, float]]: ...

    def full(self) -> bool: ...

    def stored(self) -> dict[str, dict]: ...

    def pending(self) -> dict[str, tuple]: ...

    def slots(self) -> int: ...


class BudgetExhausted(Exception):
    """Raised by ``History.evaluate`` when the budget is spent (strategies stop on it)."""


class History:
    def __init__(self, problem: SearchProblem, budget: int, constraints: list[Constraint],
                 path: str | Path | None = None, on_eval: EvalCallback | None = None,
                 evaluations: BatchEvaluations | AsyncEvaluations | None = None):
        if budget < 1:
            raise SearchError(f"--budget must be at least 1 (got {budget})")
        self.problem, self.budget, self.constraints = problem, budget, constraints
        self.path = Path(path) if path else None
        self.on_eval = on_eval
        self.evaluations = evaluations  # None: evaluate here, one at a time
        self.rows: list[dict[str, Any]] = []
        self.genomes: list[np.ndarray] = []
        self._stored: dict[str, dict] = {}  # key -> row of a previous (interrupted) run
        self._done: dict[str, int] = {}  # key -> index in rows
        self._submitted: dict[str, tuple] = {}  # key -> (genome, phase, predicted, std): started, not recorded
        self._foreign: dict[str, tuple] = {}  # the same, of the killed run (waiting or running in the study)
        if self.from_study:  # the study is the source of truth; history.csv is only written
            self._stored, self._foreign = evaluations.stored(), evaluations.pending()
        elif self.path is not None and self.path.is_file():
            try:
                stored = pd.read_csv(self.path, keep_default_na=False, dtype={"key": str})
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
                reason = " ".join(str(e).split())
                raise SearchError(f"{self.path}: unreadable history ({reason}); use a new --out") from None
            if "key" not in stored.columns:
                raise SearchError(f"{self.path}: not a search history (no 'key' column); use a new --out")
            for line, row in enumerate(stored.to_dict("records"), start=2):  # line 1 is the header
                self._stored[str(row["key"])] = self._checked_row(row, line)
        self.resumed = len(self._stored)

    def _checked_row(self, row: dict, line: int) -> dict:
        """A stored row whose key and metrics are usable; SearchError naming the line of history.csv if not."""
        where = f"{self.path}: line {line}"
        if not str(row["key"]).strip():
            raise SearchError(f"{where}: row without a key (a torn or hand-edited row); delete the line to "
                              f"evaluate it again, or use a new --out")
        objective = f"m:{self.problem.objective}"
        if objective not in row:
            raise SearchError(f"{self.path}: no {objective!r} column; this history is from another search; "
                              f"use a new --out")
        if not np.isfinite(_float(row[objective])):
            raise SearchError(f"{where} (key {row['key']}): {self.problem.objective} is {row[objective]!r}, not a "
                              f"finite number (a torn or hand-edited row); delete the line to evaluate it again, "
                              f"or use a new --out")
        return row

    @property
    def from_study(self) -> bool:
        return hasattr(self.evaluations, "stored")

    # ---- budget ------------------------------------------------------------------------------------------------
    @property
    def used(self) -> int:
        return len(self.rows)

    @property
    def remaining(self) -> int:
        """Budget not yet recorded or started."""
        return self.budget - self.used - len(self._submitted)

    @property
    def pending(self) -> int:
        """Evaluations submitted and not finished."""
        return len(self._submitted)

    def slots(self) -> int:
        """How many evaluations run at once: 1 unless the evaluations are asynchronous (``submit``)."""
        return self.evaluations.slots() if hasattr(self.evaluations, "slots") else 1

    def is_evaluated(self, genome: np.ndarray) -> bool:
        return self.problem.space.keys(genome[None, :])[0] in self._done

    def evaluated_keys(self) -> set[str]:
        return set(self._done)

    def pending_genomes(self) -> np.ndarray:
        return np.stack([g for g, *_ in self._submitted.values()]) if self._submitted else \
            np.zeros((0, self.problem.space.dims))

    def taken_keys(self) -> set[str]:
        """Evaluated or under way."""
        return set(self._done) | set(self._submitted)

    def submit(self, genomes: np.ndarray, phase: str, predicted=None, predicted_std=None) -> None:
        """Start evaluating ``genomes`` (at most the remaining budget's worth; evaluated or started ones are
        skipped) without waiting: asynchronous evaluations only. Stored evaluations of an interrupted run are
        recorded at once."""
        keys = list(self.problem.space.keys(genomes))
        self._take_over(keys)
        fresh: list[int] = []
        for i, key in enumerate(keys):
            if key in self._done or key in self._submitted:
                continue
            pred = None if predicted is None else predicted[i]
            std = None if predicted_std is None else predicted_std[i]
            stored = self._stored.get(key)
            if stored is not None:  # paid for by the interrupted run: replayed whatever the budget left
                self._replay(genomes[i], phase, stored, pred, std)
                continue
            if key in self._foreign:  # the interrupted run's waiting candidate: already in the study's queue
                self._submitted[key] = (np.asarray(genomes[i], float), phase, pred, std)
                del self._foreign[key]
                continue
            if self.remaining <= 0:
                continue
            self._submitted[key] = (np.asarray(genomes[i], float), phase, pred, std)
            fresh.append(i)
        if fresh:
            self.evaluations.submit(genomes[fresh], phase, *self._predictions(fresh, predicted, predicted_std))
        self._stop_if_full()

    def collect(self, unfinished: int = 0) -> list[dict]:
        """Wait until at most ``unfinished`` submitted evaluations are not finished; record the finished ones in
        the order they finished and return their rows."""
        if not self._submitted:
            return []
        done = self.evaluations.finished(list(self._submitted), unfinished)
        rows = []
        for key, (metrics, seconds) in done.items():
            genome, phase, pred, std = self._submitted.pop(key)
            rows.append(self.record(genome, phase, metrics, seconds, pred, std))
        self._stop_if_full()
        return rows

    # ---- evaluating ----------------------------------------------------------------------------------------------
    def evaluate(self, genome: np.ndarray, phase: str, predicted: float | None = None,
                 predicted_std: float | None = None) -> dict[str, Any]:
        """Evaluate once (or replay a stored evaluation); returns the history row. BudgetExhausted when spent."""
        return self.evaluate_batch(genome[None, :], phase, None if predicted is None else [predicted],
                                   None if predicted_std is None else [predicted_std])[0]

    def evaluate_batch(self, genomes: np.ndarray, phase: str, predicted=None, predicted_std=None) -> list[dict]:
        """Evaluate a batch (all at once through ``evaluations``, or here one at a time); returns the rows in the
        batch's order (an evaluated candidate's existing row). Records at most the remaining budget's worth (and
        what an interrupted run evaluated or started), then raises BudgetExhausted if candidates were left."""
        problem = self.problem
        keys = list(problem.space.keys(genomes))
        self._take_over(keys)
        first = {k: i for i, k in reversed(list(enumerate(keys)))}
        todo = [i for i, key in enumerate(keys) if key not in self._done and first[key] == i]
        paid = [i for i in todo if keys[i] in self._stored or keys[i] in self._foreign]  # by the interrupted run
        unpaid = [i for i in todo if i not in paid]
        allowed = max(self.remaining - len(paid), 0)
        left = len(unpaid) > allowed
        todo = sorted(paid + unpaid[:allowed])
        fresh = [i for i in todo if keys[i] not in self._stored]
        results = dict(zip(fresh, self.evaluations(genomes[fresh], phase,
                                                   *self._predictions(fresh, predicted, predicted_std)))) \
            if self.evaluations is not None and fresh else {}
        for i in todo:
            pred = None if predicted is None else predicted[i]
            std = None if predicted_std is None else predicted_std[i]
            stored = self._stored.get(keys[i])
            if stored is not None:
                self._replay(genomes[i], phase, stored, pred, std)
                continue
            if i not in results:
                start = time.perf_counter()
                results[i] = (problem.evaluate(genomes[i]), time.perf_counter() - start)
            if results[i] is None:  # the study holds its budget: this candidate never runs
                left = True
                continue
            self.record(genomes[i], phase, results[i][0], results[i][1], pred, std)
        self.collect(0)  # the interrupted run's candidates adopted by _take_over
        self._stop_if_full()
        if left:
            raise BudgetExhausted()
        return [self.rows[self._done[k]] for k in keys]

    @staticmethod
    def _predictions(index: list[int], predicted, predicted_std) -> tuple:
        return (None if predicted is None else [predicted[i] for i in index],
                None if predicted_std is None else [predicted_std[i] for i in index])

    def _take_over(self, keys: list[str]) -> None:
        """Before a study-backed batch: if the interrupted run's stored or pending evaluations are not all in it,
        this run has left the interrupted run's path (asynchronous rounds follow the order results arrived in, or
        the worker count changed); record the stored ones (in the order they finished) and adopt the pending ones
        now, so that the budget counts them before anything new is proposed."""
        if not self.from_study:
            return  # history.csv's rows: a rerun of the same search replays them in its own order
        batch = set(keys)
        stored = [k for k in self._stored if k not in self._done and k not in self._submitted and k not in batch]
        pending = [k for k in self._foreign if k not in batch]
        if not stored and not pending or not batch - set(self._stored) - set(self._foreign) - set(self._done):
            return  # nothing left behind, or a batch of the interrupted run's evaluations only
        for key in stored:
            self._replay_stored(key)
        for key in pending:
            self._submitted[key] = self._foreign.pop(key)

    def _replay_stored(self, key: str) -> dict:
        stored = self._stored[key]
        return self._replay(np.asarray(stored["genome"], float), stored["phase"], stored, stored.get("predicted"),
                            stored.get("predicted_std"))

    def _stop_if_full(self) -> None:
        """The study holds its budget while candidates are still submitted (other proposers or workers took the
        units): those never run; record what the study holds and stop."""
        if self._submitted and self.from_study and self.evaluations.full():
            self._submitted.clear()
            self.absorb()
            raise BudgetExhausted()

    def absorb(self) -> list[dict]:
        """Record every evaluation the study holds that this history has not (in the order they finished): what
        an interrupted run evaluated and this run did not propose again, or what workers finished after it."""
        if not self.from_study:
            return []
        self._stored.update(self.evaluations.stored())
        rows = []
        for key in [k for k in self._stored if k not in self._done]:
            self._submitted.pop(key, None)
            rows.append(self._replay_stored(key))
        return rows

    def _replay(self, genome: np.ndarray, phase: str, stored: dict, predicted, predicted_std) -> dict:
        """Record an evaluation of the interrupted run (its metrics from the study or history.csv)."""
        metrics = {k[len("m:"):]: _float(v) for k, v in stored.items() if k.startswith("m:")}
        return self.record(genome, phase, metrics, _float(stored.get("seconds", np.nan)), predicted, predicted_std,
                           replayed=True)

    def record(self, genome: np.ndarray, phase: str, metrics: dict[str, float], seconds: float,
               predicted: float | None = None, predicted_std: float | None = None, replayed: bool = False,
               extra: dict | None = None) -> dict[str, Any]:
        """Append one evaluation done elsewhere (an Optuna trial) or just now; writes history.csv."""
        problem = self.problem
        key = problem.space.keys(genome[None, :])[0]
        latency = problem.latency_ms(genome[None, :])[0]
        obj = problem.objective
        if obj not in metrics:
            raise SearchError(f"the evaluation returned no {obj!r} (it returned {', '.join(metrics)})")
        row: dict[str, Any] = {"eval": self.used + 1, "phase": phase, "key": key, **problem.describe(genome)}
        row[f"predicted_{obj}"] = np.nan if predicted is None else float(predicted)
        row[f"predicted_{obj}_std"] = np.nan if predicted_std is None else float(predicted_std)
        for d, ms in zip(problem.devices, latency):
            row[f"latency_ms[{d}]"] = float(ms)
        row[obj] = float(metrics[obj])
        for c in self.constraints:
            row[f"feasible[{c.label}]"] = bool(c.feasible(latency[None, :], problem.devices)[0])
        for k, v in metrics.items():
            row[f"m:{k}"] = float(v)
        row["seconds"] = float(seconds)
        row["replayed"] = replayed
        row.update(extra or {})
        self.rows.append(row)
        self.genomes.append(np.asarray(genome, float))
        self._done.setdefault(key, len(self.rows) - 1)
        self._foreign.pop(key, None)
        self.save()
        if self.on_eval is not None:
            self.on_eval(row)
        return row

    def save(self) -> None:
        """Write history.csv: the evaluations so far, then any stored ones not replayed yet (kept, not lost; a
        study keeps its own)."""
        if self.path is None or not self.rows:
            return
        pending = [] if self.from_study else [r for k, r in self._stored.items() if k not in self._done]
        write_csv(self.path, pd.concat([self.frame(), pd.DataFrame(pending)], ignore_index=True)
                  if pending else self.frame())

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    # ---- views -----------------------------------------------------------------------------------------------------
    def genome_array(self) -> np.ndarray:
        return np.stack(self.genomes) if self.genomes else np.zeros((0, self.problem.space.dims))

    def scores(self) -> np.ndarray:
        """Objective values as 'higher is better' (negated when minimising)."""
        return self.problem.sign() * np.asarray([r[self.problem.objective] for r in self.rows], float)

    def latency_array(self) -> np.ndarray:
        return np.asarray([[r[f"latency_ms[{d}]"] for d in self.problem.devices] for r in self.rows], float) \
            .reshape(len(self.rows), len(self.problem.devices))

    def best_under(self, constraint: Constraint) -> int | None:
        """Index (in rows) of the best evaluated candidate meeting ``constraint``; None if none does."""
        if not self.rows:
            return None
        ok = constraint.feasible(self.latency_array(), self.problem.devices)
        if not ok.any():
            return None
        scores = np.where(ok, self.scores(), -np.inf)
        return int(np.argmax(scores))

    def best_score_under(self, constraint: Constraint) -> float:
        i = self.best_under(constraint)
        return -np.inf if i is None else float(self.scores()[i])


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")
