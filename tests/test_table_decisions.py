"""Table spaces: a result column never silently becomes a decision (issue 17, part 3)."""

from __future__ import annotations

import json

import pandas as pd
from typer.testing import CliRunner

from cli.main import app
from nas.search.predict.table_space import TableSpace
from tests.test_predict_fixtures import BENCH_TABLE


def _space(tmp_path, frame, **kw):
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    return TableSpace(path, "val_accuracy", ["latency_ms"], **kw)


def test_default_rule_keeps_results_and_other_devices_out_of_the_decisions(tmp_path):
    frame = pd.read_csv(BENCH_TABLE).head(40)
    frame["pixel4_latency_ms"] = frame["latency_ms"] * 3  # another device's latency column
    t = _space(tmp_path, frame)
    decisions = {d.name for d in t.decisions} | set(t.fixed)
    for result in ("test_accuracy", "train_seconds", "macs", "params", "predicted_latency_ms", "pixel4_latency_ms",
                   "train_steps"):
        assert result not in decisions
        assert t.decision_rule["not_decisions"][result] == "result-like name"
    assert {"op_0", "channels_0", "lr", "epochs", "weight_decay", "label_smoothing", "batch_size"} <= decisions
    assert t.decision_rule["rule"] == "inferred"
    assert "not decisions (result-like): " in t.decision_line() and "test_accuracy" in t.decision_line()


def test_named_decisions_are_the_only_ones(tmp_path):
    t = _space(tmp_path, pd.read_csv(BENCH_TABLE).head(40), decision_columns=["op_0", "lr"])
    assert [d.name for d in t.decisions] == ["op_0", "lr"]
    assert t.decision_rule["rule"] == "--decision"


def test_the_rule_outcome_is_printed_and_recorded_in_config_json(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["search", "chamnet", "--space", f"table:{BENCH_TABLE}", "--objective",
                                      "val_accuracy", "--latency-column", "latency_ms", "--target-ms", "0.08",
                                      "--budget", "4", "--pool", "64", "--generations", "2", "--population", "32",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "decisions (inferred): op_0" in result.output and "test_accuracy" in result.output
    recorded = json.loads((out / "config.json").read_text())["table_decisions"]
    assert "test_accuracy" not in recorded["decisions"] and "lr" in recorded["decisions"]
