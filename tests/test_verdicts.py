"""Verdicts on what ships (judged on the measured latency of model.onnx) and drift (``hwnas latency check``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_dnas_support import (
    FAST,
    TINY,
    all_archs,
    digits_npz,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    profile_tiny,
    tiny_space,
    write_space,
)
from typer.testing import CliRunner

from nas.errors import LatencyTableError
from nas.latency.calibrate import calibrate
from nas.latency.device import Device
from nas.latency.drift import check_drift, read_references, reference_dir
from nas.latency.measurement import Measurement, measuring_device
from nas.latency.model import LatencyModel
from nas.latency.table import LatencyTable
from nas.latency.timing import LatencyStats
from nas.search.dnas.search import SupernetSearchSettings
from nas.search.dnas.strategy import SearchJob, SupernetStrategy
from nas.search.report import SharedReport, build_report, latency_remedies
from nas.search.strategy import open_run
from nas.train.recipe import Recipe

DEVICE = "verdict-dev"


def stats(p50: float, p90: float | None = None, stable: bool = True) -> LatencyStats:
    p90 = p50 * 1.02 if p90 is None else p90
    return LatencyStats(p50, p90, p50, 0.0, 50, (p90 - p50) / p50, stable)


def _report(measured: float, target: float | None = 1.0, predicted: float = 0.9, **kw) -> dict:
    m = kw.pop("measurement", Measurement.from_stats(stats(measured)))
    return build_report("dnas", device=DEVICE, accuracy=0.9, predicted_ms=predicted, measured_ms=measured,
                        onnx_max_abs_diff=0.0, target_ms=target, detail={}, measurement=m,
                        remedies=latency_remedies(DEVICE, model_path="run/model.onnx",
                                                  reprofile="hwnas latency profile --space s --device verdict-dev"),
                        **kw)


# ---- the verdict (nas.search.report) ----
def test_a_measurement_over_the_bound_is_not_within_target_and_names_the_options():
    report = _report(1.68, target=1.0, predicted=0.9)
    SharedReport.model_validate(report)
    assert report["within_target"] is False and report["judged_on"] == "measured"
    assert report["predicted_ms"] == 0.9 and report["measured_ms"] == 1.68
    [warning] = report["warnings"]
    assert "breaks the target 1 ms" in warning
    assert "hwnas latency check --device verdict-dev --model run/model.onnx" in warning  # re-measure quietly
    assert "tighten the target to about 0.595 ms" in warning
    assert "hwnas latency profile --space s --device verdict-dev" in warning  # re-profile


def test_the_final_printed_line_says_the_bound_is_broken_and_names_the_options():
    from cli.app import verdict_line

    line = verdict_line(_report(1.68, target=1.0, predicted=0.9))
    assert line.startswith("verdict: measured 1.68 ms, predicted 0.9 ms: OVER the target 1 ms")
    assert "re-measure quietly, tighten the target, or re-profile" in line and "1 warning above" in line
    assert "within the target 1 ms" in verdict_line(_report(0.9, target=1.0))


def test_the_prediction_meeting_the_target_does_not_make_a_slow_model_pass():
    assert _report(1.05, target=1.0, predicted=0.5)["within_target"] is False
    ok = _report(0.95, target=1.0, predicted=1.2)
    assert ok["within_target"] is True and ok["warnings"] == []
    assert _report(0.95, target=None)["within_target"] is None


def test_an_unstable_measurement_says_so_instead_of_blaming_the_model():
    wide = _report(0.8, measurement=Measurement.from_stats(stats(0.8, p90=1.2)))
    assert wide["within_target"] is True and wide["measurement"]["unstable"] is True
    assert any(w.startswith("measurement unstable") and "quiet machine" in w for w in wide["warnings"])
    unset = _report(1.5, measurement=Measurement.from_stats(stats(1.5, stable=False)))
    assert any(w.startswith("measurement unstable") and "no stable median" in w for w in unset["warnings"])
    assert any("unstable, so re-measure first" in w for w in unset["warnings"])
    assert _report(0.8)["measurement"]["unstable"] is False


def test_a_drift_over_five_percent_warns_with_the_recalibrate_command():
    m = Measurement.from_stats(stats(0.8))
    m.drift_pct, m.drift_models = 7.5, 3
    report = _report(0.8, measurement=m)
    assert report["drift_pct"] == 7.5
    assert any("+7.5%" in w and "hwnas latency check --device verdict-dev --recalibrate" in w
               for w in report["warnings"])
    m.drift_pct = 3.0
    assert _report(0.8, measurement=m)["warnings"] == []


def test_a_model_timed_away_from_its_device_is_judged_on_the_prediction():
    m = Measurement.from_stats(stats(2.0), measuring_device(Device(device_id="phone", remote=True)))
    report = _report(2.0, target=1.0, predicted=0.9, measurement=m)
    assert report["measurement"]["on_device"] is False and "measured elsewhere" in report["measurement"]["note"]
    assert report["within_target"] is True and report["judged_on"] == "predicted"
    assert any("judged on the prediction" in w for w in report["warnings"])


def test_a_target_that_is_not_a_latency_keeps_its_own_verdict():
    met = _report(2.0, target=None, within_target=True)
    assert met["within_target"] is True and met["judged_on"] == "size" and met["warnings"] == []
    assert _report(2.0, target=None, within_target=False)["warnings"] == ["the size target is not met"]
    with pytest.raises(ValueError, match="judged on the measurement"):
        _report(2.0, target=1.0, within_target=True)


# ---- drift (nas.latency.drift, hwnas latency check) ----
@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """The tiny space profiled and calibrated (4 whole models) once for the module."""
    folder = tmp_path_factory.mktemp("verdicts")
    path = write_space(folder, TINY, "tiny")
    space = tiny_space(path)
    profile_tiny(space, DEVICE, folder / "tables")
    calibrate(Device(device_id=DEVICE), space, models=4, tables_dir=folder / "tables", timing=FAST)
    return {"path": path, "space": space, "tables": folder / "tables", "digits": digits_npz(folder)}


def _copy_tables(calibrated, tmp_path) -> Path:
    tables = tmp_path / "tables"
    shutil.copytree(calibrated["tables"], tables)
    return tables


def _slowdown(monkeypatch, table: LatencyTable, factor: float, other: LatencyStats | None = None) -> None:
    """Every reference model now runs ``factor`` x its calibrated time (other files: ``other``, else timed for
    real)."""
    calibrated_ms = {str(reference_dir(table.folder) / r["file"]): r["measured_ms"]
                     for r in read_references(table.folder)}
    real = Device.time_files

    def time_files(self, paths, timing=None, on_round=None):
        rest = [p for p in paths if str(p) not in calibrated_ms]
        measured = iter([other] * len(rest) if other is not None else real(self, rest, timing))
        return [stats(factor * calibrated_ms[str(p)]) if str(p) in calibrated_ms else next(measured) for p in paths]

    monkeypatch.setattr(Device, "time_files", time_files)


def test_calibration_keeps_reference_models_and_check_reports_a_drift(calibrated):
    table = LatencyTable.open(DEVICE, calibrated["tables"])
    refs = read_references(table.folder)
    assert len(refs) == 4 and all((reference_dir(table.folder) / r["file"]).is_file() for r in refs)  # 4 calibrated
    result = check_drift(table)
    assert len(result.models) == 4 and result.rescale == 1.0
    assert -90.0 < result.drift_pct < 900.0 and all(m["measured_ms"] > 0 for m in result.models)


def test_a_table_without_reference_models_says_how_to_get_them(tmp_path):
    path = write_space(tmp_path, TINY, "tiny")
    profile_tiny(tiny_space(path), "uncalibrated", tmp_path / "tables")
    table = LatencyTable.open("uncalibrated", tmp_path / "tables")
    with pytest.raises(LatencyTableError, match="no reference models .* rerun its calibration"):
        check_drift(table)


def test_a_simulated_slowdown_reads_plus_twenty_percent_and_recalibrate_brings_predictions_back(
        calibrated, tmp_path, monkeypatch):
    tables = _copy_tables(calibrated, tmp_path)
    table = LatencyTable.open(DEVICE, tables)
    space = calibrated["space"]
    before = [LatencyModel.load(DEVICE, tables).predict(space, a) for a in all_archs(space)[:5]]
    _slowdown(monkeypatch, table, 1.2)
    runner = CliRunner()
    from cli.main import app

    checked = runner.invoke(app, ["latency", "check", "--device", DEVICE, "--tables-dir", str(tables), "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["drift_pct"] == pytest.approx(20.0, abs=0.01)
    plain = runner.invoke(app, ["latency", "check", "--device", DEVICE, "--tables-dir", str(tables)])
    assert f"hwnas latency check --device {DEVICE} --recalibrate --tables-dir {tables}" in plain.stdout
    refit = runner.invoke(app, ["latency", "check", "--device", DEVICE, "--tables-dir", str(tables), "--recalibrate",
                                "--json"])
    assert refit.exit_code == 0, refit.output
    assert json.loads(refit.stdout)["correction"]["rescale"] == pytest.approx(1.2)
    after = [LatencyModel.load(DEVICE, tables).predict(space, a) for a in all_archs(space)[:5]]
    assert after == pytest.approx([1.2 * b for b in before])  # one global rescale
    corr = json.loads((table.folder / "correction.json").read_text())
    assert len(corr["history"]) == 1 and corr["history"][0]["correction"]["rescale"] == 1.0
    assert check_drift(table).drift_pct == pytest.approx(0.0, abs=1e-6)  # the slowdown is now expected


def test_a_search_checks_drift_and_judges_the_measured_model(calibrated, tmp_path, monkeypatch):
    tables = _copy_tables(calibrated, tmp_path)
    space = calibrated["space"]
    lm = LatencyModel.load(DEVICE, tables)
    lat = sorted(lm.predict(space, a) for a in all_archs(space))
    target = lat[len(lat) // 2]
    _slowdown(monkeypatch, LatencyTable.open(DEVICE, tables), 1.3, other=stats(3 * target, 6 * target, False))
    job = SearchJob(method="dnas", space=str(calibrated["path"]), device=DEVICE, dataset=f"npz:{calibrated['digits']}",
                    resolution=16, width=1.0, target_ms=target, tables_dir=str(tables),
                    settings=SupernetSearchSettings(epochs=2, warmup_epochs=1, target_ms=target, op_paths=1),
                    recipe=Recipe(epochs=1, batch_size=64))
    strategy = SupernetStrategy(job)
    prep = strategy.prepare()
    report = strategy.run(prep, open_run(strategy, prep, tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "report.json").read_text()) == report
    assert report["measured_ms"] == pytest.approx(3 * target) and report["within_target"] is False
    assert report["judged_on"] == "measured" and report["predicted_ms"] > 0
    assert report["drift_pct"] == pytest.approx(30.0, abs=0.01) and report["measurement"]["drift_models"] == 4
    # timed with the references: the shipped model at the calibration's speed, 1.3 x faster than now
    assert report["measurement"]["relative_ms"] == pytest.approx(3 * target / 1.3)
    text = "\n".join(report["warnings"])
    assert "breaks the target" in text and "measurement unstable" in text
    assert f"hwnas latency check --device {DEVICE} --recalibrate --tables-dir {tables}" in text
    assert f"--model {tmp_path / 'run' / 'model.onnx'}" in text
