"""A bit assignment as a runnable ONNX model: int8 layers through ``onnxruntime.quantization`` (static, calibrated on
training data, only the chosen layers' nodes quantized), every other layer left float.

Layers whose grid is narrower than 8 bits are exported on their own grid and *stored and executed as int8*: the
weights are quantized with per-channel scales ``max|w_c| / (2^(b-1)-1)``, so the stored int8 values lie in
``[-(2^(b-1)-1), 2^(b-1)-1]``; activations use a ``b``-bit scale and zero point from the same calibration, held
in uint8 (values beyond the calibrated range saturate at 255 rather than 2^b - 1, as the fake-quant model
emulates). ONNX Runtime has no sub-8-bit kernels on CPU, so these layers take int8 time and int8 memory; their
*effective* size counts b bits. Biases are stored as int32 by ``onnxruntime.quantization``; the fake-quant model
adds the same rounding (``nas.search.quant.mixed``), so the exported model computes what the search ranked.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from nas.errors import SearchError
from nas.files import atomic_path
from nas.latency.quantize import int8_weight_type, int8_weights_saturate, untie_shared_initializers
from nas.search.quant.fake import activation_qparams, weight_qmax
from nas.search.quant.graph import QuantGraph, tensor_bits
from nas.search.quant.mixed import BitOption

FORMATS = ("qdq", "qop")


@dataclass
class ExportInfo:
    path: Path
    fmt: str  # "qdq" | "qop" | "fp32" (nothing quantized)
    quantized_layers: list[str] = field(default_factory=list)
    sub8_weight_layers: list[str] = field(default_factory=list)
    sub8_act_layers: list[str] = field(default_factory=list)


@contextmanager
def quiet_logging():
    """Silence onnxruntime.quantization's root-logger warnings (e.g. its pre-processing advice) for a call."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def _reader(x: np.ndarray, batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    class TrainingDataReader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": x[i:i + batch_size]} for i in range(0, len(x), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    return TrainingDataReader()


def exportable_formats(requested: tuple[str, ...] | list[str] = FORMATS) -> list[str]:
    """The formats of ``requested`` whose int8 kernels compute the fake-quant model's values on this CPU: QDQ
    always, QOperator only where int8 weights do not saturate (``int8_weights_saturate``); QDQ if none is."""
    ok = [f for f in requested if f == "qdq" or not int8_weights_saturate()]
    return ok or ["qdq"]


def quant_overrides(model: onnx.ModelProto, graph: QuantGraph, assignment: list[BitOption],
                    tensor_ranges: dict[str, tuple[float, float]], fmt: str = "qdq") -> dict:
    """TensorQuantOverrides that put the fake quantizer's grids in the file: the per-channel symmetric scales of
    every int8 layer's weights (zero point 0 as int8, or 128 as uint8 where ``int8_weight_type(fmt)`` is
    unsigned), and the scale and zero point of every quantized activation tensor (from ``tensor_ranges``, the
    torch model's calibration: ONNX Runtime's own, computed in its float arithmetic, can land an ulp away and flip
    roundings)."""
    from onnxruntime.quantization import QuantType

    unsigned = int8_weight_type(fmt) == QuantType.QUInt8
    zero_point = np.array(2 ** 7 if unsigned else 0, dtype=np.uint8 if unsigned else np.int8)
    weights = {init.name: init for init in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    overrides: dict[str, list[dict]] = {}
    for layer, option in zip(graph.layers, assignment):
        if option.runs_int8:
            node = nodes[layer.node]
            w = numpy_helper.to_array(weights[node.input[1]])
            axis = 0
            if node.op_type == "MatMul" or (node.op_type == "Gemm" and
                                            not any(a.name == "transB" and a.i for a in node.attribute)):
                axis = 1
            per_channel = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
            scales = np.maximum(per_channel.astype(np.float64), 1e-12) / weight_qmax(option.w_bits)
            overrides[node.input[1]] = [{"axis": axis, "scale": np.array(scales[0], dtype=np.float32),
                                         "zero_point": zero_point}] + \
                [{"scale": np.array(sc, dtype=np.float32), "zero_point": zero_point} for sc in scales[1:]]
    bits = tensor_bits(graph, [o.runs_int8 for o in assignment], [o.a_bits for o in assignment])
    # QOperator folds a layer's ReLU into its QLinearConv, whose output is then the Conv's (pre-ReLU) tensor: it
    # takes the ReLU output's grid too.
    pre_relu = {layer.output_tensor: nodes[layer.node].output[0] for layer in graph.layers if layer.relu}
    for name, b in bits.items():
        if name not in tensor_ranges:  # ONNX Runtime calibrates it (timing-only models pass no ranges)
            if b < 8:
                raise SearchError(f"tensor {name}: a {b}-bit grid needs its calibrated range")
            continue
        scale, zp = activation_qparams(*tensor_ranges[name], b)
        grid = [{"scale": np.array(scale, dtype=np.float32), "zero_point": np.array(zp, dtype=np.uint8)}]
        overrides[name] = grid
        if name in pre_relu:
            overrides[pre_relu[name]] = grid
    return overrides


def keep_float_readers_float(path: Path, graph: QuantGraph, assignment: list[BitOption]) -> int:
    """In a QDQ model, let float ops read a float-produced tensor directly instead of its Q/DQ copy.

    ``onnxruntime.quantization`` hands the quantized copy of a tensor to *every* reader. Where the producer is float
    (the model input, a residual Add, a float layer) the float tensor exists anyway, so a float reader (a residual
    Add, a float layer) can take it at no cost; this keeps the exported model what the fake-quant model computes.
    Returns the number of inputs rewired.
    """
    model = onnx.load(str(path))
    int8_nodes = {n for layer, o in zip(graph.layers, assignment) if o.runs_int8 for n in layer.group_nodes}
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name for i in model.graph.initializer}
    dq_source: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] in inits:
            continue
        q = producers.get(node.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = q.input[0]
        origin = producers.get(source)
        if origin is None or origin.name not in int8_nodes:
            dq_source[node.output[0]] = source
    rewired = 0
    for node in model.graph.node:
        if node.name in int8_nodes or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in dq_source:
                node.input[i] = dq_source[name]
                rewired += 1
    if rewired:
        with atomic_path(path) as tmp:
            onnx.save(model, str(tmp))
    return rewired


def quantize_assignment(fp32_onnx: str | Path, graph: QuantGraph, assignment: list[BitOption],
                        calibration_x: torch.Tensor | np.ndarray, out_path: str | Path, fmt: str = "qdq",
                        tensor_ranges: dict[str, tuple[float, float]] | None = None,
                        batch_size: int = 16) -> ExportInfo:
    """Quantize the int8 layers of ``assignment`` in ``fp32_onnx`` (static, calibrated on ``calibration_x``)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if fmt not in FORMATS:
        raise SearchError(f"export format {fmt!r}: use one of {', '.join(FORMATS)}")
    if len(assignment) != len(graph.layers):
        raise SearchError(f"assignment has {len(assignment)} layers; the model has {len(graph.layers)}")
    out_path = Path(out_path)
    chosen = [layer for layer, o in zip(graph.layers, assignment) if o.runs_int8]
    info = ExportInfo(out_path, fmt if chosen else "fp32", [layer.name for layer in chosen],
                      [layer.name for layer, o in zip(graph.layers, assignment) if o.runs_int8 and o.w_bits < 8],
                      [layer.name for layer, o in zip(graph.layers, assignment) if o.runs_int8 and o.a_bits < 8])
    if not chosen:
        with atomic_path(out_path) as tmp:
            shutil.copyfile(fp32_onnx, tmp)
        return info
    model = onnx.load(str(fp32_onnx))
    untied = untie_shared_initializers(model)  # each int8 layer's bias its own, so ONNX Runtime fuses its group
    overrides = quant_overrides(model, graph, assignment, tensor_ranges or {}, fmt)
    x = calibration_x.numpy() if isinstance(calibration_x, torch.Tensor) else calibration_x
    x = np.ascontiguousarray(x, dtype=np.float32)
    with atomic_path(out_path) as tmp, quiet_logging(), tempfile.TemporaryDirectory(prefix="hwnas-q-") as work:
        source = fp32_onnx
        if untied:
            source = Path(work) / "untied.onnx"
            onnx.save(model, str(source))
        quantize_static(str(source), str(tmp), _reader(x, batch_size),
                        quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=int8_weight_type(fmt),
                        nodes_to_quantize=[n for layer in chosen for n in layer.group_nodes],
                        extra_options={"TensorQuantOverrides": overrides})
        if fmt == "qdq":
            keep_float_readers_float(tmp, graph, assignment)
    return info
