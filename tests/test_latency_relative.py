"""Reference-relative timing (``nas.latency.relative``: validate, check and a search's final measurement on one code
path) and ``hwnas latency adapt`` (``nas.latency.adapt``), on tiny spaces with timings made exact."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from test_dnas_support import TINY, one_torch_thread, tiny_space, write_space  # noqa: F401  (autouse fixture)
from test_latency_support import FAST, run_hwnas
from typer.testing import CliRunner

from nas.arch.opkey import OpKey
from nas.errors import LatencyTableError
from nas.latency.adapt import RIDGE_GRID, Adaptation, Measured, adapt_device, block_terms, fit_adaptation
from nas.latency.calibrate import calibrate, export_arch
from nas.latency.device import Device
from nas.latency.drift import check_drift, measure_shipped
from nas.latency.measurement import measuring_device
from nas.latency.model import LatencyModel
from nas.latency.profile import key_is_identity, profile_items, space_layer_keys, space_profile_items
from nas.latency.relative import SpeedFit
from nas.latency.table import DeviceManifest, LatencyTable
from nas.latency.timing import LatencyStats
from nas.latency.validate import validate
from nas.run import RunDir

DEVICE = "rel-dev"


def stats(ms: float) -> LatencyStats:
    return LatencyStats(ms, 1.02 * ms, ms, 0.0, 20, 0.02, True)


class FileClock:
    """Whole-model timings made exact: a file takes ``factor * (its size in bytes / 1e4)`` ms. Models of one arch
    export to files of one size, so a model timed at calibration and again later takes exactly ``factor`` x."""

    def __init__(self, monkeypatch):
        self.factor = 1.0
        monkeypatch.setattr(Device, "time_files", lambda device, paths, timing=None, on_round=None:
                            [stats(self.factor * os.path.getsize(p) / 1e4) for p in paths])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("relative")
    space = tiny_space(write_space(folder, TINY, "tiny"))
    profile_items(Device(device_id=DEVICE), space_profile_items(space), tables_dir=folder / "tables", timing=FAST)
    return {"space": space, "folder": folder}


# ---- the arithmetic ------------------------------------------------------------------------------------------------
def test_a_uniform_slowdown_is_read_as_that_drift_and_divided_out():
    fit = SpeedFit.fit([1.0, 3.0, 10.0, 30.0], [1.2, 3.6, 12.0, 36.0])
    assert fit.b == pytest.approx(0.0, abs=1e-12) and fit.speed(5.0) == pytest.approx(1.2)
    assert fit.relative_ms([2.4, 60.0]) == pytest.approx([2.0, 50.0])  # beyond the references: clamped, not extrapolated


def test_a_slowdown_that_grows_with_size_is_followed_across_sizes():
    expected = np.array([0.5, 2.0, 8.0, 32.0])
    speed = lambda ms: np.exp(0.05 + 0.04 * np.log(ms))  # noqa: E731  small models slow down less than large ones
    fit = SpeedFit.fit(expected, expected * speed(expected))
    assert fit.b == pytest.approx(0.04) and fit.a == pytest.approx(0.05)
    assert fit.relative_ms(4.0 * speed(4.0)) == pytest.approx(4.0, rel=1e-9)  # its size at calibration, recovered
    noisy = SpeedFit.fit(expected, expected * np.array([1.10, 1.12, 1.09, 1.11]))  # a slope within the noise
    assert noisy.b == 0.0 and noisy.speed(1.0) == pytest.approx(np.exp(np.mean(np.log([1.10, 1.12, 1.09, 1.11]))))
    assert SpeedFit.fit([2.0, 2.5], [2.2, 2.75]).b == 0.0  # too narrow a span to fit a slope


def test_a_device_slowed_by_a_known_factor_reports_it_as_drift_and_an_unchanged_relative_latency(
        tiny, tmp_path, monkeypatch):
    clock = FileClock(monkeypatch)
    tables = tiny["folder"] / "tables"
    shutil.copytree(tables, tmp_path / "tables")
    tables = tmp_path / "tables"
    space = tiny["space"]
    calibrate(Device(device_id=DEVICE), space, models=6, tables_dir=tables, timing=FAST)  # keeps 5 reference models
    lm = LatencyModel.load(DEVICE, tables)
    before = validate(lm, space, RunDir(tmp_path / "v1", {}), samples=6, seed=3, timing=FAST)
    clock.factor = 1.25  # the machine now runs 25% slower
    check = check_drift(lm.table)
    assert check.drift_pct == pytest.approx(25.0) and len(check.models) >= 3
    after = validate(lm, space, RunDir(tmp_path / "v2", {}), samples=6, seed=3, timing=FAST)
    assert after["drift_pct"] == pytest.approx(25.0) and after["models_drift_pct"] == pytest.approx(
        1.25 * (1 + before["models_drift_pct"] / 100) * 100 - 100)
    assert after["mean_bias_pct"] == pytest.approx(before["mean_bias_pct"])  # relative times: unchanged
    assert after["raw_mean_bias_pct"] != pytest.approx(before["raw_mean_bias_pct"])
    first = json.loads((tmp_path / "v1" / "report.json").read_text())
    assert first["mean_bias_pct"] == before["mean_bias_pct"]
    model = tmp_path / "shipped.onnx"
    export_arch(space, space.fixed_arch(), model)
    shipped = measure_shipped(model, measuring_device(lm.device), table=lm.table)
    assert shipped.drift_pct == pytest.approx(25.0) and shipped.drift_models == len(check.models)
    assert shipped.p50_ms == pytest.approx(1.25 * os.path.getsize(model) / 1e4)
    assert shipped.relative_ms == pytest.approx(os.path.getsize(model) / 1e4)
    from cli.main import app

    out = CliRunner().invoke(app, ["latency", "check", DEVICE, "--tables-dir", str(tables), "--model", str(model),
                                   "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["model"]["relative_ms"] == pytest.approx(os.path.getsize(model) / 1e4)


# ---- adapt ---------------------------------------------------------------------------------------------------------
def test_adaptation_recovers_a_device_that_is_a_known_transform_of_the_source(tiny):
    lm = LatencyModel.load(DEVICE, tiny["folder"] / "tables")
    space = tiny["space"]
    rng = np.random.default_rng(0)
    truth = np.array([0.0, 2.0, 0.0, 0.5, 3.0, 0.01])  # base, then a, b, c, d, e of TERMS: B is 2x A plus more
    measured = []
    for i in range(12):
        keys = lm.arch_keys(space, space.sample(rng))
        terms = np.concatenate([[1.0], np.sum([block_terms(lm, k) for k in keys], axis=0)])
        measured.append(Measured(f"m{i}", {}, keys, float(terms @ truth)))
    fit = fit_adaptation(lm, measured)
    # exact up to the non-negative least squares' tolerance, which a table profiled on a loaded machine (its terms
    # less well conditioned) moves to ~2e-5 % (a wrong fit is off by percents)
    assert fit.fit_mape < 1e-3 and fit.weights["net_a_ms"] == pytest.approx(2.0, rel=1e-3)
    assert fit.weights["blocks"] == pytest.approx(0.01, rel=1e-2)
    with pytest.raises(LatencyTableError, match="at least 3 whole models"):
        fit_adaptation(lm, measured[:2])


def test_adaptation_learns_a_ratio_per_op_where_ops_slow_down_unevenly(tiny):
    # as with graph optimisation off: some ops run 3x their time on A, others 1.5x; one shared ratio cannot fit that
    lm = LatencyModel.load(DEVICE, tiny["folder"] / "tables")
    space = tiny["space"]
    rng = np.random.default_rng(1)
    ops = sorted({k.op for k in space_layer_keys(space) if not key_is_identity(k)})
    ratio = {op: 3.0 if i % 2 else 1.5 for i, op in enumerate(ops)}

    def device_b(keys):
        return 0.01 + sum(ratio[k.op] * block_terms(lm, k)[0] for k in keys if not key_is_identity(k))

    def predicted(fit, keys):
        return fit.base_ms + sum(fit.block_ms(block_terms(lm, k), k.op) for k in keys)

    archs = [lm.arch_keys(space, space.sample(rng)) for _ in range(40)]
    measured = [Measured(f"m{i}", {}, keys, float(device_b(keys))) for i, keys in enumerate(archs[:20])]
    fit = fit_adaptation(lm, measured)
    assert fit.ridge < max(RIDGE_GRID)  # leave-one-out chose separate ratios over one shared
    errors = [abs(predicted(fit, keys) / device_b(keys) - 1) for keys in archs[20:]]  # models it did not see
    assert max(errors) < 0.03
    shared = Adaptation(fit.base_ms, fit.weights, 20, 0.0, 0.0)  # the same fit's mean ratio for every op
    assert np.mean(errors) < 0.5 * np.mean([abs(predicted(shared, keys) / device_b(keys) - 1) for keys in archs[20:]])


def test_adapt_writes_a_device_every_search_can_use_and_refuses_to_overwrite_or_profile_it(tiny, tmp_path):
    tables = tmp_path / "tables"
    shutil.copytree(tiny["folder"] / "tables", tables)
    source = LatencyModel.load(DEVICE, tables)
    space = tiny["space"]
    measured = [Measured(f"m{i}", {}, source.arch_keys(space, a, 8), 0.5 + 0.1 * i)
                for i, a in enumerate([space.fixed_arch()] + [space.sample(np.random.default_rng(i)) for i in range(4)])]
    target = DeviceManifest.for_this_machine("b-int8", graph_optimization="basic")
    summary = adapt_device(source, target, space, measured, bits=8, tables_dir=tables)
    lm = LatencyModel.load("b-int8", tables, allow_fallback=False)
    keys = [k for k in space_layer_keys(space) if not key_is_identity(k)]
    assert summary["rows"] == len(lm.table) and all(k.with_bits(8) in lm.table for k in keys)
    assert all(row["count"] == 0 for row in lm.table.rows.values())  # not measured alone: marked
    pred = [lm.predict(space, a, bits=8) for a in [space.fixed_arch()]]
    assert pred[0] > 0 and lm.table.manifest.notes["adapted_from"] == DEVICE
    with pytest.raises(LatencyTableError, match="already exists"):
        adapt_device(source, target, space, measured, bits=8, tables_dir=tables)
    with pytest.raises(LatencyTableError, match="adapted from device"):
        profile_items(Device(optimization="basic", device_id="b-int8"), space_profile_items(space), tables_dir=tables,
                      timing=FAST)
    with pytest.raises(LatencyTableError, match="at most 20"):
        adapt_device(source, DeviceManifest.for_this_machine("c"), space, measured * 5, tables_dir=tables)


def test_cli_adapt_measures_here_and_bad_inputs_are_one_line(tiny, tmp_path, monkeypatch, capsys):
    tables = tmp_path / "tables"
    shutil.copytree(tiny["folder"] / "tables", tables)
    space = ["--space", str(tiny["folder"] / "tiny.yaml"), "--resolution", "16", "--classes", "10",
             "--in-channels", "1", "--tables-dir", str(tables)]
    code, out, err = run_hwnas(monkeypatch, capsys, "latency", "adapt", "--from", DEVICE, "--device", "b-none", *space,
                           "--models", "4", "--optimization", "none", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["fitted_on"] == 4 and summary["adapted_from"] == DEVICE
    table = LatencyTable.open("b-none", tables)
    assert table.manifest.graph_optimization == "none" and len(check_drift(table).models) >= 3  # measured: refs
    for args, message in ((("--models", "21"), "--models must be 3 to 20"),
                          (("--device", "b-none"), "already exists"),
                          (("--from", "nope"), "unknown device 'nope'")):
        options = {"--from": DEVICE, "--device": "b-other", "--models": "4", **dict(zip(args[::2], args[1::2]))}
        code, out, err = run_hwnas(monkeypatch, capsys, "latency", "adapt", *[x for kv in options.items() for x in kv],
                               *space)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_device_times_models_at_its_batch():
    from nas.latency.remote_measure import random_feeds

    class Input:
        name, type, shape = "input", "tensor(float)", ["batch", 3, 8, 8]

    class Session:
        def get_inputs(self):
            return [Input()]

    assert random_feeds(Session(), batch=8)["input"].shape == (8, 3, 8, 8)
    with pytest.raises(LatencyTableError, match="batch must be >= 1"):
        Device(batch=0)
    assert OpKey("conv_k3", 1, 8, 2, 16).with_bits(8).bits == 8
