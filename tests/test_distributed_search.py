"""Predictor-guided searches on a shared Optuna study: a proposer and separate `hwnas worker` processes, one of
them killed with SIGKILL mid-trial; bad storages and studies; stored params on a table. Runs on SQLite always and
on PostgreSQL when HWNAS_TEST_POSTGRES_URL names a server (`.ci/run` starts one)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
from test_predict_fixtures import BENCH_TABLE

from nas.errors import SearchError
from nas.search.blackbox.history import History
from nas.search.predict.optuna_search import OptunaConfig, open_job, run_optuna
from nas.search.blackbox.study import driver_url, evaluated_trials, load_study, open_storage, study_status
from nas.search.predict.nars import NarsConfig, run_nars
from nas.search.predict.search_setup import PredictorSearchSettings, build_constraints, build_problem

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = os.environ.get("HWNAS_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not POSTGRES, reason="HWNAS_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server)"))]
PROPOSER = """
import json, sys
from nas.search.predict.runner import PredictorStrategy
from nas.search.predict.search_setup import PredictorSearchSettings
from nas.search.strategy import open_run
strategy = PredictorStrategy(PredictorSearchSettings(**json.loads(sys.argv[1])))
prepared = strategy.prepare()
report = strategy.run(prepared, open_run(strategy, prepared, sys.argv[2]))
print(json.dumps(report[report["method"]]["winners"]))
"""


@pytest.fixture(params=BACKENDS)
def storage(request, tmp_path):
    """A storage URL and a fresh study name on it (dropped afterwards on PostgreSQL)."""
    name = f"t{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'shared.db'}", name
        return
    yield POSTGRES, name
    try:
        optuna.delete_study(study_name=name, storage=open_storage(POSTGRES))
    except KeyError:
        pass


def _settings(url, name, **kw) -> PredictorSearchSettings:
    base = dict(strategy="nars", space=f"table:{BENCH_TABLE}", objective="val_accuracy",
                latency_columns=["latency_ms"], metric_columns=["test_accuracy", "train_seconds"], budget=16,
                init=8, batch=4, targets=["0.07"], storage=url, study=name)
    return PredictorSearchSettings(**{**base, **kw})


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _hwnas(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _reference(settings: PredictorSearchSettings) -> History:
    """The same search with one process and no storage."""
    problem = build_problem(settings)
    constraints, _ = build_constraints(settings, problem)
    history = History(problem, settings.budget, constraints)
    run_nars(problem, constraints, history, NarsConfig(budget=settings.budget, seed=settings.seed,
                                                       init=settings.init, batch=settings.batch))
    return history


def test_a_proposer_and_three_workers_survive_a_sigkill(storage, tmp_path):
    url, name = storage
    settings = _settings(url, name, sleep_column="train_seconds", sleep_scale=0.3)
    problem = build_problem(settings)
    constraints, _ = build_constraints(settings, problem)
    study = open_job(OptunaConfig(budget=settings.budget, storage=url, study=name, proposer=True), problem,
                     constraints, settings).study  # the study exists: workers can join before the proposer starts
    workers = [_hwnas("worker", "--storage", url, "--study", name) for _ in range(3)]
    time.sleep(3)
    config = {k: v for k, v in settings.__dict__.items()}
    proposer = subprocess.Popen([sys.executable, "-c", PROPOSER, json.dumps(config), str(tmp_path / "run")],
                                cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    victim = workers[0]
    host = os.uname().nodename
    killed = None
    while killed is None and time.time() < deadline:
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        mine = [t for t in running if t.user_attrs.get("worker") == f"{host}:{victim.pid}" and "key" in t.user_attrs]
        if mine:
            victim.send_signal(signal.SIGKILL)
            killed = mine[0]
        time.sleep(0.05)
    assert killed is not None, "the victim never ran a trial"
    out, err = proposer.communicate(timeout=120)
    assert proposer.returncode == 0, err
    for w in workers[1:]:
        _, werr = w.communicate(timeout=60)
        assert w.returncode == 0, werr[-2000:]
    victim.wait()

    trials = evaluated_trials(study)
    keys = [t.user_attrs["key"] for t in trials]
    assert len(trials) == settings.budget  # budget exact
    assert len(set(keys)) == len(keys)  # 0 duplicated
    assert killed.user_attrs["key"] in keys  # the killed worker's candidate was evaluated again: 0 lost
    failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    assert killed.number in [t.number for t in failed]
    assert any(t.system_attrs.get("failed_trial") == killed.number for t in study.get_trials(deepcopy=False))
    winners = json.loads(out.strip().splitlines()[-1])
    bound = float(settings.targets[0])
    best = max(t.values[0] for t in trials if t.user_attrs["latency_ms"][0] <= bound)
    assert winners[0]["val_accuracy"] == pytest.approx(best)  # the best evaluated under the constraint
    status = study_status(study)
    assert status["done"] == settings.budget and status["waiting"] == 0 and status["running"] == 0
    assert status["failed"] >= 1 and status["retried"] >= 1 and status["workers_seen"] >= 3
    assert status["best"][0][study.metric_names[0]] == pytest.approx(winners[0]["val_accuracy"])


def _run(settings: PredictorSearchSettings, out: Path) -> dict:
    from nas.search.predict.runner import PredictorStrategy
    from nas.search.strategy import open_run

    strategy = PredictorStrategy(settings)
    prepared = strategy.prepare()
    return strategy.run(prepared, open_run(strategy, prepared, out))["nars"]


def test_synchronous_batches_give_the_one_worker_search_with_three_workers(tmp_path):
    url, name = f"sqlite:///{tmp_path / 'sync.db'}", "sync"
    settings = _settings(url, name, sleep_column="train_seconds", sleep_scale=0.02, workers=3, asynchronous=False)
    detail = _run(settings, tmp_path / "run")
    study = load_study(url, name)
    reference = _reference(_settings(url, name))
    assert sorted(t.user_attrs["key"] for t in evaluated_trials(study)) == sorted(r["key"] for r in reference.rows)
    assert len({t.user_attrs["worker"] for t in evaluated_trials(study)}) > 1  # the workers did evaluate
    assert all("running" not in r for r in detail["predictor"]["rounds"])
    c = build_constraints(settings, build_problem(settings))[0][0]
    assert detail["winners"][0]["val_accuracy"] == pytest.approx(
        reference.rows[reference.best_under(c)]["val_accuracy"])


def test_asynchronous_rounds_refit_while_the_workers_evaluate(tmp_path):
    url, name = f"sqlite:///{tmp_path / 'async.db'}", "async"
    settings = _settings(url, name, sleep_column="train_seconds", sleep_scale=0.05, workers=3)
    detail = _run(settings, tmp_path / "run")
    trials = evaluated_trials(load_study(url, name))
    keys = [t.user_attrs["key"] for t in trials]
    assert len(keys) == settings.budget and len(set(keys)) == len(keys)
    me = f"{os.uname().nodename}:{os.getpid()}"
    firsts = {}
    for t in sorted(trials, key=lambda t: t.datetime_start):
        firsts.setdefault(t.user_attrs["worker"], t.datetime_start)
    assert len(set(firsts) - {me}) >= 2  # the local workers evaluated ...
    if len(set(firsts) - {me}) == settings.workers:  # ... and this process only while they were starting: it stops
        # once all have joined, which is before the last one's first trial (a worker that never got a trial gives no
        # such bound); one trial may start between its check and the last join
        last_ready = max(at for w, at in firsts.items() if w != me)
        assert sum(t.datetime_start > last_ready for t in trials if t.user_attrs["worker"] == me) <= 1
    rounds = [r for r in detail["predictor"]["rounds"] if "running" in r]
    assert rounds and any(r["running"] > 0 for r in rounds)  # it refitted while evaluations ran
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == settings.budget + 1


def test_a_table_study_stores_the_evaluated_rows_and_its_objective_names(storage):
    url, name = storage
    settings = _settings(url, name, strategy="optuna", budget=12, sampler="tpe")
    problem = build_problem(settings)
    constraints, _ = build_constraints(settings, problem)
    run_optuna(problem, constraints, OptunaConfig(budget=12, storage=url, study=name, sampler="tpe"), settings)
    study = load_study(url, name)
    assert study.metric_names == ["val_accuracy", "latency_ms[latency_ms]"]
    trials = evaluated_trials(study)
    assert len(trials) == 12 and len({t.user_attrs["key"] for t in trials}) == 12
    table = problem.table
    for t in trials:
        row = table.row_of(np.asarray(t.user_attrs["genome"])[None, :])[0]
        assert t.params == table.describe(table.genomes[row])  # the params are the evaluated row's decisions
        assert t.user_attrs["metrics"]["val_accuracy"] == table.values["val_accuracy"][row]


def _one_line(p, code=2):
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == (1 if code else 0), err
    return out, (lines[0] if lines else "")


def test_bad_studies_and_storages_are_one_line_and_exit_2(storage, tmp_path):
    url, name = storage
    table = tmp_path / "table.csv"
    table.write_bytes(Path(BENCH_TABLE).read_bytes())
    settings = _settings(url, name, space=f"table:{table}", strategy="optuna", budget=3)
    problem = build_problem(settings)
    constraints, _ = build_constraints(settings, problem)
    run_optuna(problem, constraints, OptunaConfig(budget=3, storage=url, study=name), settings)
    # a finished study: nothing to do, exit 0
    out, _ = _one_line(_hwnas("worker", "--storage", url, "--study", name), code=0)
    assert "nothing to do" in out
    # the same study name with other objectives
    other = _settings(url, name, space=f"table:{table}", strategy="optuna", budget=3, direction="min")
    with pytest.raises(SearchError, match="has other objectives"):
        open_job(OptunaConfig(budget=3, storage=url, study=name), build_problem(other), constraints, other)
    # a worker whose table differs from the study's
    table.write_text(table.read_text().replace("0.1805555522441864", "0.2"))
    _, line = _one_line(_hwnas("worker", "--storage", url, "--study", name))
    assert "was made with space_sha256" in line and "another --study" in line
    _, line = _one_line(_hwnas("worker", "--storage", url, "--study", "no-such-study"))
    assert "no study 'no-such-study'" in line


def test_the_postgres_extra_installs_the_driver_sqlalchemy_picks_for_a_plain_url():
    """optuna-dashboard and Optuna hand a plain postgresql:// URL to SQLAlchemy as it is: the driver its default
    dialect imports must be the one the `postgres` extra installs, and the one hwnas maps the URL to."""
    import sqlalchemy

    dialect = sqlalchemy.engine.make_url("postgresql://alice@db.example/hwnas").get_dialect()
    assert importlib.util.find_spec(dialect.driver) is not None, f"the postgres extra lacks {dialect.driver}"
    assert driver_url("postgresql://alice@db.example/hwnas") == f"postgresql+{dialect.driver}://alice@db.example/hwnas"


@pytest.mark.skipif(not POSTGRES, reason="HWNAS_TEST_POSTGRES_URL is not set (.ci/run starts a PostgreSQL server)")
def test_a_plain_postgresql_url_opens_in_optuna_as_in_hwnas():
    name = f"t{uuid.uuid4().hex[:10]}"
    assert POSTGRES.startswith("postgresql://")  # plain: no +driver
    made = optuna.create_study(study_name=name, storage=open_storage(POSTGRES))  # hwnas's way
    made.enqueue_trial({"x": 1.0})
    try:
        study = optuna.load_study(study_name=name, storage=POSTGRES)  # Optuna's (and optuna-dashboard's) way
        assert study.trials[0].params == {} and study.trials[0].system_attrs["fixed_params"] == {"x": 1.0}
    finally:
        optuna.delete_study(study_name=name, storage=POSTGRES)


def test_an_unreachable_storage_names_the_host_and_the_reason():
    pytest.importorskip("psycopg")
    with pytest.raises(SearchError) as e:
        open_storage("postgresql://alice:s3cret@127.0.0.1:1/db")
    assert "host 127.0.0.1" in str(e.value) and "refused" in str(e.value) and "s3cret" not in str(e.value)


def test_a_missing_driver_names_the_extra():
    if importlib.util.find_spec("pymysql") is not None:
        pytest.skip("pymysql is installed")
    with pytest.raises(SearchError, match=r"pip install 'hwnas\[mysql\]'"):
        open_storage("mysql://bob@127.0.0.1:1/db")
