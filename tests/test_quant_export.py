"""The shipped model is the searched one: at every bit-width the search can choose, the exported ONNX model (QDQ and
QOperator, run by ONNX Runtime) computes what the fake-quant torch model computes; gaps and missed targets warn."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from test_quant import Tiny, tiny_graph  # noqa: F401  (pytest puts tests/ on the path)
from torch import nn

from nas.data.dataset import Dataset
from nas.run import RunDir
from nas.search.quant.fake import int32_bias_error
from nas.search.quant.export import exportable_formats
from nas.search.quant.finish import FinishSettings, finish, onnx_accuracy_warning
from nas.search.quant.graph import attach_onnx, trace_layers
from nas.search.quant.integer import folded_batchnorm
from nas.search.quant.mixed import BitOption, MixedPrecisionNet
from nas.search.quant.pipeline import size_verdict

FP32, W8 = BitOption(32, 32), BitOption(8, 8)
SEARCHABLE = [BitOption(2, 2), BitOption(2, 8), BitOption(4, 4), BitOption(4, 8), W8, FP32]


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _labels(x: torch.Tensor) -> torch.Tensor:
    return (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, :, :8].mean(dim=(1, 2, 3)) > 0).long()


@pytest.fixture(scope="module")
def task():
    """Four classes of random 16 x 16 images, and a Tiny net trained on them through every searchable option."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set up before the autouse fixture
    torch.manual_seed(0)
    x = torch.randn(608, 1, 16, 16)
    y = _labels(x)
    data = Dataset.from_tensors("random", x[:96], y[:96], x[96:160], y[96:160], x[160:], y[160:], 4)
    model = Tiny()
    net = MixedPrecisionNet(model, SEARCHABLE)
    opt = torch.optim.Adam(net.weight_parameters(), lr=0.01)
    net.train()
    for _ in range(150):
        loss = nn.functional.cross_entropy(net(x[:96]), y[:96])
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    return data, net.state_dict()


def _deliver(task, tmp_path, options, assignment):
    data, state = task
    net = MixedPrecisionNet(Tiny(), options)
    net.load_state_dict(state if options == SEARCHABLE else _restricted(state, len(options)))
    graph, _ = tiny_graph(net, tmp_path)
    run = RunDir(tmp_path / "run", {"test": True})
    return finish(net, graph, assignment, "m", data, run, FinishSettings(calibration_samples=96), epochs=0,
                  out_name="model.onnx", cost_ms=None)


def _restricted(state: dict, options: int) -> dict:
    """The trained weights for a net with fewer options (the architecture logits ``theta`` are not reused)."""
    return {k: (torch.zeros(options) if k.endswith("theta") else v) for k, v in state.items()}


def _assert_parity(figures):
    for fmt, f in figures["formats"].items():
        assert f["onnx_max_abs_diff"] < 0.1, (fmt, f)
        assert abs(f["accuracy_onnx"] - figures["accuracy_torch"]) <= 0.01, (fmt, f, figures["accuracy_torch"])


@pytest.mark.parametrize("w_bits", [2, 4, 8])
def test_uniform_weight_bits_export_what_torch_computes(task, tmp_path, w_bits):
    finished = _deliver(task, tmp_path, SEARCHABLE, [BitOption(w_bits, 8)] * 9)
    # both formats, except QOperator on a CPU whose int8 kernels saturate 8-bit weights (x86 without VNNI)
    assert set(finished.candidates) == set(exportable_formats()) and "qdq" in finished.candidates
    _assert_parity(finished.figures)
    assert finished.figures["accuracy_torch"] > 0.4  # a trained model (chance is 0.25)


@pytest.mark.parametrize("a_bits", [2, 4])
def test_sub8_activations_export_what_torch_computes(task, tmp_path, a_bits):
    # QOperator folds each ReLU into its QLinearConv: the pre-ReLU tensor takes the ReLU output's b-bit grid
    sub = BitOption(a_bits, a_bits)
    assignment = [sub, W8, sub, FP32, sub, BitOption(2, 8), sub, BitOption(4, 8), sub]
    _assert_parity(_deliver(task, tmp_path, SEARCHABLE, assignment).figures)


def test_uniform_int8_baseline_exports_what_torch_computes(task, tmp_path):
    finished = _deliver(task, tmp_path, [W8], [W8] * 9)  # the pipeline's int8 baseline: one option
    _assert_parity(finished.figures)


def test_int32_bias_is_part_of_the_fake_quant_model(task, tmp_path):
    """At 2 bits the bias scale (input scale x weight scale) is coarse: the exported int32 bias, dequantized, is the
    folded float bias plus exactly the rounding the torch layer adds."""
    data, state = task
    net = MixedPrecisionNet(Tiny(), SEARCHABLE)
    net.load_state_dict(state)
    _deliver(task, tmp_path, SEARCHABLE, [BitOption(2, 8)] * 9)
    graph = attach_onnx(trace_layers(net.model, net.names, net.input_shape), tmp_path / "run" / "m_float.onnx")
    model = onnx.load(str(tmp_path / "run" / "m_qdq.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    net.fix([BitOption(2, 8)] * 9)
    net.calibrate(data.train.tensors()[0])
    checked = 0
    for info, layer in zip(graph.layers, net.layers):
        bias = nodes[info.node].input[2]
        stored = inits[bias + "_quantized"].astype(np.float64) * inits[bias + "_quantized_scale"]
        s, t = folded_batchnorm(layer.folded_bn[0] if layer.folded_bn else None, layer.layer.weight)
        folded = t if layer.layer.bias is None else s * layer.layer.bias.detach() + t
        correction = layer.int32_bias_correction(BitOption(2, 8), 8)
        assert np.allclose(stored, (folded + s * correction).numpy(), atol=1e-5), info.name
        checked += bool(correction.abs().max() > 1e-4)
    assert checked >= 5  # the rounding is not negligible at 2 bits
    bias, scale = torch.tensor([0.30, -0.26, 0.05]), torch.tensor([0.2, 0.2, 0.0])
    assert torch.allclose(int32_bias_error(bias, scale), torch.tensor([0.10, 0.06, 0.0]), atol=1e-6)


def test_an_onnx_accuracy_gap_is_a_warning():
    figures = {"accuracy_torch": 0.964, "accuracy_onnx": 0.878, "onnx_max_abs_diff": 12.4}
    warning = onnx_accuracy_warning("model.onnx", figures)
    assert "model.onnx" in warning and "8.6 points below" in warning
    assert onnx_accuracy_warning("model.onnx", {**figures, "accuracy_onnx": 0.955}) is None


def test_a_size_target_is_judged_on_the_shipped_file():
    over = size_verdict(0.4, 0.383, 0.92)
    assert over["target_met"] is False and over["target_judged_on"] == "file_mb"
    assert "0.92 MB on disk" in over["warnings"][0] and "stored as int8" in over["warnings"][0]
    assert size_verdict(1.0, 0.383, 0.92) == {"target_met": True, "target_judged_on": "file_mb", "warnings": []}
    assert size_verdict(None, 0.383, 0.92)["target_met"] is None
