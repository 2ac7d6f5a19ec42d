"""Issue 28, item 1: a killed multi-worker search resumes from its Optuna study, whatever history.csv holds.

A `--workers N` search (N = 1, 2, 4) over the shipped table is killed with SIGKILL (its whole process group: the
proposer and its worker processes) at several points, its history.csv torn, deleted or emptied, then rerun with
the same command: the rerun must finish, at exactly the budget, with no candidate evaluated twice, and with a
history.csv that holds what the study holds. A rerun that hangs fails on its timeout.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from nas.search.blackbox.study import evaluated_trials, load_study
from test_predict_fixtures import BENCH_TABLE

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 20
RERUN_TIMEOUT_S = int(os.environ.get("HWNAS_TEST_RERUN_TIMEOUT_S", 240))  # a rerun waits at most ~GRACE_S for a killed worker's trial; a hang runs into this


def _command(out: Path, workers: int) -> list[str]:
    return [sys.executable, "-m", "cli.main", "search", "nars", "--space", f"table:{BENCH_TABLE}",
            "--objective", "val_accuracy", "--latency-column", "latency_ms", "--target-ms", "0.07",
            "--budget", str(BUDGET), "--init", "6", "--batch", "3", "--workers", str(workers), "--out", str(out)]


def _start(out: Path, workers: int) -> subprocess.Popen:
    return subprocess.Popen(_command(out, workers), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def complete_trials(out: Path) -> int:
    try:
        with sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _kill_at(out: Path, workers: int, finished: int) -> None:
    """Start the search and SIGKILL its process group once the study holds ``finished`` complete trials."""
    proc = _start(out, workers)
    deadline = time.time() + RERUN_TIMEOUT_S
    while proc.poll() is None and complete_trials(out) < finished and time.time() < deadline:
        time.sleep(0.02)
    ended = proc.poll() is not None
    if not ended:
        os.killpg(proc.pid, signal.SIGKILL)
    _, stderr = proc.communicate()
    assert not ended, f"the search ended before {finished} trials:\n{stderr[-2000:]}"
    assert complete_trials(out) >= finished, f"the search hung before {finished} trials"


def _rerun(out: Path, workers: int) -> str:
    proc = _start(out, workers)
    try:
        stdout, stderr = proc.communicate(timeout=RERUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the rerun of {out} hung (killed after {RERUN_TIMEOUT_S} s)")
    assert proc.returncode == 0, stderr[-3000:]
    return stderr


def check_complete(out: Path) -> None:
    """Exactly the budget: each candidate evaluated once in the study, and history.csv holds those."""
    study = load_study(f"sqlite:///{out / 'study.db'}", "hwnas")
    trials = study.get_trials(deepcopy=False)
    done = evaluated_trials(study)
    assert len(done) == BUDGET
    # the trials that evaluated (a retry of a trial whose worker died after evaluating it recovers its result)
    ran = Counter(t.user_attrs["key"] for t in trials if "metrics" in t.user_attrs and "recovered" not in t.user_attrs)
    assert len(ran) == BUDGET and max(ran.values()) == 1, ran.most_common(3)
    assert not [t.number for t in trials if t.state.name in ("WAITING", "RUNNING")]  # nothing left queued
    history = pd.read_csv(out / "history.csv", dtype={"key": str})
    assert len(history) == BUDGET and history["key"].is_unique
    assert set(history["key"]) == {t.user_attrs["key"] for t in done}
    assert history["eval"].tolist() == list(range(1, BUDGET + 1))


def damage_history(history: Path, how: str) -> None:
    if how == "torn":
        text = history.read_text()
        history.write_text(text[:len(text) * 2 // 3])  # cut in the middle of a row
    elif how == "deleted":
        history.unlink()
    else:
        history.write_text("")


@pytest.mark.parametrize("workers, kill_points, damage", [
    (1, (4, BUDGET - 1), "torn"),  # killed in the initial sample, then at the last evaluation
    (2, (11, BUDGET - 1), "deleted"),  # in the predictor's rounds, then at the last evaluation
    (4, (6, 15), "emptied"),  # in the first round, then in a later one
])
def test_a_killed_search_resumes_from_its_study_to_exactly_its_budget(workers, kill_points, damage, tmp_path):
    out = tmp_path / "run"
    for finished in kill_points:
        _kill_at(out, workers, finished)
    damage_history(out / "history.csv", damage)  # the study is the source of truth: history.csv is rebuilt from it
    _rerun(out, workers)
    check_complete(out)
    if workers == 1:  # and once more: nothing is evaluated again
        trials = len(load_study(f"sqlite:///{out / 'study.db'}", "hwnas").get_trials(deepcopy=False))
        _rerun(out, workers)
        check_complete(out)
        assert json.loads((out / "report.json").read_text())["nars"]["study"]["nothing_to_do"]
        assert len(load_study(f"sqlite:///{out / 'study.db'}", "hwnas").get_trials(deepcopy=False)) == trials
    status = subprocess.run([sys.executable, "-m", "cli.main", "search", "status", "--storage",
                             f"sqlite:///{out / 'study.db'}"], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)
    assert f"{BUDGET} of {BUDGET} done, 0 running, 0 waiting" in status.stdout, status.stdout + status.stderr


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_enqueued_again(tmp_path, monkeypatch):
    import nas.search.blackbox.study as study_module
    from nas.search.blackbox.study import fail_stale_trials, open_storage, open_study

    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url)
    study = open_study(url, "s", ["maximize"], ["objective"], storage=storage)
    study.enqueue_trial({"x": 1}, user_attrs={"proposed": "init", "key": "k1"})
    orphan = study.ask()  # taken (running), and its worker killed before beating or being seen
    fail_stale_trials(study, storage)
    assert study.get_trials(deepcopy=False)[0].state.name == "RUNNING"  # too recent to tell from a slow worker
    monkeypatch.setattr(study_module, "ORPHAN_S", 0)
    fail_stale_trials(study, storage)
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]
    assert trials[1].user_attrs["key"] == "k1" and trials[1].system_attrs["failed_trial"] == orphan.number
