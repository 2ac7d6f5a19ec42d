"""Mixed precision: fake quantization, the bit-width supernet, ONNX graph mapping, costs, export and the search."""

import itertools
from collections import namedtuple

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from nas.errors import SearchError
from nas.latency.correction import PrecisionTerms
from nas.latency.precision import PrecisionCostTable
from nas.latency.quantize import int8_weight_type
from nas.models.blocks import ConvBNReLU, InvertedResidual, PoolClassifier, parse_op
from nas.models.onnx_io import export_onnx, run_onnx
from nas.search.quant.costs import BitopsCost, LatencyCost, SizeCost, mean_weight_bits, size_mb
from nas.search.quant.export import quantize_assignment
from onnxruntime.quantization import QuantType
from nas.search.quant.fake import activation_qparams, fake_quantize_activation, fake_quantize_weight
from nas.search.quant.graph import attach_onnx, layer_io_bits, tensor_bits, trace_layers
from nas.search.quant.mixed import BitOption, MixedPrecisionNet, bit_options, forward_order
from nas.search.quant.prepare import check_options
from nas.search.quant.profile import precision_graph
from nas.search.quant.search import SearchConfig, fit_to_target, search_bits

FP32, W8, W4, W2 = BitOption(32, 32), BitOption(8, 8), BitOption(4, 8), BitOption(2, 8)


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared: oversubscribed threads slow torch down many times
    yield
    torch.set_num_threads(before)


class Tiny(nn.Sequential):
    """stem conv, one inverted residual (pw, dw, pwl + skip), a strided one, head and classifier: 9 layers."""

    def __init__(self, classes: int = 4):
        super().__init__(ConvBNReLU(1, 8, 3, 2), InvertedResidual(parse_op("ir_k3_e2"), 8, 8, 1),
                         InvertedResidual(parse_op("ir_k3_e2"), 8, 16, 2), ConvBNReLU(16, 32, 1),
                         PoolClassifier(32, classes))
        self.input_shape = (1, 16, 16)


def tiny_net(options, seed=0):
    torch.manual_seed(seed)
    return MixedPrecisionNet(Tiny(), options)


def tiny_graph(net, tmp_path):
    layers = trace_layers(net.model, net.names, net.input_shape)
    path = tmp_path / "fp32.onnx"
    export_onnx(net.float_model([FP32] * len(layers)), net.input_shape, path)
    return attach_onnx(layers, path), path


# ---- fake quantization -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_fake_quant_is_a_per_channel_grid(bits):
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).view(6, 1, 1, 1)  # channels of different scales
    q = fake_quantize_weight(w, bits)
    qmax = 2 ** (bits - 1) - 1
    for c in range(6):
        scale = w[c].abs().max() / qmax
        levels = torch.round(q[c] / scale)
        assert torch.allclose(levels * scale, q[c], atol=1e-6)
        assert levels.abs().max() == qmax and len(levels.unique()) <= 2 * qmax + 1
        assert torch.isclose(q[c].abs().max(), w[c].abs().max())  # the largest weight keeps its value
    assert (q - w).abs().max() <= (w.abs().amax(dim=(1, 2, 3)) / qmax).max() / 2 + 1e-6
    assert fake_quantize_weight(w, 32) is w


def test_straight_through_gradients():
    w = torch.randn(4, 5, requires_grad=True)
    fake_quantize_weight(w, 4).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
    x = torch.linspace(-2, 3, 50, requires_grad=True)
    fake_quantize_activation(x, -1.0, 2.0, 4).sum().backward()
    scale, zp = activation_qparams(-1.0, 2.0, 4)
    q = torch.round(x.detach() / scale) + zp
    inside = (q >= 0) & (q <= 15)
    assert torch.equal(x.grad, inside.float()) and 0 < inside.sum() < 50  # clipped values get no gradient


def test_activation_grid_matches_onnxruntime_arithmetic():
    from onnxruntime.quantization.quant_utils import compute_scale_zp

    for lo, hi in [(-1.3, 2.7), (0.0, 5.0), (0.4, 3.0), (-4.0, -0.5)]:
        scale, zp = activation_qparams(lo, hi, 8)
        ort_zp, ort_scale = compute_scale_zp(np.float32(lo), np.float32(hi), np.uint8(0), np.uint8(255))
        assert scale == pytest.approx(float(ort_scale), rel=1e-6) and zp == int(ort_zp)
    x = torch.linspace(-3, 6, 1000)
    q = fake_quantize_activation(x, -1.0, 2.0, 4)
    scale, zp = activation_qparams(-1.0, 2.0, 4)
    assert len(q.unique()) == 16 and q.min() >= -1.0 - 1e-6 and q.max() <= 2.0 + scale
    assert torch.any(q == 0)  # zero is exactly representable


# ---- options and the supernet ----------------------------------------------------------------------------------
def test_bit_options_and_their_checks():
    opts = bit_options([2, 4, 8, 32], [4, 8, 32])
    assert [o.label for o in opts] == ["w2a4", "w2a8", "w4a4", "w4a8", "w8a4", "w8a8", "fp32"]
    assert BitOption.parse("w4a8") == W4 and BitOption.parse("fp32") == FP32
    with pytest.raises(SearchError, match="between 2 and 8"):
        bit_options([1, 8], [8])
    with pytest.raises(SearchError, match="between 2 and 8"):
        bit_options([8, 16], [8])
    with pytest.raises(SearchError, match="ONNX Runtime runs only int8 and fp32"):
        check_options("latency", bit_options([4, 8, 32], [8, 32]))
    check_options("latency", bit_options([8, 32], [8, 32]))
    with pytest.raises(SearchError, match="nothing to search"):
        check_options("size", bit_options([32], [32]))


def test_supernet_wraps_every_conv_and_linear_in_forward_order():
    net = tiny_net(bit_options([2, 4, 8, 32], [8, 32]))
    assert net.names == ["0.0", "1.pw.0", "1.dw.0", "1.pwl.0", "2.pw.0", "2.dw.0", "2.pwl.0", "3.0", "4.fc"]
    assert net.taps == ["0.2", "1.pw.2", "1.dw.2", "1.pwl.1", "2.pw.2", "2.dw.2", "2.pwl.1", "3.2", "4.fc"]
    assert len(net.arch_parameters()) == 9 and all(t.numel() == 4 for t in net.arch_parameters())
    arch_ids = {id(p) for p in net.arch_parameters()}
    assert not arch_ids & {id(p) for p in net.weight_parameters()}
    plain = nn.Sequential(nn.Flatten(), nn.ReLU())
    plain.input_shape = (4,)
    with pytest.raises(SearchError, match="no conv or linear layer"):
        MixedPrecisionNet(plain, [W8, FP32])


def test_mixture_is_the_probability_weighted_sum_of_branches():
    opts = [W2, W4, W8, FP32]
    net = tiny_net(opts)
    net.calibrate(torch.randn(16, 1, 16, 16))
    net.eval()  # frozen activation ranges
    layer = net.layers[1]
    x = torch.relu(torch.randn(3, 8, 8, 8))
    g = torch.tensor([0.1, 0.2, 0.3, 0.4])
    layer.mixture = g
    mixed = layer(x)
    branches = []
    for i in range(4):
        layer.fixed = i
        branches.append(layer(x))
    layer.fixed = None
    # w2/w4/w8 share 8-bit activations (one conv on the summed weights); fp32 runs on float inputs
    assert torch.allclose(mixed, sum(gi * b for gi, b in zip(g, branches)), atol=1e-5)


def test_fixed_assignment_and_float_copy():
    net = tiny_net([W4, W8, FP32])
    x = torch.randn(8, 1, 16, 16)
    net.calibrate(x)
    assignment = [W4] * 9
    net.fix(assignment)
    net.eval()
    plain = net.float_model(assignment)
    assert not any(isinstance(m, type(net.layers[0])) for m in plain.modules())
    conv = plain.get_submodule("1.pw.0")
    scale = conv.weight.abs().amax(dim=(1, 2, 3), keepdim=True) / 7
    assert torch.allclose(torch.round(conv.weight / scale) * scale, conv.weight, atol=1e-6)
    net.fix([FP32] * 9)
    with torch.no_grad():  # fixed fp32 runs exactly the float model
        assert torch.allclose(net(x), net.float_model([FP32] * 9)(x), atol=1e-5)
    with pytest.raises(SearchError, match="not an option"):
        net.fix([W2] * 9)


# ---- ONNX graph, tensors and transition rules --------------------------------------------------------------------
def test_layers_map_to_onnx_nodes_and_tensors(tmp_path):
    net = tiny_net([W8, FP32])
    graph, _ = tiny_graph(net, tmp_path)
    kinds = [layer.kind for layer in graph.layers]
    assert kinds == ["conv", "pw", "dw", "pw", "pw", "dw", "pw", "pw", "fc"]
    assert [layer.relu for layer in graph.layers] == [True, True, True, False, True, True, False, True, False]
    assert all(layer.node.endswith("Conv") or layer.node.endswith("Gemm") for layer in graph.layers)
    assert graph.layers[2].macs == 3 * 3 * 16 * 8 * 8  # depthwise 3x3 over 16 channels at 8x8
    by_name = {t.name: t for t in graph.tensors}
    # block 1's input feeds its pw conv and its residual Add: a float reader
    t_in = by_name[graph.layers[1].input_tensor]
    assert t_in.producer == 0 and t_in.consumers == [1] and t_in.float_consumers
    # pw -> dw is a private edge
    t_mid = by_name[graph.layers[1].output_tensor]
    assert t_mid.producer == 1 and t_mid.consumers == [2] and not t_mid.float_consumers
    assert t_mid.shape == (16, 8, 8)


def test_tensor_bits_follow_onnxruntime(tmp_path):
    net = tiny_net([W8, FP32])
    graph, _ = tiny_graph(net, tmp_path)
    int8 = [False, True, True, False, False, False, False, False, False]
    bits = tensor_bits(graph, int8, [8] * 9)
    assert graph.layers[1].input_tensor in bits and graph.layers[2].output_tensor in bits  # Q in, DQ out
    assert graph.layers[3].output_tensor not in bits and graph.layers[0].input_tensor not in bits
    act = [8, 8, 4, 8, 8, 8, 8, 8, 8]
    bits = tensor_bits(graph, int8, act)
    assert bits[graph.layers[1].output_tensor] == 4  # the narrowest int8 reader sets the grid
    ins, outs = layer_io_bits(graph, int8, act)
    assert ins[2] == 4 and outs[1] == 4 and ins[0] is None and outs[2] == 8


# ---- costs -----------------------------------------------------------------------------------------------------
def test_size_and_bitops_costs(tmp_path):
    opts = [W2, W4, W8, FP32]
    net = tiny_net(opts)
    graph, _ = tiny_graph(net, tmp_path)
    weights = sum(layer.weight_params for layer in graph.layers)
    biases = sum(layer.bias_params for layer in graph.layers)
    size = SizeCost(graph, opts)
    assert size.of([FP32] * 9) == pytest.approx((weights * 32 + biases * 32) / 8e6)
    assert size.of([W4] * 9) == pytest.approx((weights * 4 + biases * 32) / 8e6)
    assert size.lower_bound() == pytest.approx(size.of([W2] * 9))
    assert size_mb(graph, [W4] * 9, storage=True) == pytest.approx((weights * 8 + biases * 32) / 8e6)
    assert mean_weight_bits(graph, [W4] * 9) == 4
    bitops = BitopsCost(graph, opts)
    macs = sum(layer.macs for layer in graph.layers)
    assert bitops.of([W8] * 9) == pytest.approx(macs * 64 / 1e9)
    probs = [torch.tensor([0.25, 0.25, 0.25, 0.25])] * 9
    assert float(size.expected(probs)) == pytest.approx(np.mean([size.of([o] * 9) for o in opts]))


LayerTimes = namedtuple("LayerTimes", "fp32_ms int8_ms")


def _latency_cost(graph, seed=0):
    rng = np.random.default_rng(seed)
    times = [LayerTimes(float(a), float(b)) for a, b in rng.uniform(0.01, 0.1, (len(graph.layers), 2))]
    trans = {t.name: float(rng.uniform(0.002, 0.02)) for t in graph.tensors}
    table = PrecisionCostTable(precision_graph(graph), 1.0, np.array([t.fp32_ms for t in times]),
                               np.array([t.int8_ms for t in times]), np.array([trans[t.name] for t in graph.tensors]),
                               PrecisionTerms(1.3, 0.9, 0.004))
    return LatencyCost(graph, [W8, FP32], table), times, trans


def test_latency_cost_counts_transitions_by_hand(tmp_path):
    net = tiny_net([W8, FP32])
    graph, _ = tiny_graph(net, tmp_path)
    cost, times, trans = _latency_cost(graph)
    cost.table.precision = PrecisionTerms()
    assert cost.of([FP32] * 9) == pytest.approx(1.0)
    # only the dw layer of block 1 int8: its own measured int8 time (Q in, DQ out) replaces its fp32 time
    one = [FP32] * 9
    one[2] = W8
    assert cost.of(one) == pytest.approx(1.0 + times[2].int8_ms - times[2].fp32_ms)
    # pw + dw int8: the DQ after pw and the Q before dw are saved (one measured pair on that tensor)
    two = list(one)
    two[1] = W8
    saved = trans[graph.layers[1].output_tensor]
    expect = 1.0 + sum(times[i].int8_ms - times[i].fp32_ms for i in (1, 2)) - saved
    assert cost.of(two) == pytest.approx(expect)


def test_expected_latency_is_the_exact_expectation(tmp_path):
    net = tiny_net([W8, FP32])
    graph, _ = tiny_graph(net, tmp_path)
    cost, _, _ = _latency_cost(graph, seed=3)
    p8 = torch.tensor(np.random.default_rng(1).uniform(0.05, 0.95, 9), dtype=torch.float32)
    exact = 0.0
    for bits in itertools.product([0, 1], repeat=9):
        prob = float(torch.prod(torch.where(torch.tensor(bits) == 1, p8, 1 - p8)))
        exact += prob * cost.of([W8 if b else FP32 for b in bits])
    probs = [torch.stack([p, 1 - p]) for p in p8]
    assert float(cost.expected(probs)) == pytest.approx(exact, rel=1e-5)
    p = p8.clone().requires_grad_(True)
    cost.table.expected_ms(p).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert cost.lower_bound() <= min(cost.of([W8] * 9), cost.of([FP32] * 9))


# ---- export ------------------------------------------------------------------------------------------------------
def _trained_tiny(tmp_path, options):
    torch.manual_seed(0)
    x = torch.randn(96, 1, 16, 16)
    y = (x.mean(dim=(1, 2, 3)) > 0).long() + 2 * (x[:, :, :8].mean(dim=(1, 2, 3)) > 0).long()
    net = tiny_net(options)
    opt = torch.optim.Adam(net.weight_parameters(), lr=0.01)
    net.train()
    for _ in range(30):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net, x, y


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
def test_export_quantizes_only_the_chosen_layers_and_matches_torch(tmp_path, fmt):
    net, x, _ = _trained_tiny(tmp_path, [W4, W8, FP32])
    graph, _ = tiny_graph(net, tmp_path)
    assignment = [W8, W8, W4, FP32, W8, W8, W8, FP32, W8]
    int8 = [o.runs_int8 for o in assignment]
    ins, outs = layer_io_bits(graph, int8, [o.a_bits for o in assignment])
    net.fix(assignment, ins, outs)
    net.calibrate(x)
    float_path = tmp_path / "float.onnx"
    export_onnx(net.float_model(assignment), net.input_shape, float_path)
    g = attach_onnx(trace_layers(net.model, net.names, net.input_shape), float_path)
    ranges = {}
    for info, layer in zip(g.layers, net.layers):
        ranges.setdefault(info.input_tensor, layer.observer.range())
        ranges.setdefault(info.output_tensor, layer.out_observer.range())
    info = quantize_assignment(float_path, g, assignment, x, tmp_path / "q.onnx", fmt, ranges)
    assert info.quantized_layers == [layer.name for layer, o in zip(g.layers, assignment) if o.runs_int8]
    assert info.sub8_weight_layers == ["1.dw.0"]
    model = onnx.load(str(info.path))
    ops = [n.op_type for n in model.graph.node]
    if fmt == "qop":
        assert ops.count("QLinearConv") == 6 and ops.count("Conv") == 2 and "QGemm" in ops
        w_name = next(n.input[3] for n in model.graph.node if n.name.startswith(g.layers[2].node))
    else:
        float_convs = [n for n in model.graph.node if n.op_type == "Conv"
                       and not any(i.endswith("DequantizeLinear_Output") for i in n.input[1:2])]
        assert {n.name for n in float_convs} == {g.layers[3].node, g.layers[7].node}
        conv = next(n for n in model.graph.node if n.name == g.layers[2].node)
        w_name = next(n.input[0] for n in model.graph.node if n.output[0] == conv.input[1])
    stored = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == w_name))
    # a 4-bit grid stored in int8, or in uint8 around 128 where int8 weights saturate this CPU's kernels
    zero = 128 if stored.dtype == np.uint8 else 0
    assert stored.dtype == (np.uint8 if int8_weight_type(fmt) == QuantType.QUInt8 else np.int8)
    assert np.abs(stored.astype(int) - zero).max() == 7
    net.eval()
    with torch.no_grad():
        ref = net(x).numpy()
    out = run_onnx(info.path, x)
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert np.abs(out - ref).max() < 0.25 * np.abs(ref).max()


def test_an_untrained_models_shared_zero_biases_still_fuse_into_int8_kernels(tmp_path):
    """torch's exporter stores the equal (all-zero) folded biases of a fresh model once, read through Identity
    nodes; quantized as they are, ONNX Runtime ran those layers as float convs dequantizing their weights per call."""
    import onnxruntime as ort

    net = tiny_net([W8, FP32])
    graph, path = tiny_graph(net, tmp_path)
    assert any(n.op_type == "Identity" for n in onnx.load(str(path)).graph.node)  # the exporter shared a bias
    info = quantize_assignment(path, graph, [W8] * 9, torch.randn(16, 1, 16, 16), tmp_path / "m.onnx")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(info.path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == 8 and not {"Conv", "FusedConv"} & set(ops)


def test_export_of_an_all_float_assignment_copies_the_model(tmp_path):
    net = tiny_net([W8, FP32])
    graph, path = tiny_graph(net, tmp_path)
    info = quantize_assignment(path, graph, [FP32] * 9, torch.randn(4, 1, 16, 16), tmp_path / "m.onnx")
    assert info.fmt == "fp32" and info.path.read_bytes() == path.read_bytes()


# ---- search ------------------------------------------------------------------------------------------------------
class _Data:
    def __init__(self, x, y):
        from nas.data.splits import TensorSplit
        self.train, self.val = TensorSplit(x[:64], y[:64]), TensorSplit(x[64:], y[64:])


def test_search_moves_towards_cheap_bits_and_resumes(tmp_path):
    net, x, y = _trained_tiny(tmp_path, [W2, W4, W8, FP32])
    graph, _ = tiny_graph(net, tmp_path)
    cost = SizeCost(graph, net.options)
    config = SearchConfig(epochs=3, warmup_epochs=1, batch_size=32, alpha=4.0, arch_lr=0.2)
    ckpt = tmp_path / "search.pt"
    result = search_bits(net, _Data(x, y), cost, config, checkpoint=ckpt)
    assert len(result.history) == 3 and "arch_ce" not in result.history[0] and "arch_ce" in result.history[1]
    start = cost.expected([torch.full((4,), 0.25)] * 9)
    assert result.history[-1]["expected_cost"] < float(start)  # the size term pulled the choices down
    again = search_bits(tiny_net([W2, W4, W8, FP32], seed=5), _Data(x, y), cost, config, checkpoint=ckpt)
    assert again.assignment == result.assignment and again.history == result.history  # resumed, nothing redone


def test_target_is_met_by_steering_or_repair(tmp_path):
    net, x, y = _trained_tiny(tmp_path, [W2, W4, W8, FP32])
    graph, _ = tiny_graph(net, tmp_path)
    cost = SizeCost(graph, net.options)
    target = cost.of([W4] * 9)
    result = search_bits(net, _Data(x, y), cost, SearchConfig(epochs=2, batch_size=32, target=target))
    assert cost.of(result.assignment) <= target
    probs = [[0.0, 0.0, 0.1, 0.9]] * 9
    fixed, changed = fit_to_target(net, cost, [FP32] * 9, probs, target)
    assert cost.of(fixed) <= target and changed
    with pytest.raises(SearchError, match="cannot be met"):
        fit_to_target(net, cost, [FP32] * 9, probs, cost.lower_bound() * 0.5)


def test_repair_turns_a_whole_int8_run_where_no_single_layer_saves(tmp_path):
    """Turning one layer of an int8 run to fp32 adds a transition on a large inner tensor; the whole run saves."""
    net = tiny_net([W8, FP32])
    graph, _ = tiny_graph(net, tmp_path)
    inner = {graph.layers[4].output_tensor, graph.layers[5].output_tensor}
    pair = np.array([0.2 if t.name in inner else 0.002 for t in graph.tensors])
    edge = {t.name: i for i, t in enumerate(graph.tensors)}
    int8 = [0.05 + 0.01 + (pair[edge[layer.input_tensor]] + pair[edge[layer.output_tensor]]) / 2
            for layer in graph.layers]  # int8 compute 0.01 ms slower than fp32 in every layer
    table = PrecisionCostTable(precision_graph(graph), 1.0, np.full(9, 0.05), np.array(int8), pair, PrecisionTerms())
    cost = LatencyCost(graph, [W8, FP32], table)
    start = [FP32] * 4 + [W8] * 3 + [FP32] * 2
    probs = [[0.9, 0.1] if o == W8 else [0.1, 0.9] for o in start]
    value = cost.of(start)
    assert all(cost.of(start[:i] + [FP32] + start[i + 1:]) >= value for i in (4, 5, 6))  # no single layer saves
    fixed, changed = fit_to_target(net, cost, start, probs, cost.of([FP32] * 9) + 1e-9)
    assert fixed == [FP32] * 9 and changed == [net.names[i] for i in (4, 5, 6)]


def test_forward_order_follows_execution_not_definition():
    class Swapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.Linear(4, 2)
            self.early = nn.Conv2d(1, 4, 1)
            self.input_shape = (1, 2, 2)

        def forward(self, x):
            return self.late(self.early(x).mean(dim=(2, 3)))

    assert forward_order(Swapped()) == ["early", "late"]


def test_float_start_and_front_check():
    from nas.search.quant.pipeline import _dominated
    from nas.search.quant.search import init_logits

    net = tiny_net([W8, FP32])
    init_logits(net, 0.8)
    assert all(torch.allclose(p, torch.tensor([0.2, 0.8])) for p in net.probabilities())
    assert net.argmax_assignment() == [FP32] * 9
    mixed = {"accuracy_onnx": 0.95, "measured_ms": 1.0}
    base = {"fp32": {"accuracy_onnx": 0.96, "measured_ms": 0.9}, "int8": {"accuracy_onnx": 0.94, "measured_ms": 0.8}}
    assert _dominated(mixed, base, []) == ["fp32"]
    assert _dominated({"accuracy_onnx": 0.97, "measured_ms": 1.0}, base, []) == []
    same = {"fp32": {"accuracy_onnx": 0.95, "measured_ms": 0.5}}  # same graph: a faster reading is noise
    assert _dominated(mixed, same, ["fp32"]) == [] and _dominated(mixed, same, []) == ["fp32"]


# ---- latency fit -------------------------------------------------------------------------------------------------
def test_latency_fit_exports_real_models_recovers_coefficients_and_resumes(tmp_path):
    import onnx as onnx_

    from nas.search.quant.latency_fit import calibration_assignments, fit_latency_cost

    net = tiny_net([W8, FP32])
    graph, _ = tiny_graph(net, tmp_path)
    assignments = calibration_assignments(graph, count=5, seed=0)
    assert list(assignments)[:4] == ["fp32", "int8", "int8_pw", "int8_dw"] and len(assignments) == 5
    assert [o == W8 for o in assignments["int8_pw"]] == [k == "pw" for k in graph.kinds()]
    cost, _, _ = _latency_cost(graph, seed=2)
    cost.table.precision = PrecisionTerms()
    truth = (0.5, 2.0, 0.01, -0.02)  # as ``coef`` signs them: a saved weight MB takes time away
    seen = []

    def time_files(paths):  # a device whose whole-model times follow a known law of the four terms
        out = []
        for path, assignment in zip(paths, assignments.values()):
            ops = {n.op_type for n in onnx_.load(path).graph.node}
            assert ("QuantizeLinear" in ops) == any(o == W8 for o in assignment)  # really exported as asked
            p8 = torch.tensor([1.0 if o == W8 else 0.0 for o in assignment])
            terms = [float(t) for t in cost.table.terms_from_int8(p8)]
            out.append(3.0 + sum(c * t for c, t in zip(truth, terms)))
        seen.append(len(paths))
        return out

    device_folder = tmp_path / "device"
    device_folder.mkdir()
    fit = fit_latency_cost(cost, net, torch.randn(16, 1, 16, 16), time_files, device_folder, count=5)
    assert seen == [5] and fit["models"] == 5 and fit["measured_fp32_ms"] == pytest.approx(3.0)
    assert cost.table.precision.coef == pytest.approx(truth, rel=1e-3, abs=1e-6)
    assert fit["delta_mape_fitted_pct"] < 1e-3 < fit["delta_mape_table_pct"]
    assert all(layer.fixed is None for layer in net.layers)  # the net is back to searching
    cost.table.precision = PrecisionTerms()
    again = fit_latency_cost(cost, net, torch.randn(16, 1, 16, 16), time_files, device_folder, count=5)
    assert seen == [5] and again["coef"] == fit["coef"]  # resumed from the CSV: nothing exported or timed again
