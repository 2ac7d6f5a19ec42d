"""``hwnas latency predict MODEL.onnx``: any ONNX model split into the kernels ONNX Runtime runs
(``nas.latency.kernels``), costed from the device's kernel table (``nas.latency.kernel_table``,
``nas.latency.onnx_predict``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.utils.flop_counter
from test_dnas_support import TINY, one_torch_thread, tiny_space, write_space  # noqa: F401  (autouse fixture)
from test_latency_support import FAST, run_hwnas
from torch import nn

from nas.errors import LatencyTableError
from nas.latency.calibrate import calibrate
from nas.latency.device import Device
from nas.latency.kernel_table import KernelCorrection, read_kernels
from nas.latency.kernels import kernel_device, kernel_graph
from nas.latency.onnx_predict import predict_onnx
from nas.latency.profile import profile_items, space_profile_items
from nas.models.onnx_io import export_onnx

DEVICE = "kernel-dev"


class Branchy(nn.Module):
    """Branches and a concatenation, a grouped and a large-kernel conv, a residual add, layer norm, an FC head."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3), nn.BatchNorm2d(width), nn.ReLU())
        self.a = nn.Conv2d(width, width, 3, padding=1, groups=2)
        self.b = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(width, width, 1))
        self.mix = nn.Conv2d(2 * width, width, 1)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        x = self.stem(x)
        y = torch.cat([torch.relu(self.a(x)), self.b(x)], 1)
        x = x + self.mix(y)
        return self.head(self.norm(x.mean((2, 3))))


def export_branchy(path: Path, resolution: int = 32, width: int = 8) -> Path:
    torch.manual_seed(0)
    return export_onnx(Branchy(width).eval(), (3, resolution, resolution), path)


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """A tiny space profiled and calibrated (its reference models fit the kernel correction)."""
    folder = tmp_path_factory.mktemp("kernels")
    space = tiny_space(write_space(folder, TINY, "tiny"))
    profile_items(Device(device_id=DEVICE), space_profile_items(space), tables_dir=folder / "tables", timing=FAST)
    calibrate(Device(device_id=DEVICE), space, models=4, tables_dir=folder / "tables", timing=FAST)
    return folder


def test_the_kernels_are_the_optimised_graphs_nodes_and_each_runs_alone_as_in_the_model(tmp_path):
    path = export_branchy(tmp_path / "branchy.onnx")
    plain = kernel_graph(path, Device(optimization="none"))
    fused = kernel_graph(path, Device(optimization="all"))
    relus = lambda g: sum(k.op == "Relu" for k in g.kernels)  # noqa: E731
    assert relus(plain) >= 2 and relus(fused) == 0  # convolution + activation fused
    assert all(":" not in k.op for k in plain.kernels) and any(":" in k.op for k in fused.kernels)
    assert {"Conv", "Concat", "MaxPool", "LayerNormalization", "Gemm"} <= {k.op.split(":")[-1]
                                                                           for k in fused.kernels}
    with torch.utils.flop_counter.FlopCounterMode(display=False) as flops:  # convolutions and the head
        Branchy()(torch.zeros(1, 3, 32, 32))
    assert flops.get_total_flops() // 2 <= sum(k.macs for k in plain.kernels) < 1.2 * flops.get_total_flops() // 2
    alone = kernel_device(Device(optimization="all"))
    for kernel in fused.kernels:  # every single-node model computes what its node computed in the model
        sess = alone.session(fused.single_node_model(kernel))
        outputs = sess.run(None, fused.feeds(kernel))
        node = next(n for n in fused.model.graph.node if n.output[0] == sess.get_outputs()[0].name)
        np.testing.assert_allclose(outputs[0], fused.values[node.output[0]], rtol=1e-5, atol=1e-5)
    again = kernel_graph(export_branchy(tmp_path / "again.onnx"), Device(optimization="all"))
    assert [k.key for k in again.kernels] == [k.key for k in fused.kernels]  # keys: stable, not tensor names
    wider = kernel_graph(export_branchy(tmp_path / "wider.onnx", width=32), Device(optimization="all"))
    assert not {k.key for k in wider.kernels if "Conv" in k.op} & {k.key for k in fused.kernels if "Conv" in k.op}


def test_predict_profiles_missing_kernels_and_the_breakdown_sums_to_the_total(device, tmp_path):
    tables = device / "tables"
    model = export_branchy(tmp_path / "branchy.onnx")
    first = predict_onnx(model, DEVICE, tables, profile=True, timing=FAST)
    correction = KernelCorrection.load(tables / DEVICE)
    assert correction is not None and correction.fitted_on >= 2  # fitted on the reference models
    assert first.estimated == 0 and first.profiled["measured"] == first.profiled["kernels"] > 0
    assert first.total_ms == pytest.approx(first.call_ms + sum(k["ms"] for k in first.kernels))
    rows = read_kernels(tables / DEVICE)
    assert all(k["key"] in rows for k in first.kernels)
    again = predict_onnx(model, DEVICE, tables, profile=True, timing=FAST)  # nothing left to time
    assert again.profiled["measured"] == 0 and again.total_ms == pytest.approx(first.total_ms)
    other = predict_onnx(export_branchy(tmp_path / "big.onnx", resolution=48), DEVICE, tables)
    assert other.estimated > 0 and any("estimated by the regressor" in w for w in other.warnings)
    assert other.total_ms == pytest.approx(other.call_ms + sum(k["ms"] for k in other.kernels))
    with pytest.raises(LatencyTableError, match="no timing for kernel"):
        predict_onnx(tmp_path / "big.onnx", DEVICE, tables, allow_fallback=False)


def test_cli_predict_onnx_prints_the_breakdown_and_bad_inputs_are_one_line(device, tmp_path, monkeypatch, capsys):
    tables = device / "tables"
    model = export_branchy(tmp_path / "branchy.onnx")
    predict_onnx(model, DEVICE, tables, profile=True, timing=FAST)
    where = ("--device", DEVICE, "--tables-dir", str(tables))
    code, out, err = run_hwnas(monkeypatch, capsys, "latency", "predict", str(model), *where, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["estimated_kernels"] == 0 and result["kernels"] == len(result["breakdown"])
    assert result["predicted_ms"] == pytest.approx(result["call_ms"] + sum(k["ms"] for k in result["breakdown"]))
    code, out, err = run_hwnas(monkeypatch, capsys, "latency", "predict", str(model), *where)
    assert code == 0 and "predicted" in out and "(session call)" in out
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    export_branchy(tmp_path / "other.onnx", resolution=40)
    for args, message in (((str(garbage),), "ONNX Runtime cannot load it"),
                          ((str(tmp_path / "missing.onnx"),), "ONNX model not found"),
                          ((str(model), "--resolution", "64"), "--resolution describe an arch"),
                          ((str(tmp_path / "other.onnx"), "--no-fallback"), "no timing for kernel"),
                          (("fbnet", "--profile"), "--profile times the kernels of an ONNX model")):
        code, out, err = run_hwnas(monkeypatch, capsys, "latency", "predict", *args, *where)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_onnx_runtime_session_options_are_the_devices(tmp_path):
    """The optimised graph is the one the device's own session would run (its provider and level)."""
    path = export_branchy(tmp_path / "branchy.onnx")
    graph = kernel_graph(path, Device(optimization="basic"))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / "basic.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    import onnx
    assert [n.op_type for n in onnx.load(str(tmp_path / "basic.onnx")).graph.node] == \
        [k.op.split(":")[-1] for k in graph.kernels]
