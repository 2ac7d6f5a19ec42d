"""Device: one measurement set-up from a table's manifest, and the one timer every measured_ms comes from."""

import dataclasses
from dataclasses import asdict, replace

import pytest
from test_latency_support import FAST

from nas.errors import LatencyTableError
from nas.latency import remote_measure
from nas.latency.device import Device
from nas.latency.measurement import MeasuringDevice, measuring_device
from nas.latency.model import LatencyModel
from nas.latency.overhead import passthrough_model
from nas.latency.table import DeviceManifest, LatencyTable
from nas.latency.timing import TimingConfig


def _manifest(device_id="clk", **setup) -> DeviceManifest:
    return DeviceManifest.for_this_machine(device_id, **setup)


def _onnx_files(folder, sizes=(16, 4096)):
    paths = []
    for n in sizes:
        path = folder / f"pass{n}.onnx"
        path.write_bytes(passthrough_model(n))
        paths.append(path)
    return paths


def test_device_from_a_manifest_keeps_the_tables_setup(tmp_path):
    manifest = _manifest(graph_optimization="basic", clock="cpu")
    device = Device.from_manifest(manifest)
    assert (device.provider, device.threads, device.optimization, device.clock) == \
        ("CPUExecutionProvider", 1, "basic", "cpu")
    assert device.device_id == "clk" and not device.remote
    LatencyTable.open_for_writing(manifest, tmp_path)
    assert Device.load("clk", tmp_path) == device == LatencyModel.load("clk", tmp_path).device
    assert device.timing(FAST).clock == "cpu" and device.timing(FAST).max_rounds == FAST.max_rounds
    with pytest.raises(LatencyTableError, match="unknown device 'nope'"):
        Device.load("nope", tmp_path)


def test_timing_defaults_are_the_standalone_scripts():
    assert asdict(TimingConfig()) == remote_measure.DEFAULT_TIMING


def test_cpu_clock_with_two_threads_is_an_error():
    with pytest.raises(LatencyTableError, match="clock 'cpu'.*--ort-threads 1.*got 2"):
        Device(threads=2, clock="cpu")
    with pytest.raises(LatencyTableError, match="clock 'sundial'"):
        Device(clock="sundial")
    assert Device(threads=2).threads == 2


def test_unavailable_provider_names_the_available_ones(tmp_path):
    device = Device(provider="NoSuchExecutionProvider", threads=4)
    assert not device.runs_here
    with pytest.raises(LatencyTableError, match="'NoSuchExecutionProvider' is not available here "
                                                r"\(available: .*CPUExecutionProvider"):
        device.time_files(_onnx_files(tmp_path, (8,)))
    local = measuring_device(device)
    assert (local.device.provider, local.device.threads) == ("CPUExecutionProvider", 1) and local.device.runs_here
    assert not local.on_device and "not available here" in local.note
    assert measuring_device(Device()) == MeasuringDevice(Device(), on_device=True, note="")
    assert not measuring_device(Device(device_id="phone", remote=True)).on_device


def test_time_files_gives_one_stats_per_file(tmp_path):
    paths = _onnx_files(tmp_path, (16, 4096, 65536))
    stats = Device().time_files(paths, FAST)
    assert len(stats) == 3
    for st in stats:
        assert 0 < st.p50_ms <= st.p90_ms and st.count >= FAST.min_runs
    one = Device(clock="cpu").time_file(paths[0], FAST)
    assert 0 < one.p50_ms <= one.p90_ms


def test_every_search_times_a_model_with_the_tables_setup(tmp_path, monkeypatch):
    """The DNAS winner (finalize, with lm.device), mixed precision's candidates and the capacity export time the
    same ONNX file with the same provider, threads, optimisation level and the table's clock."""
    from nas.arch.space import load_space
    from nas.data.dataset import load_dataset
    from nas.data.splits import TensorSplit
    from nas.run import RunDir
    from nas.search.capacity.export import measure_onnx_ms
    from nas.search.finalize import train_export_measure
    from nas.search.quant.finish import Finished, measure_and_choose
    from nas.train.recipe import Recipe

    manifest = _manifest("table-clock", graph_optimization="extended", clock="cpu")
    LatencyTable.open_for_writing(manifest, tmp_path / "tables")
    lm = LatencyModel.load("table-clock", tmp_path / "tables")

    seen = []
    real_time_sessions = Device.time_sessions

    def time_sessions(self, sessions, timing=None, on_round=None):
        seen.append((self.provider, self.threads, self.optimization, self.timing(timing).clock, len(sessions)))
        return real_time_sessions(self, sessions, replace(FAST, clock=self.timing(timing).clock), on_round)

    monkeypatch.setattr(Device, "time_sessions", time_sessions)

    data = load_dataset("digits", resolution=16, seed=0)
    data = dataclasses.replace(data, train=TensorSplit(data.train.first(64), data.y_train[:64]))
    space = load_space("fbnet_a", resolution=16, width_multiplier=0.25, classes=10, in_channels=1)
    run = RunDir(tmp_path / "run", {"test": "device"})
    seen.clear()
    report = train_export_measure(space, space.fixed_arch(), data, Recipe(epochs=1, batch_size=64), run,
                                  measure_on=measuring_device(lm.device))
    dnas = list(seen)
    assert report["timing"]["clock"] == "cpu" and report["measured_ms"] > 0

    onnx = str(run.file("model.onnx"))
    seen.clear()
    finished = Finished("m", [], {"formats": {"fp32": {"accuracy_onnx": 1.0, "onnx_max_abs_diff": 0.0}}},
                        {"fp32": onnx}, "quant.onnx")
    measure_and_choose([finished], run, lm.device)
    quant = list(seen)
    assert finished.figures["measured_ms"] > 0

    seen.clear()
    capacity = measure_onnx_ms(onnx, lm.table.manifest)
    assert capacity["clock"] == "cpu" and capacity["measured_ms"] > 0

    expected = [("CPUExecutionProvider", 1, "extended", "cpu", 1)]
    assert dnas == quant == seen == expected
