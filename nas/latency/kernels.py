"""Kernels: any ONNX model as the kernels ONNX Runtime actually runs on a device, after its graph optimisations.

ONNX Runtime rewrites a graph before it runs it: at ``basic`` it folds constants and batch norms into convolutions,
at ``extended`` it fuses convolution + activation (``com.microsoft:FusedConv``), GELU, layer norm ..., and at ``all``
it moves convolutions to the blocked NCHWc layout of the CPU's vector width (``com.microsoft.nchwc:Conv`` with its
activation and residual add fused, and ``ReorderInput`` / ``ReorderOutput`` nodes where the layout changes). The
faithful split of a model into what costs time is therefore the graph ONNX Runtime saves after optimising it at the
device's level (``SessionOptions.optimized_model_filepath``): each of its nodes is one kernel.

``kernel_graph`` optimises a model that way on the device's provider and threads, then runs the optimised graph
once with every tensor as an output (random inputs at the device's batch), which gives each tensor's shape, type and
value. Each node becomes a ``Kernel`` with a stable key (op type and domain, normalised attributes, input and output
types and shapes, which inputs are constants) and an analytic size (MACs, bytes in, out and of weights), and
``KernelGraph.single_node_model`` writes it as a model of that one node (its constant inputs copied, the rest fed
with the values the probe saw, so data-dependent kernels run as they do inside the model): what the kernel table
times (``nas.latency.kernel_table``).
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from nas.errors import LatencyTableError
from nas.latency import remote_measure

if TYPE_CHECKING:
    from nas.latency.device import Device


@dataclass(frozen=True)
class Kernel:
    """One node of the optimised graph: its key in the kernel table and its analytic size."""

    key: str
    op: str  # "Conv", "com.microsoft.nchwc:Conv", ...
    node: str  # the node's name in the optimised graph
    macs: int  # as executed: NCHWc convolutions count the channels they pad to the vector width
    in_bytes: int  # inputs that are not constants (what the kernel reads from other kernels)
    out_bytes: int
    weight_bytes: int  # constant inputs (weights, biases, shape arguments)


@dataclass
class KernelGraph:
    """A model as ONNX Runtime runs it on a device: its kernels, and what each one reads on a probe run."""

    model: onnx.ModelProto = field(repr=False)  # the optimised graph
    kernels: list[Kernel]
    values: dict[str, np.ndarray] = field(repr=False)  # every tensor of the probe run (graph inputs included)
    in_bytes: int  # the whole model's inputs and outputs (its own session call)
    out_bytes: int

    def __post_init__(self):
        self._nodes = {node_name(n, i): n for i, n in enumerate(self.model.graph.node)}
        self._constants = {t.name: t for t in self.model.graph.initializer}

    def single_node_model(self, kernel: Kernel) -> bytes:
        """The kernel alone as a model: constant inputs copied, the others (and outer-scope names its subgraphs
        read) as graph inputs, its outputs as graph outputs."""
        node = self._nodes[kernel.node]
        names = [n for n in node.input if n] + sorted(outer_scope_inputs(node))
        inputs, constants = [], []
        for name in dict.fromkeys(names):
            if name in self._constants:
                constants.append(self._constants[name])
            else:
                inputs.append(value_info(name, self.values[name]))
        outputs = [value_info(o, self.values[o]) for o in node.output if o]
        graph = helper.make_graph([node], "kernel", inputs, outputs, constants)
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import), ir_version=self.model.ir_version)
        return model.SerializeToString()

    def feeds(self, kernel: Kernel) -> dict[str, np.ndarray]:
        """The values the kernel's non-constant inputs had on the probe run."""
        node = self._nodes[kernel.node]
        names = [n for n in node.input if n] + sorted(outer_scope_inputs(node))
        return {n: self.values[n] for n in names if n not in self._constants}


def node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def value_info(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))


def outer_scope_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If, Loop, Scan) read from the enclosing graph."""
    out: set[str] = set()
    for attr in node.attribute:
        for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            local = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                local |= set(n.output)
            for n in g.node:
                out |= {i for i in n.input if i and i not in local}
                out |= outer_scope_inputs(n) - local
    return out


# ---- keys ---------------------------------------------------------------------------------------------------------
def _attr_text(attr: onnx.AttributeProto) -> str:
    if attr.type == onnx.AttributeProto.GRAPH:  # a subgraph: by its ops, not its tensor names
        return "graph:" + hashlib.sha1(" ".join(n.op_type for n in attr.g.node).encode()).hexdigest()[:10]
    if attr.type == onnx.AttributeProto.TENSOR:
        return f"tensor:{attr.t.data_type}:{'x'.join(map(str, attr.t.dims))}"
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple)):
        return "x".join(v.decode(errors="replace") if isinstance(v, bytes) else f"{v:g}" if isinstance(v, float)
                        else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


DTYPES = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.int64): "i64", np.dtype(np.int32): "i32",
          np.dtype(np.uint8): "u8", np.dtype(np.int8): "i8", np.dtype(np.bool_): "b", np.dtype(np.float64): "f64"}


def _tensor_text(shape, dtype, constant: bool) -> str:
    return f"{DTYPES.get(np.dtype(dtype), str(np.dtype(dtype)))}{'c' if constant else ''}[{'x'.join(map(str, shape))}]"


def kernel_op(node: onnx.NodeProto) -> str:
    return f"{node.domain}:{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def kernel_key(node: onnx.NodeProto, shapes: dict[str, tuple], constants: dict[str, onnx.TensorProto]) -> str:
    """The kernel's identity: op, attributes, inputs (type, shape, constant or not) and outputs."""
    attrs = ";".join(f"{a.name}={_attr_text(a)}" for a in sorted(node.attribute, key=lambda a: a.name))
    ins = []
    for name in node.input:
        if not name:
            ins.append("-")
        elif name in constants:
            t = constants[name]
            ins.append(_tensor_text(t.dims, helper.tensor_dtype_to_np_dtype(t.data_type), True))
        else:
            ins.append(_tensor_text(*shapes[name], False))
    outs = [_tensor_text(*shapes[o], False) for o in node.output if o]
    return f"{kernel_op(node)}|{attrs}|{','.join(ins)}|{','.join(outs)}"


def kernel_macs(node: onnx.NodeProto, shapes: dict[str, tuple], constants: dict[str, onnx.TensorProto]) -> int:
    """Multiply-accumulates of a node, analytically: convolutions and matrix products by their weights and outputs,
    pooling by its window, every other node one per output element."""
    out = int(np.prod(shapes[node.output[0]][0])) if node.output and node.output[0] in shapes else 0
    dims = lambda name: (list(constants[name].dims) if name in constants  # noqa: E731
                         else list(shapes[name][0]) if name in shapes else [])
    if node.op_type in ("Conv", "FusedConv", "ConvTranspose", "QLinearConv", "ConvInteger") and len(node.input) > 1:
        w = dims(node.input[3 if node.op_type == "QLinearConv" else 1])
        per_out = int(np.prod(w[1:])) if len(w) > 1 else 1  # c_in / group x kernel
        return out * per_out
    if node.op_type in ("MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "QLinearMatMul", "FusedGemm"):
        a = dims(node.input[0])
        trans_a = any(x.name == "transA" and x.i for x in node.attribute)
        k = (a[-2] if trans_a else a[-1]) if a else 1
        return out * int(k)
    window = next((list(x.ints) for x in node.attribute if x.name == "kernel_shape"), None)
    if window:
        return out * int(np.prod(window))
    if node.op_type.startswith("Global") and node.input[0] in shapes:
        return int(np.prod(shapes[node.input[0]][0]))
    return out


# ---- the optimised graph -------------------------------------------------------------------------------------------
def optimized_model(model: str | Path | bytes, device: "Device") -> onnx.ModelProto:
    """The graph ONNX Runtime runs ``model`` as on ``device`` (its provider, threads and optimisation level)."""
    import onnxruntime as ort

    data = model if isinstance(model, bytes) else Path(model).read_bytes()
    with tempfile.TemporaryDirectory(prefix="hwnas-kernels-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        try:
            remote_measure.open_session(ort, data, device.provider, device.threads, device.optimization,
                                        optimized_path=str(out))
            return onnx.load(str(out))
        except Exception as e:  # onnxruntime raises its own types for invalid or unsupported graphs
            where = "the model" if isinstance(model, bytes) else str(model)
            raise LatencyTableError(f"{where}: ONNX Runtime cannot load it ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200]})") from None


def probe_values(model: onnx.ModelProto, device: "Device", seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of one run of the optimised ``model`` (random inputs at the device's batch): each node output
    becomes a graph output, and the graph runs as it is (optimisation off, it is optimised already)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        for name in node.output:
            if name and name not in present:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
                present.add(name)
    sess = remote_measure.open_session(ort, probe.SerializeToString(), device.provider, 1, "none")
    feeds = remote_measure.random_feeds(sess, seed, batch=device.batch)
    outputs = sess.run(None, feeds)
    return {**feeds, **{o.name: np.asarray(v) for o, v in zip(sess.get_outputs(), outputs)}}


def kernel_graph(model: str | Path | bytes, device: "Device") -> KernelGraph:
    """``model`` as the kernels ONNX Runtime runs on ``device`` (see the module docstring)."""
    optimized = optimized_model(model, device)
    values = probe_values(optimized, device)
    shapes = {name: (tuple(v.shape), v.dtype) for name, v in values.items()}
    constants = {t.name: t for t in optimized.graph.initializer}
    kernels = []
    for i, node in enumerate(optimized.graph.node):
        nbytes = lambda names: sum(int(values[n].nbytes) for n in names if n in values)  # noqa: E731
        consts = sum(int(np.prod(constants[n].dims)) * helper.tensor_dtype_to_np_dtype(constants[n].data_type).itemsize
                     for n in node.input if n in constants)
        kernels.append(Kernel(kernel_key(node, shapes, constants), kernel_op(node), node_name(node, i),
                              kernel_macs(node, shapes, constants),
                              nbytes([n for n in node.input if n and n not in constants]), nbytes(node.output),
                              consts))
    graph_inputs = [i.name for i in optimized.graph.input if i.name not in constants]
    return KernelGraph(optimized, kernels, values, sum(int(values[n].nbytes) for n in graph_inputs),
                       sum(int(values[o.name].nbytes) for o in optimized.graph.output))


def kernel_device(device: "Device") -> "Device":
    """The set-up a single kernel is timed with: the device's, with graph optimisation off (the kernel is the
    optimised graph's node already; optimising it alone again could rewrite it into another kernel)."""
    return replace(device, optimization="none")
