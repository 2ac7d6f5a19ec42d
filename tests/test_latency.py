"""Latency tables: keys, profiling, resume, concurrent profilers, corruption checks, LatencyModel, CLI errors."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_latency_support import FAST, SMALL_SPACE  # noqa: E402

from nas.arch.opkey import OpKey
from nas.arch.space import load_space
from nas.errors import LatencyTableError
from nas.latency.calibrate import calibrate
from nas.latency.device import Device
from nas.latency.model import LatencyModel
from nas.latency.profile import item_onnx, key_is_identity, profile_items, space_layer_keys, space_profile_items
from nas.latency import remote_measure
from nas.latency.table import LatencyTable
from nas.latency.timing import TimingConfig


@pytest.fixture(scope="module")
def small_space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "small.yaml"
    path.write_text(SMALL_SPACE)
    return path


@pytest.fixture(scope="module")
def tiny_fbnet():
    return load_space("fbnet", resolution=32, width_multiplier=0.25, classes=10)


@pytest.fixture(scope="module")
def tiny_tables(tmp_path_factory, tiny_fbnet) -> Path:
    """fbnet at 32 px, width 0.25, profiled and calibrated once for the module."""
    root = tmp_path_factory.mktemp("tables")
    profile_items(Device(device_id="tiny"), space_profile_items(tiny_fbnet), tables_dir=root, timing=FAST)
    calibrate(Device(device_id="tiny"), tiny_fbnet, models=4, tables_dir=root, timing=FAST)
    return root


# ---- keys --------------------------------------------------------------------------------------------------
def test_space_keys_are_unique_and_cover_every_arch(tiny_fbnet):
    keys = space_layer_keys(tiny_fbnet)
    names = [str(k) for k in keys]
    assert len(names) == len(set(names))
    assert all(OpKey.parse(n) == k for n, k in zip(names, keys))
    items = space_profile_items(tiny_fbnet)
    assert not any(key_is_identity(i.key) for i in items)
    assert len(items) == len(keys) - sum(key_is_identity(k) for k in keys)
    rng = np.random.default_rng(0)
    for _ in range(20):
        arch_keys = LatencyModel.arch_keys(tiny_fbnet, tiny_fbnet.sample(rng))
        assert {str(k) for k in arch_keys} <= set(names)
    eight = space_profile_items(tiny_fbnet, bits=(32, 8))
    assert len(eight) == 2 * len(items) and {i.key.bits for i in eight} == {32, 8}


def test_channel_and_resolution_options_are_enumerated():
    space = load_space("fbnet_v2", resolution=32, width_multiplier=0.25, classes=10)
    names = {str(k) for k in space_layer_keys(space)}
    rng = np.random.default_rng(1)
    for _ in range(30):
        arch = space.sample(rng)
        assert {str(k) for k in LatencyModel.arch_keys(space, arch)} <= names
    assert len({k.resolution for k in space_layer_keys(space) if k.op == "conv_k3"}) == 3


# ---- profiling, model --------------------------------------------------------------------------------------
def test_profile_fills_table_and_model_is_additive(tiny_tables, tiny_fbnet):
    lm = LatencyModel.load("tiny", tables_dir=tiny_tables)
    assert len(lm.table) == len(space_profile_items(tiny_fbnet))
    manifest = json.loads((tiny_tables / "tiny" / "device.json").read_text())
    assert manifest["threads"] == 1 and manifest["provider"] == "CPUExecutionProvider"
    assert manifest["onnxruntime_version"] and manifest["cores"] >= 1
    assert lm.correction.fitted_on == 4 and lm.correction.scale > 0
    # at 32 px the session-call overhead dwarfs the blocks: the naive sum is far off, the correction is not
    assert lm.correction.raw_mape > 50 and lm.correction.fit_mape < lm.correction.raw_mape / 3
    arch = tiny_fbnet.sample(np.random.default_rng(3))
    keys = lm.arch_keys(tiny_fbnet, arch)
    pred = lm.predict_keys(keys)
    assert pred.estimated == [] and pred.ms > 0
    assert pred.ms == pytest.approx(lm.base_ms + sum(lm.block_cost_ms(k) for k in keys))
    assert lm.predict(tiny_fbnet, arch) == pytest.approx(pred.ms)
    for row in lm.table.rows.values():
        assert row["p50_ms"] > 0 and row["p90_ms"] >= row["p50_ms"] and row["count"] >= 6
    assert lm.block_cost_ms(OpKey("skip", 16, 16, 1, 8)) == 0.0


def test_correction_fits_each_op_family():
    from nas.latency.correction import CalibrationPoint, fit_correction

    rng = np.random.default_rng(0)
    points = []
    for _ in range(12):
        net = {"conv": float(rng.uniform(1, 5)), "token": float(rng.uniform(0.5, 3))}
        blocks = {"conv": int(rng.integers(10, 25)), "token": int(rng.integers(2, 12))}
        measured = 0.3 + 1.2 * net["conv"] + 0.8 * net["token"] + 0.01 * blocks["conv"] + 0.02 * blocks["token"]
        points.append(CalibrationPoint(net, blocks, net["conv"] + net["token"], measured))
    corr = fit_correction(points, default_base_ms=0.0)
    assert corr.family_scale == pytest.approx({"conv": 1.2, "token": 0.8}, rel=1e-6)
    assert corr.family_per_block_ms == pytest.approx({"conv": 0.01, "token": 0.02}, rel=1e-4, abs=1e-7)
    assert corr.base_ms == pytest.approx(0.3, rel=1e-4) and corr.fit_mape < 1e-6
    assert corr.block_ms(2.0, "token") == pytest.approx(0.8 * 2.0 + 0.02)
    only_conv = [CalibrationPoint({"conv": p.net_ms["conv"]}, {"conv": p.blocks["conv"]}, p.raw_ms,
                                  0.3 + 1.2 * p.net_ms["conv"]) for p in points]
    corr = fit_correction(only_conv, default_base_ms=0.0)
    assert corr.family_scale == {} and corr.scale == pytest.approx(1.2) and corr.block_ms(1.0, "token") == \
        pytest.approx(1.2 + corr.per_block_ms)
    assert fit_correction(only_conv[:1], default_base_ms=0.05).base_ms == 0.05  # too few models: not fitted


def test_the_correction_weighs_the_blocks_weights_where_they_cost_time_and_drift_scales_it(tmp_path):
    from nas.latency.correction import CalibrationPoint, Correction, PrecisionTerms, block_weight_mb, fit_correction
    from nas.latency.drift import DriftCheck, recalibrate

    rng = np.random.default_rng(1)
    points = []
    for _ in range(16):
        net, blocks = float(rng.uniform(0.05, 0.1)), int(rng.integers(12, 22))
        weights, reorders = float(rng.uniform(0.3, 1.0)), float(rng.integers(-30, -5))
        points.append(CalibrationPoint({"conv": net}, {"conv": blocks}, net, 0.01 + 1.2 * net + 0.0002 * blocks
                                       + 0.02 * weights + 0.0005 * reorders, reorders, weights))
    fitted = fit_correction(points, 0.0)
    assert fitted.per_weight_mb_ms == pytest.approx(0.02, rel=1e-4)
    assert fitted.per_reorder_ms == pytest.approx(0.0005, rel=1e-4) and fitted.fit_mape < 1e-6
    assert fitted.model_ms(points[0]) == pytest.approx(points[0].measured_ms, rel=1e-6)
    # weights that save time are noise: that term goes, the others are refitted without it
    noise = [CalibrationPoint(p.net_ms, p.blocks, p.raw_ms, 0.01 + 1.2 * p.net_ms["conv"] - 0.01 * p.weight_mb
                              + 0.0005 * p.reorders, p.reorders, p.weight_mb) for p in points]
    refitted = fit_correction(noise, 0.0)
    assert refitted.per_weight_mb_ms == 0.0 and refitted.per_reorder_ms > 0
    # too few models to spare: no weight term (a plain scale, per-block term and base on 5 models)
    assert fit_correction(points[:5], 0.0).per_weight_mb_ms == 0.0
    # a block's weights: its row's params at the key's bits; the op's own count where the row has none
    key = OpKey("ir_k3_e6", 16, 24, 1, 8)
    assert block_weight_mb(key, {"params": 4000}) == pytest.approx(0.016)
    assert block_weight_mb(OpKey("ir_k3_e6", 16, 24, 1, 8, bits=8), {"params": 4000}) == pytest.approx(0.004)
    assert block_weight_mb(key, None) > 0
    # `latency check --recalibrate` scales it with the rest (mixed precision's saved-weight term too); an older
    # correction.json loads without them
    fitted.precision = PrecisionTerms(1.1, 1.9, 0.001, 0.03, fitted_on=2)
    fitted.save(tmp_path)
    rescaled = recalibrate(SimpleNamespace(folder=tmp_path, device_id="d"),
                           DriftCheck("d", 10.0, 1.0, [], None, {}))
    assert rescaled.per_weight_mb_ms == pytest.approx(0.022, rel=1e-4)
    assert rescaled.precision.coef == pytest.approx((1.1, 1.9, 0.0011, -0.033), rel=1e-6)
    (tmp_path / "correction.json").write_text(json.dumps({"base_ms": 0.5, "scale": 1.1, "per_block_ms": 0.0}))
    assert Correction.load(tmp_path).per_weight_mb_ms == 0.0


def test_expected_ms_is_differentiable_and_matches_one_hot(tiny_tables, tiny_fbnet):
    lm = LatencyModel.load("tiny", tables_dir=tiny_tables)
    blocks = tiny_fbnet.resolve(tiny_fbnet.fixed_arch())[1:-2]
    costs = [lm.cost_tensor([OpKey(op, b.c_in, b.c_out, b.stride, b.resolution) for op in
                             tiny_fbnet.layers[b.index].candidates]) for b in blocks]
    logits = [torch.zeros(len(c), requires_grad=True) for c in costs]
    expected = lm.expected_ms([torch.softmax(l, 0) for l in logits], costs)
    expected.backward()
    assert all(l.grad is not None and l.grad.abs().sum() > 0 for l in logits)
    one_hot = [torch.nn.functional.one_hot(torch.tensor(0), len(c)).float() for c in costs]
    picked = sum(float(c[0]) for c in costs) + lm.base_ms
    assert float(lm.expected_ms(one_hot, costs)) == pytest.approx(picked, rel=1e-5)


def test_missing_keys_use_flagged_fallback_or_raise(tiny_tables):
    other = load_space("fbnet", resolution=40, width_multiplier=0.25, classes=10)
    arch = other.sample(np.random.default_rng(0))
    lm = LatencyModel.load("tiny", tables_dir=tiny_tables)
    keys = lm.arch_keys(other, arch)
    pred = lm.predict_keys(keys)
    missing = [k for k in keys if not key_is_identity(k) and k not in lm.table]
    assert missing and {str(k) for k in pred.estimated} == {str(k) for k in missing}
    assert all(lm.is_estimated(k) for k in missing) and pred.ms > 0
    assert any("estimated" in w for w in pred.warnings)
    strict = LatencyModel.load("tiny", tables_dir=tiny_tables, allow_fallback=False)
    with pytest.raises(LatencyTableError, match=r"no measurement for key .*r=\d+"):
        strict.predict(other, arch)


# ---- resume, concurrency, corruption -----------------------------------------------------------------------
def test_interrupted_profile_resumes_with_only_missing_keys(small_space_file, tmp_path):
    space = load_space(str(small_space_file))
    items = space_profile_items(space)

    def stop_after_four(done, total, note):
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        profile_items(Device(device_id="dev"), items, tables_dir=tmp_path, timing=FAST, on_progress=stop_after_four)
    assert len(LatencyTable.open("dev", tmp_path)) == 4
    counts = profile_items(Device(device_id="dev"), items, tables_dir=tmp_path, timing=FAST)
    assert (counts["measured"], counts["skipped"]) == (len(items) - 4, 4)
    again = profile_items(Device(device_id="dev"), items, tables_dir=tmp_path, timing=FAST)
    assert again["measured"] == 0 and len(LatencyTable.open("dev", tmp_path)) == len(items)


class WanderingClock:
    """Block timings made exact on a machine whose speed wanders: each run of a block advances a fake clock by
    ``speed * (its ONNX file's size / 1e4)`` ms, ``speed = schedule(group)`` for the ``group``-th group of
    blocks timed together (1: the call overhead's pass-through graphs, then the chunks)."""

    def __init__(self, monkeypatch, schedule):
        self.now, self.schedule, self.group = 0.0, schedule, 0
        monkeypatch.setattr(remote_measure, "time", SimpleNamespace(perf_counter=self.clock, thread_time=self.clock))
        monkeypatch.setattr(Device, "open", lambda device, model, feeds=None: SimpleNamespace(run=functools.partial(
            self.run, (len(model) if isinstance(model, bytes) else os.path.getsize(model)) / 1e4)))
        timed = remote_measure.time_interleaved

        def counted(runs, timing=None, on_round=None):
            self.group += 1
            return timed(runs, timing, on_round)

        monkeypatch.setattr(remote_measure, "time_interleaved", counted)

    def clock(self) -> float:
        return self.now

    def run(self, ms: float) -> None:
        self.now += self.schedule(self.group) * ms / 1e3


def test_a_slow_spell_over_a_chunk_lands_on_no_row(small_space_file, tmp_path, monkeypatch):
    space = load_space(str(small_space_file))
    items = [i for i in space_profile_items(space) if not key_is_identity(i.key)]
    sizes = {}
    for item in items:  # each block's own time at speed 1, from its file
        with tempfile.TemporaryDirectory() as tmp:
            sizes[str(item.key)] = os.path.getsize(item_onnx(item, Path(tmp)).path) / 1e4
    # groups: 1 the call overhead, 2-4 the first pass over three chunks of 4 keys, 5-7 the second pass; slow spells
    # over the whole second chunk in the first pass and over the first chunk in the second
    spells = {3: 1.7, 5: 1.5}
    WanderingClock(monkeypatch, lambda group: spells.get(group, 1.0))
    timing = TimingConfig(warmup=1, round_ms=1.0, min_runs=3, max_runs=3, min_rounds=2, max_rounds=6, patience=1)
    profile_items(Device(device_id="dev"), items, tables_dir=tmp_path, timing=timing, chunk=4)
    rows = LatencyTable.open("dev", tmp_path).rows
    assert len(rows) == len(items) == 10
    assert all(r["p50_ms"] == pytest.approx(sizes[k], rel=1e-9) for k, r in rows.items())
    # in one pass the spell lands on the second chunk's rows
    WanderingClock(monkeypatch, lambda group: spells.get(group, 1.0))
    profile_items(Device(device_id="one"), items, tables_dir=tmp_path, timing=timing, chunk=4, passes=1)
    slow = [k for k, r in LatencyTable.open("one", tmp_path).rows.items() if r["p50_ms"] > 1.5 * sizes[k]]
    assert len(slow) == 4


def test_an_item_contended_in_most_of_its_runs_keeps_its_uncontended_latency(monkeypatch):
    # a thread on a shared core runs 1.8x slower in two of every three runs, in every round: each round's median is
    # a contended figure, the item's latency must not be
    now = [0.0]
    monkeypatch.setattr(remote_measure, "time", SimpleNamespace(perf_counter=lambda: now[0],
                                                                 thread_time=lambda: now[0]))
    costs = [0.010, 0.020, 0.050]  # ms
    calls = [0] * len(costs)

    def run(i):
        calls[i] += 1
        now[0] += costs[i] * (1.0 if calls[i] % 3 == 0 else 1.8) / 1e3

    runs = [functools.partial(run, i) for i in range(len(costs))]
    timing = {"warmup": 1, "min_runs": 6, "max_runs": 6, "min_rounds": 4, "max_rounds": 4, "clock": "cpu"}
    stats = remote_measure.time_interleaved(runs, timing)
    assert [s["p50_ms"] for s in stats] == pytest.approx(costs, rel=1e-9)
    assert all(s["p90_ms"] == pytest.approx(1.8 * c) for s, c in zip(stats, costs))
    _, medians, _ = remote_measure.timed_rounds(runs, timing)  # what a median, even the lowest round's, reads
    assert all(min(m) >= 1.4 * c * (1 - 1e-9) for m, c in zip(medians, costs))


PROFILER = """
import sys
import time
from nas.latency.device import Device
from nas.latency.profile import profile_items, space_profile_items
from nas.latency.timing import TimingConfig
from nas.arch.space import load_space
space = load_space(sys.argv[1])
items = space_profile_items(space)
if sys.argv[3] == "reverse":
    items = items[::-1]
# rows are appended a segment at a time; a pause after each keeps the writer alive long enough to be killed mid-way
print(profile_items(Device(device_id="dev"), items, tables_dir=sys.argv[2], chunk=2,
                    on_progress=lambda done, total, note: time.sleep(0.1),
                    timing=TimingConfig(warmup=2, round_ms=1.0, min_runs=3, max_runs=10, min_rounds=2,
                                                       max_rounds=3, max_seconds=0.2))["measured"])
"""


def _profiler(space_file, root, order):
    scratch = Path(root) / "scratch"  # a killed profiler leaves its temporary folder here, not in /tmp
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    return subprocess.Popen([sys.executable, "-c", PROFILER, str(space_file), str(root), order],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_profilers_share_one_table_without_lost_or_torn_rows(small_space_file, tmp_path):
    space = load_space(str(small_space_file))
    n = len(space_profile_items(space))
    procs = [_profiler(small_space_file, tmp_path, order) for order in ("forward", "reverse")]
    measured = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        measured.append(int(out.strip().splitlines()[-1]))
    table = LatencyTable.open("dev", tmp_path)
    assert len(table) == n and sum(measured) == n  # every key once, nobody measured a key twice
    lines = (tmp_path / "dev" / "table.csv").read_text().splitlines()
    assert len(lines) == n + 1


def test_kill_9_then_rerun_measures_only_what_is_missing(small_space_file, tmp_path):
    space = load_space(str(small_space_file))
    n = len(space_profile_items(space))
    proc = _profiler(small_space_file, tmp_path, "forward")
    table_file = tmp_path / "dev" / "table.csv"
    deadline = time.time() + 60
    while time.time() < deadline and (not table_file.exists() or len(table_file.read_text().splitlines()) < 4):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    have = len(LatencyTable.open("dev", tmp_path))
    assert 3 <= have < n
    with open(table_file, "a") as f:  # a row torn by the kill: the next profiler cuts it off
        f.write("ir_k3_e3|cin=8|cout=16|s=2|r=16|t=0|b=32|x=,ir_k3")
    with pytest.raises(LatencyTableError, match="truncated"):
        LatencyTable.open("dev", tmp_path)
    counts = profile_items(Device(device_id="dev"), space_profile_items(space), tables_dir=tmp_path, timing=FAST)
    assert counts["measured"] == n - have and len(LatencyTable.open("dev", tmp_path)) == n


def test_corrupt_tables_and_bad_setups_are_named(tiny_tables, tmp_path, small_space_file):
    import shutil

    shutil.copytree(tiny_tables / "tiny", tmp_path / "bad")
    manifest = json.loads((tmp_path / "bad" / "device.json").read_text())
    (tmp_path / "bad" / "device.json").write_text(json.dumps({**manifest, "device_id": "bad"}))
    table_file = tmp_path / "bad" / "table.csv"
    lines = table_file.read_text().splitlines(keepends=True)
    table_file.write_text("".join(lines[:3]) + lines[3].replace(",1,", ",7,", 1) + "".join(lines[4:]))
    with pytest.raises(LatencyTableError, match=r"table.csv: corrupt table, line 4 fails its checksum"):
        LatencyModel.load("bad", tables_dir=tmp_path)
    table_file.write_text("not,a,table\n")
    with pytest.raises(LatencyTableError, match="header"):
        LatencyModel.load("bad", tables_dir=tmp_path)
    with pytest.raises(LatencyTableError, match=r"unknown device 'nope'"):
        LatencyModel.load("nope", tables_dir=tmp_path)
    space = load_space(str(small_space_file))
    with pytest.raises(LatencyTableError, match="not available"):
        profile_items(Device("NoSuchExecutionProvider", device_id="x"), space_profile_items(space),
                      tables_dir=tmp_path)
    assert not (tmp_path / "x").exists()
    with pytest.raises(LatencyTableError, match="another setup"):
        profile_items(Device(threads=2, device_id="tiny"), space_profile_items(space), tables_dir=tiny_tables)


def test_other_onnxruntime_version_warns_in_predictions(tiny_tables, tmp_path, tiny_fbnet):
    import shutil

    shutil.copytree(tiny_tables / "tiny", tmp_path / "old")
    path = tmp_path / "old" / "device.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "device_id": "old", "onnxruntime_version": "1.0.0"}))
    lm = LatencyModel.load("old", tables_dir=tmp_path)
    pred = lm.predict_keys(lm.arch_keys(tiny_fbnet, tiny_fbnet.fixed_arch()))
    assert any("onnxruntime 1.0.0" in w for w in pred.warnings)


# ---- CLI ---------------------------------------------------------------------------------------------------
def test_cli_show_predict_and_errors_exit_2_with_one_line(tiny_tables, monkeypatch, capsys):
    from cli.main import main

    monkeypatch.setenv("HWNAS_LATENCY_TABLES", str(tiny_tables))

    def hwnas(*args):
        monkeypatch.setattr(sys, "argv", ["hwnas", "latency", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main()
        out = capsys.readouterr()
        return exit_info.value.code or 0, out.out, out.err

    tiny = ("--resolution", "32", "--width", "0.25", "--classes", "10")
    code, out, err = hwnas("show", "tiny", "--space", "fbnet", *tiny, "--json")
    assert code == 0, err
    coverage = json.loads(out)["coverage"]
    assert coverage["estimated"] == 0 and coverage["fraction_measured"] == 1.0
    code, out, err = hwnas("predict", "fbnet", "--device", "tiny", *tiny, "--json")
    assert code == 0 and json.loads(out)["predicted_ms"] > 0 and json.loads(out)["estimated"] == []
    code, out, err = hwnas("predict", "fbnet", "--device", "tiny", "--resolution", "40", "--width", "0.25",
                           "--classes", "10", "--no-fallback")
    assert code == 2 and "no measurement for key" in err and len(err.strip().splitlines()) == 1
    # the installed console script: one red line on stderr, exit code 2
    hwnas_script = Path(sys.executable).parent / "hwnas"
    r = subprocess.run([str(hwnas_script), "latency", "show", "--device", "nope"], capture_output=True, text=True,
                       env={**os.environ, "HWNAS_LATENCY_TABLES": str(tiny_tables)})
    assert r.returncode == 2 and "unknown device 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
