"""The quantizable layers of a model as they appear in its ONNX graph, and the tensors between them.

Each torch conv / linear layer maps to one ONNX ``Conv`` / ``Gemm`` / ``MatMul`` node (matched in forward order and
checked by weight shape), plus the ``Relu`` that directly follows it. Together they form the layer's *node group*:
what ``onnxruntime.quantization`` quantizes when the layer runs int8. A tensor between two groups needs a
QuantizeLinear where a float producer feeds an int8 consumer, and a DequantizeLinear where an int8 producer feeds
a float consumer; these transitions are what make isolated int8 speed-ups disappear in a mixed model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from nas.errors import SearchError

LAYER_OPS = ("Conv", "Gemm", "MatMul")


@dataclass
class LayerInfo:
    """One quantizable layer: its shape, size, MACs and the ONNX nodes and tensors it owns."""

    index: int
    name: str  # torch module path, e.g. "2.pw.0"
    kind: str  # "conv" (dense kxk), "pw" (1x1), "dw" (depthwise), "gconv" (grouped), "fc" (linear)
    c_in: int
    c_out: int
    kernel: int
    stride: int
    groups: int
    resolution: int  # input height = width (0 for linear)
    relu: bool  # a ReLU follows directly (part of the node group)
    weight_params: int
    bias_params: int
    macs: int
    node: str = ""  # ONNX node name of the Conv / Gemm
    group_nodes: list[str] = field(default_factory=list)
    input_tensor: str = ""
    output_tensor: str = ""  # after the ReLU when there is one

    @property
    def out_resolution(self) -> int:
        return math.ceil(self.resolution / self.stride) if self.resolution else 0

    @property
    def params(self) -> int:
        return self.weight_params + self.bias_params


@dataclass
class TensorInfo:
    """A tensor that enters or leaves a layer group."""

    name: str
    shape: tuple[int, ...]  # without batch: (C, H, W) or (C,)
    producer: int | None  # layer index, or None (model input or a float op outside any group)
    consumers: list[int]  # layer indices reading it
    float_consumers: bool  # also read by an op outside any group (Add, pooling, ...) or a model output


@dataclass
class QuantGraph:
    layers: list[LayerInfo]
    tensors: list[TensorInfo]

    def kinds(self) -> list[str]:
        return [layer.kind for layer in self.layers]


def layer_kind(module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        return "fc"
    k = module.kernel_size[0]
    if module.groups > 1 and module.groups == module.in_channels:
        return "dw"
    if module.groups > 1:
        return "gconv"
    return "pw" if k == 1 else "conv"


def describe_layers(modules: list[tuple[str, nn.Module]], input_resolutions: list[int]) -> list[LayerInfo]:
    """LayerInfo (without ONNX names) for ``(name, module)`` pairs in forward order and their input sizes."""
    out = []
    for i, ((name, m), res) in enumerate(zip(modules, input_resolutions)):
        if isinstance(m, nn.Linear):
            info = LayerInfo(i, name, "fc", m.in_features, m.out_features, 1, 1, 1, 0, False,
                             m.weight.numel(), m.out_features, m.in_features * m.out_features)
        else:
            k, s = m.kernel_size[0], m.stride[0]
            ro = math.ceil(res / s)
            info = LayerInfo(i, name, layer_kind(m), m.in_channels, m.out_channels, k, s, m.groups, res, False,
                             m.weight.numel(), m.out_channels,
                             k * k * (m.in_channels // m.groups) * m.out_channels * ro * ro)
        out.append(info)
    return out


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def attach_onnx(layers: list[LayerInfo], onnx_path: str | Path) -> QuantGraph:
    """Match ``layers`` (forward order) to the ONNX file's layer nodes; find node groups and transition tensors."""
    model = onnx.load(str(onnx_path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shapes are a convenience (transition costs); the names are what matter
        pass
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    # the exporter stores equal constants once and feeds the copies through Identity nodes (all-zero weights of a
    # fresh residual block, whose last batch norm starts at zero, fold to equal tensors)
    weights.update({n.output[0]: weights[n.input[0]] for n in graph.node
                    if n.op_type == "Identity" and n.input[0] in weights})
    nodes = [n for n in graph.node if n.op_type in LAYER_OPS and len(n.input) > 1 and n.input[1] in weights]
    if len(nodes) != len(layers):
        raise SearchError(f"{onnx_path}: {len(nodes)} conv/linear nodes but the model has {len(layers)} "
                          f"quantizable layers; cannot map them")
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    for layer, node in zip(layers, nodes):
        w = numpy_helper.to_array(weights[node.input[1]])
        if int(np.prod(w.shape)) != layer.weight_params:
            raise SearchError(f"{onnx_path}: node {node.name} has a {tuple(w.shape)} weight, layer {layer.name} "
                              f"has {layer.weight_params} weights; cannot map them")
        layer.node, layer.group_nodes, layer.input_tensor = node.name, [node.name], node.input[0]
        out = node.output[0]
        after = consumers.get(out, [])
        if len(after) == 1 and after[0].op_type == "Relu" and out not in outputs:
            layer.relu = True
            layer.group_nodes.append(after[0].name)
            out = after[0].output[0]
        layer.output_tensor = out
    shapes = {}
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        shapes[vi.name] = tuple(dims[1:])
    group_of = {n: layer.index for layer in layers for n in layer.group_nodes}
    tensors: dict[str, TensorInfo] = {}
    for layer in layers:
        for name in (layer.input_tensor, layer.output_tensor):
            if name in tensors:
                continue
            producer = next((lay.index for lay in layers if lay.output_tensor == name), None)
            readers = consumers.get(name, [])
            cons = sorted({group_of[n.name] for n in readers if n.name in group_of
                           and layers[group_of[n.name]].input_tensor == name})
            float_readers = name in outputs or any(n.name not in group_of or
                                                   layers[group_of[n.name]].input_tensor != name for n in readers)
            shape = shapes.get(name) or _shape_from_layer(layers, name)
            tensors[name] = TensorInfo(name, shape, producer, cons, float_readers)
    return QuantGraph(layers, list(tensors.values()))


def _shape_from_layer(layers: list[LayerInfo], name: str) -> tuple[int, ...]:
    for layer in layers:
        if layer.input_tensor == name:
            return (layer.c_in, layer.resolution, layer.resolution) if layer.resolution else (layer.c_in,)
        if layer.output_tensor == name:
            r = layer.out_resolution
            return (layer.c_out, r, r) if r else (layer.c_out,)
    return ()


def trace_layers(model: nn.Module, names: list[str], input_shape: tuple[int, ...]) -> list[LayerInfo]:
    """LayerInfo for the modules ``names`` of ``model`` (wrapped layers are unwrapped), from one forward pass."""
    import torch

    called = [model.get_submodule(n) for n in names]  # the wrappers, when wrapped: they are what runs
    modules = [getattr(m, "layer", m) for m in called]
    sizes: dict[int, int] = {}

    def record(i: int, x: torch.Tensor) -> None:
        sizes.setdefault(i, int(x.shape[-1]) if x.dim() == 4 else 0)

    hooks = [m.register_forward_pre_hook(lambda mod, args, i=i: record(i, args[0])) for i, m in enumerate(called)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return describe_layers(list(zip(names, modules)), [sizes.get(i, 0) for i in range(len(modules))])


def tensor_bits(graph: QuantGraph, int8: list[bool], act_bits: list[int]) -> dict[str, int]:
    """The grid each quantized tensor is stored on in the exported model.

    A tensor is quantized when its producer or any reader runs int8. It takes the narrowest activation grid its
    int8 readers ask for, and 8 bits when only its producer is int8. Float tensors are absent.
    """
    out = {}
    for t in graph.tensors:
        readers = [act_bits[c] for c in t.consumers if int8[c]]
        produced_int8 = t.producer is not None and int8[t.producer]
        if readers or produced_int8:
            out[t.name] = min(readers + [8])
    return out


def layer_io_bits(graph: QuantGraph, int8: list[bool], act_bits: list[int]
                  ) -> tuple[list[int | None], list[int | None]]:
    """Per layer: the bits of its input tensor (int8 layers) and of its output tensor (int8 layers), else None."""
    bits = tensor_bits(graph, int8, act_bits)
    ins = [bits.get(layer.input_tensor) if int8[i] else None for i, layer in enumerate(graph.layers)]
    outs = [bits.get(layer.output_tensor) if int8[i] else None for i, layer in enumerate(graph.layers)]
    return ins, outs
