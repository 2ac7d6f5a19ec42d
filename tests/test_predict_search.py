"""Predictor-guided searches end to end: NARS / GP-BO / Optuna on a table space, resuming, several devices,
bad input through the CLI (one line, exit 2), and a model-space search that exports a winner to ONNX."""

import json

import numpy as np
import pandas as pd
import pytest
from test_predict_fixtures import BENCH_TABLE, InProcess, profiled_devices, tiny_space_file  # noqa: F401

from nas.search.blackbox.history import History
from nas.search.predict.optuna_search import OptunaConfig, open_job, run_optuna
from nas.search.blackbox.problem import TableProblem, parse_constraint
from nas.search.blackbox.study import claims, evaluated_trials
from nas.search.blackbox.worker import run_worker
from nas.search.predict.nars import NarsConfig, run_nars
from nas.search.predict.table_space import TableEvaluator, TableSpace

FAST_MLP = {"epochs": 120, "ensemble": 1, "pretrain_epochs": 10}
TABLE_ARGS = ["--objective", "val_accuracy", "--latency-column", "latency_ms", "--proxy", "macs", "--proxy",
              "params", "--metric", "test_accuracy", "--metric", "predicted_latency_ms", "--metric",
              "train_seconds"]


def _problem(rows=None):
    table = TableSpace(BENCH_TABLE, "val_accuracy", ["latency_ms"], proxy_columns=["macs", "params"],
                       metric_columns=["test_accuracy", "predicted_latency_ms", "train_seconds"])
    return TableProblem(table, TableEvaluator(table))


class CountingEvaluator:
    """Wraps the table lookup; raises KeyboardInterrupt after ``stop_after`` lookups (a killed search)."""

    def __init__(self, inner, stop_after=None):
        self.inner, self.stop_after, self.calls = inner, stop_after, 0

    def evaluate(self, row):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return self.inner.evaluate(row)


def _median_constraint(problem):
    return parse_constraint(f"{np.median(problem.table.values['latency_ms']):.4f}", problem.devices)


@pytest.mark.parametrize("predictor", ["mlp", "gp"])
def test_nars_and_gp_bo_spend_the_budget_and_respect_the_constraint(predictor):
    problem = _problem()
    c = _median_constraint(problem)
    counting = CountingEvaluator(problem.evaluator)
    problem.evaluator = counting
    history = History(problem, 24, [c])
    result = run_nars(problem, [c], history, NarsConfig(budget=24, predictor=predictor, init=8, batch=4,
                                                        predictor_kwargs=FAST_MLP if predictor == "mlp" else
                                                        {"iterations": 40}))
    assert history.used == 24 == counting.calls  # every lookup counted, none repeated
    assert len(set(r["key"] for r in history.rows)) == 24
    phases = [r["phase"] for r in history.rows]
    assert phases[:8] == ["init"] * 8 and phases[-1] == "evolution"
    rounds = [r for r in history.rows if r["phase"].startswith("round")]
    assert all(np.isfinite(r["predicted_val_accuracy"]) for r in rounds)
    assert all(r["feasible[" + c.label + "]"] for r in history.rows)  # the pool was filtered by latency
    assert result.rounds and np.isfinite(result.heldout_tau) and -1 <= result.cv_tau <= 1
    best = history.best_under(c)
    assert history.rows[best]["val_accuracy"] == max(r["val_accuracy"] for r in history.rows)
    if predictor == "gp":
        assert all(np.isfinite(r["predicted_val_accuracy_std"]) for r in rounds)


def test_a_killed_nars_search_resumes_without_repeating_evaluations(tmp_path):
    config = NarsConfig(budget=16, init=6, batch=4, predictor_kwargs=FAST_MLP)
    full = _problem()
    c = _median_constraint(full)
    reference = History(full, 16, [c])
    run_nars(full, [c], reference, config)

    path = tmp_path / "history.csv"
    killed = _problem()
    killed.evaluator = CountingEvaluator(killed.evaluator, stop_after=9)
    with pytest.raises(KeyboardInterrupt):
        run_nars(killed, [c], History(killed, 16, [c], path), config)
    assert len(pd.read_csv(path)) == 9

    resumed = _problem()
    counting = CountingEvaluator(resumed.evaluator)
    resumed.evaluator = counting
    history = History(resumed, 16, [c], path)
    run_nars(resumed, [c], history, config)
    assert counting.calls == 7  # only what the killed run had not done
    assert [r["key"] for r in history.rows] == [r["key"] for r in reference.rows]
    assert [r["replayed"] for r in history.rows] == [True] * 9 + [False] * 7
    assert len(pd.read_csv(path)) == 16


def test_optuna_study_resumes_to_a_larger_budget(tmp_path):
    """A killed worker's trial is recovered by Optuna's heartbeat (tests/test_distributed_search.py kills one);
    a rerun with a larger budget continues the same study to exactly that many evaluations."""
    problem = _problem()
    c = _median_constraint(problem)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cfg = OptunaConfig(budget=6, storage=url)
    run_optuna(problem, [c], cfg)
    study = open_job(cfg, problem, [c]).study
    assert len(claims(study)) == 6 and len(evaluated_trials(study)) == 6
    # a worker whose search is gone stops at once instead of running on as an orphan
    orphan = run_worker(open_job(OptunaConfig(budget=10, storage=url), problem, [c]), stop=lambda: True)
    assert orphan["trials"] == 0 and len(evaluated_trials(study)) == 6
    run_worker(open_job(OptunaConfig(budget=10, storage=url), problem, [c]))
    assert len(evaluated_trials(study)) == 10


def test_optuna_on_a_table_never_spends_a_proposal_on_a_known_row(tmp_path):
    """A sampler proposal that is not an untaken row is repaired: the nearest untaken row is enqueued as its own
    trial, so that every evaluation is a new row (and its params are that row's); a budget beyond the table stops
    when every row is evaluated."""
    frame = pd.read_csv(BENCH_TABLE).head(30)
    small = tmp_path / "small.csv"
    frame.to_csv(small, index=False)
    table = TableSpace(small, "val_accuracy", ["latency_ms"])
    problem = TableProblem(table, CountingEvaluator(TableEvaluator(table)))
    cfg = OptunaConfig(budget=table.rows + 10, storage=f"sqlite:///{tmp_path / 's.db'}", sampler="tpe")
    stats = run_optuna(problem, [], cfg)
    study = open_job(cfg, problem, []).study
    keys = [t.user_attrs["key"] for t in evaluated_trials(study)]
    assert len(keys) == len(set(keys)) == table.rows == problem.evaluator.calls
    assert stats["evaluations"] == table.rows and not stats["workers"][0]["gave_up"]
    assert not any("cached_from" in t.user_attrs for t in study.get_trials(deepcopy=False))
    # with a bound, only the rows that meet it are proposed, each once
    bound = parse_constraint(f"{np.median(table.values['latency_ms']):.4f}", problem.devices)
    meets = int(bound.feasible(table.latency_ms(np.arange(table.rows)), problem.devices).sum())
    cfg = OptunaConfig(budget=table.rows, storage=f"sqlite:///{tmp_path / 'b.db'}", sampler="nsga2")
    stats = run_optuna(problem, [bound], cfg)
    trials = evaluated_trials(open_job(cfg, problem, [bound]).study)
    assert len({t.user_attrs["key"] for t in trials}) == len(trials) == meets
    assert all(t.user_attrs["violation_ms"] == 0 for t in trials)
    assert stats["workers"][0]["infeasible"] == 0 and not stats["workers"][0]["gave_up"]


def _one_line_error(r, *fragments):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_cli_table_search_writes_the_run_directory_for_several_devices(tmp_path, capsys, monkeypatch):
    cli = InProcess(capsys, monkeypatch)
    out = tmp_path / "run"
    med = np.median(pd.read_csv(BENCH_TABLE)["latency_ms"])
    args = ["search", "chamnet", "--space", f"table:{BENCH_TABLE}", "--objective", "val_accuracy",
            "--latency-column", "latency_ms", "--latency-column", "predicted_latency_ms", "--proxy", "macs",
            "--metric", "test_accuracy", "--metric", "params", "--metric", "train_seconds",
            "--target-ms", f"latency_ms={med:.4f}", "--target-ms", f"{med * 1.5:.4f}",
            "--budget", "12", "--init", "6", "--batch", "2", "--out", str(out), "--json"]
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)["chamnet"]
    assert report["evaluations"] == 12 and report["devices"] == ["latency_ms", "predicted_latency_ms"]
    for name in ("history.csv", "pareto.csv", "report.json", "pareto.png", "config.json"):
        assert (out / name).is_file(), name
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 12 and {"latency_ms[latency_ms]", "latency_ms[predicted_latency_ms]"} <= set(history)
    pareto = pd.read_csv(out / "pareto.csv")
    assert len(pareto) == 2 and pareto["found"].all()
    assert (pareto.loc[0, "latency_ms[latency_ms]"] <= med + 1e-9)
    assert (pareto.loc[1, ["latency_ms[latency_ms]", "latency_ms[predicted_latency_ms]"]] <= med * 1.5 + 1e-4).all()
    for w in report["winners"]:
        slug = w["constraint"].replace("=", "-").replace(",", "_")
        doc = json.loads((out / "best" / slug / "candidate.json").read_text())
        assert doc["metrics"]["val_accuracy"] == pytest.approx(w["val_accuracy"])
    # rerunning the finished run replays it: no new lookups, same history
    r2 = cli(*args)
    assert r2.returncode == 0, r2.stderr
    assert pd.read_csv(out / "history.csv")["key"].tolist() == history["key"].tolist()


def test_cli_bad_table_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    cli = InProcess(capsys, monkeypatch)
    bad = pd.read_csv(BENCH_TABLE).head(20)
    bad["val_accuracy"] = bad["val_accuracy"].astype(object)
    bad.loc[3, "val_accuracy"] = "n/a"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    _one_line_error(cli("search", "nars", "--space", f"table:{tmp_path / 'bad.csv'}", *TABLE_ARGS),
                    "metric column 'val_accuracy', row 4 (line 5): 'n/a' is not a number")


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    run = InProcess(capsys, monkeypatch)
    _one_line_error(run("search", "nars", "--space", f"table:{BENCH_TABLE}", "--objective", "accuracy_top1",
                        "--latency-column", "latency_ms"), "no column 'accuracy_top1'")
    _one_line_error(run("search", "nars", "--space", f"table:{BENCH_TABLE}", *TABLE_ARGS, "--target-ms",
                        "0.0001", "--out", str(tmp_path / "r1")), "no candidate meets the latency constraint 0.0001ms")
    assert not (tmp_path / "r1").exists()  # nothing half-written
    _one_line_error(run("search", "optuna", "--space", f"table:{BENCH_TABLE}", *TABLE_ARGS, "--storage",
                        "sqlite:////nonexistent-dir/x/study.db", "--out", str(tmp_path / "r2")),
                    "cannot open the Optuna storage 'sqlite:////nonexistent-dir/x/study.db'")
    _one_line_error(run("search", "optuna", "--space", f"table:{BENCH_TABLE}", *TABLE_ARGS, "--storage",
                        "nosuchdb://user@host/db", "--out", str(tmp_path / "r3")), "cannot open the Optuna storage")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()
    _one_line_error(run("search", "chamnet", "--space", f"table:{BENCH_TABLE}", *TABLE_ARGS, "--budget", "0"),
                    "--budget must be at least 1")
    _one_line_error(run("search", "nars", "--space", "fbnet", "--device", "no-such-device", "--tables-dir",
                        str(tmp_path)), "no-such-device")
    _one_line_error(run("search", "nars", "--space", "fbnet", "--device", "no-such-device", "--precision", "fp8",
                        "--out", str(tmp_path / "r4")), "--precision 'fp8'")
    _one_line_error(run("worker", "--storage", f"sqlite:///{tmp_path / 'w.db'}", "--precision", "16-mixed",
                        "--accelerator", "cpu"), "16-mixed needs a CUDA GPU")
    assert not (tmp_path / "r4").exists() and not (tmp_path / "w.db").exists()


def test_cli_model_space_search_exports_the_winner(tmp_path, capsys, monkeypatch, tiny_space_file,
                                                  profiled_devices):
    cli = InProcess(capsys, monkeypatch)
    tables, _ = profiled_devices
    out = tmp_path / "run"
    r = cli("search", "nars", "--space", str(tiny_space_file), "--device", "dev-a", "--device", "dev-b",
            "--tables-dir", str(tables), "--budget", "3", "--init", "2", "--pool", "64", "--generations", "3",
            "--population", "64", "--precision", "bf16", "--threads", "1", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)["nars"]
    assert report["evaluations"] == 3 and report["devices"] == ["dev-a", "dev-b"]
    assert report["training"]["precision"] == "bf16" and report["training"]["threads"] == 1
    assert report["constraints_chosen_automatically"] and len(report["constraints"]) == 3
    export = report["export"][0]
    assert (out / "model.onnx").is_file() and (out / "arch.json").is_file() and (out / "recipe.json").is_file()
    assert export["onnx_max_abs_diff"] < 1e-4 and export["measured_ms"] > 0 and export["predicted_ms"] > 0
    assert 0.0 <= export["accuracy"] <= 1.0
    assert set(export["predicted_ms_per_device"]) == {"dev-a", "dev-b"}
    recipe = json.loads((out / "recipe.json").read_text())
    assert 0.003 <= recipe["lr"] <= 0.03 and recipe["batch_size"] in (64, 128)
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 3 and (history["m:val_accuracy"] >= 0).all()
    assert {"latency_ms[dev-a]", "latency_ms[dev-b]", "m:macs", "m:params"} <= set(history)
