"""The Optuna study that holds a predictor-guided search's state: storage URLs and drivers, opening and checking a
study, the fingerprint workers compare, and the progress summary of ``hwnas search status``.

Every evaluation is a trial (its decisions as params, the objective and free latencies as values, metrics in user
attrs). SQLite in the run directory is the default; ``--storage postgresql://...`` (or mysql://) lets workers on
other machines join the same study. Storages beat a heartbeat: a worker that dies mid-trial has its trial failed
after ``GRACE_S`` and its candidate enqueued again (``optuna.storages.RetryHeartbeatStaleTrialCallback``).
``optuna-dashboard URL`` opens the same study.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import re
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import optuna
from optuna.trial import TrialState

from nas.errors import HwnasError, OutputError, SearchError
from nas.files import disk_full
from nas.search.blackbox.storage_url import (  # noqa: F401  (re-exported: callers import them from the study)
    check_storage_url,
    check_study_name,
    default_storage_url,
    driver_url,
    hide_secrets,
    masked_url,
    sqlite_path,
    storage_host,
)

# errors only: Optuna warns of every failed trial with its traceback, and hwnas reports a trial's failure itself (the
# error recorded on the trial, raised as one line by whoever waits for it)
optuna.logging.set_verbosity(optuna.logging.ERROR)

HEARTBEAT_S = 2  # a running trial's heartbeat
GRACE_S = 10  # a trial whose heartbeat is older than this is failed and its candidate enqueued again
ORPHAN_S = 30  # ... and a trial never seen by its worker (killed before its first heartbeat), this long after it began
SETTINGS_ATTR = "hwnas_settings"  # the search settings workers rebuild the problem from
FINGERPRINT_ATTR = "hwnas_fingerprint"  # what a worker's space, data and code must match
PROPOSER_DONE_ATTR = "hwnas_proposer_done"  # the proposer enqueues nothing more: idle workers stop
EXHAUSTED_ATTR = "hwnas_exhausted"  # every candidate of a table is evaluated or taken
RECENT_S = 300  # workers seen within this many seconds are "recent" in the status
def _sqlite_engine(url: str, read_only: bool = False) -> dict:
    """SQLite in WAL mode without a sync per commit (every user attr is a commit: 16 ms each otherwise; a crash
    of the machine may lose the last trials, which a rerun evaluates again), and with transactions that take the
    write lock when they begin (``_serialize``), so that two workers never pop the same waiting trial. A reader
    (``read_only``: the status) leaves the file's journal mode as it is."""
    import sqlite3

    path = url[len("sqlite:///"):]
    if not path or path == ":memory:" or "?" in path:
        return {"connect_args": {"timeout": 60}}

    def connect():
        conn = sqlite3.connect(path, timeout=60, check_same_thread=False, isolation_level=None)
        if not read_only:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return {"creator": connect}


def _serialize(storage: optuna.storages.RDBStorage) -> None:
    """SQLite: every transaction begins with ``BEGIN IMMEDIATE`` (pysqlite's own deferred BEGIN lets two workers
    read a trial as waiting and both take it; SQLAlchemy's recipe for serializable pysqlite)."""
    import sqlalchemy

    if storage.engine.name == "sqlite":
        sqlalchemy.event.listen(storage.engine, "begin", lambda conn: conn.exec_driver_sql("BEGIN IMMEDIATE"))


def _reason(error: BaseException, url: str) -> str:
    """A driver's error as one line, without SQLAlchemy's background link and without any credential of ``url``."""
    text = " ".join(str(getattr(error, "orig", None) or error.__cause__ or error).split()) or type(error).__name__
    text = re.sub(r"\s*\(Background on this error.*$", "", text)
    return hide_secrets(hide_secrets(text, driver_url(url)), url)


def storage_failure(url: str, error: BaseException) -> HwnasError:
    """The one-line error for a storage that failed mid-search: a full disk names the SQLite file (or the server)
    and the space to free; anything else names the storage and the driver's reason."""
    reason = _reason(error, url)
    if _disk_full(reason):
        path = sqlite_path(url)
        if path is not None:
            return disk_full(path, OSError(errno.ENOSPC, reason), "at least 1 MB") or \
                OutputError(f"cannot write the Optuna study {path}: the disk is full ({reason}); free some space "
                            f"and rerun the same command (it resumes)")
        return SearchError(f"the Optuna storage {masked_url(url)} (host {storage_host(url)}) is out of disk space "
                           f"({reason}); free space on its server and rerun the same command (it resumes)")
    return SearchError(f"the Optuna storage {masked_url(url)} failed: {reason}")


def _disk_full(reason: str) -> bool:
    return any(s in reason.lower() for s in ("disk is full", "no space left", "could not extend file", "table is full"))


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn the storage's failures (Optuna's StorageInternalError, SQLAlchemy's errors) into one-line errors."""
    import sqlalchemy

    try:
        yield
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as e:
        raise storage_failure(url, e) from None


def open_storage(url: str, must_exist: bool = False, read_only: bool = False) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url``, with heartbeats and retries of dead workers' trials; SearchError naming the host
    and the driver's reason when it cannot be opened. ``must_exist``: a SQLite file that is not there is an error
    (a worker or a status on a mistyped path), not a new empty database; ``read_only``: for reading (a SQLite file
    is left as it is)."""
    check_storage_url(url)
    path = sqlite_path(url)
    if must_exist and path is not None and not path.is_file():
        raise SearchError(f"no Optuna study at {path} (no such file); check --storage (a search's study is "
                          f"RUN/study.db)")
    real = driver_url(url)
    try:
        kwargs = _sqlite_engine(real, read_only) if real.startswith("sqlite") else \
            {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}} if real.startswith("postgresql") else \
            {"pool_pre_ping": True}
        with warnings.catch_warnings():  # heartbeats and retries are marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                real, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())
        if not read_only:
            _serialize(storage)
        return storage
    except Exception as e:  # sqlalchemy raises many kinds (bad dialect, unreachable host, unwritable file)
        reason = _reason(e, url)
        if _disk_full(reason):
            raise storage_failure(url, e) from None
        where = "" if real.startswith("sqlite") else f" (host {storage_host(url)})"
        raise SearchError(f"cannot open the Optuna storage {masked_url(url)!r}{where}: {reason}") from None


def fingerprint(settings) -> dict:
    """What every worker of a study must share: the space (and its file's content), the data, the objective,
    the latency columns or devices, and the code version."""
    import nas

    space_file = settings.space[len("table:"):] if settings.is_table else settings.space
    path = Path(space_file)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else "built-in"
    return {"space": settings.space, "space_sha256": digest, "dataset": None if settings.is_table else
            settings.dataset, "objective": settings.objective, "devices": list(settings.devices),
            "latency_columns": list(settings.latency_columns), "decisions": list(settings.decision_columns),
            "code": nas.__version__}


def check_fingerprint(study: optuna.Study, mine: dict, where: str) -> None:
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    if stored is None:
        return
    diff = [k for k in sorted(set(stored) | set(mine)) if stored.get(k) != mine.get(k)]
    if diff:
        k = diff[0]
        raise SearchError(f"study {where} was made with {k} {stored.get(k)!r}, this one has {mine.get(k)!r}; "
                          f"use the same {k} or another --study")


def open_study(url: str, name: str, directions: list[str], metric_names: list[str],
               sampler: optuna.samplers.BaseSampler | None = None, storage=None) -> optuna.Study:
    """Create or load study ``name`` (in ``storage``, else in a new one at ``url``); SearchError when it exists
    with other objectives."""
    check_study_name(name)
    storage = storage or open_storage(url)
    where = f"{name!r} in {masked_url(url)}"
    try:
        study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True, directions=directions,
                                    sampler=sampler)
    except ValueError as e:  # an existing study with other directions
        raise SearchError(f"study {where}: {e}") from None
    if [d.name.lower() for d in study.directions] != directions or \
            study.metric_names not in (None, metric_names):
        raise SearchError(f"study {where} has other objectives ({', '.join(study.metric_names or [])}); "
                          f"use another --study")
    if study.metric_names is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names)
    return study


def load_study(url: str, name: str, sampler: optuna.samplers.BaseSampler | None = None,
               storage=None, read_only: bool = False) -> optuna.Study:
    """An existing study (for a worker, or ``read_only`` for the status); SearchError when there is none of that
    name."""
    check_study_name(name)
    storage = storage or open_storage(url, must_exist=True, read_only=read_only)
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise SearchError(f"no study {name!r} in {masked_url(url)} (studies: {names})") from None


_orphans_checked: dict[str, float] = {}  # study name -> when this process last looked for orphaned trials


def fail_stale_trials(study: optuna.Study, storage: optuna.storages.RDBStorage | None = None) -> None:
    """Fail the trials of workers whose heartbeat stopped; the storage's callback enqueues them again. With the
    ``storage``, also the trials of workers that died between taking a trial and its first heartbeat (Optuna never
    finds those stale): running, never seen (``last_seen``), and started ``ORPHAN_S`` ago (a margin for clocks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if storage is None or time.monotonic() - _orphans_checked.get(study.study_name, -ORPHAN_S) < ORPHAN_S / 6:
        return  # looked a moment ago (workers and proposers call this in their polling loops)
    _orphans_checked[study.study_name] = time.monotonic()
    now, study_id = datetime.datetime.now(), None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "last_seen" in t.user_attrs or t.datetime_start is None or \
                (now - t.datetime_start).total_seconds() < ORPHAN_S:
            continue
        study_id = study_id or storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            retry = storage.get_heartbeat_stale_trial_callback()
            if storage.set_trial_state_values(trial_id, TrialState.FAIL) and retry is not None:
                retry(study, storage.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process failed it first


def claims(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Evaluations finished or under way: trials that claimed a unit of the budget."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
            if t.user_attrs.get("claimed")]


def evaluated_trials(study: optuna.Study, trials: list[optuna.trial.FrozenTrial] | None = None
                     ) -> list[optuna.trial.FrozenTrial]:
    """Finished evaluations (among ``trials`` when already read from the study), in the order they finished."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if trials is None else trials
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("claimed")]
    return sorted(done, key=lambda t: (t.datetime_complete, t.number))


def study_status(study: optuna.Study, now: float | None = None) -> dict:
    """Progress of a study: done / running / waiting / failed evaluations, the best per constraint and the
    workers seen in the last ``RECENT_S`` seconds."""
    now = time.time() if now is None else now
    settings = study.user_attrs.get(SETTINGS_ATTR)
    if not settings:
        raise SearchError(f"study {study.study_name!r} was not made by `hwnas search` (no settings, so no budget "
                          f"or constraints to report); open it with optuna-dashboard")
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("claimed")]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    objective = (study.metric_names or ["objective"])[0]
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    best = []
    for c in study.user_attrs.get("hwnas_constraints", [{"label": "any latency", "limits": []}]):
        ok = [t for t in done if all(t.user_attrs["latency_ms"][i] <= ms for i, ms in c.get("index_limits", []))]
        if ok:
            t = (max if maximize else min)(ok, key=lambda t: t.values[0])
            best.append({"constraint": c["label"], "trial": t.number, objective: t.values[0],
                         "latency_ms": t.user_attrs["latency_ms"]})
        else:
            best.append({"constraint": c["label"], "trial": None})
    seen: dict[str, float] = {}
    for t in trials:
        w, at = t.user_attrs.get("worker"), t.user_attrs.get("last_seen")
        if w and at:
            seen[w] = max(seen.get(w, 0.0), float(at))
    return {"study": study.study_name, "budget": settings.get("budget"), "strategy": settings.get("strategy"),
            "done": len(done), "running": len(running),
            "waiting": sum(t.state == TrialState.WAITING for t in trials),
            "failed": len(failed), "retried": sum("failed_trial" in t.system_attrs for t in trials),
            "best": best, "workers_recent": sorted(w for w, at in seen.items() if now - at <= RECENT_S),
            "workers_seen": len(seen)}
