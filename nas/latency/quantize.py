"""Static int8 quantization of a block's ONNX file with ``onnxruntime.quantization``, for int8 table keys.

A key with ``bits == 8`` is quantized statically, calibrated on random normal inputs (activations uint8,
weights per channel in the type ``int8_weight_type`` chooses for this CPU). Its ``extra`` may choose the export
format and granularity, which matter on CPUs without VNNI (see DESIGN.md): ``qformat=qdq`` (default;
QuantizeLinear/DequantizeLinear pairs) or ``qformat=qop`` (QOperator: QLinearConv ...), and ``qops=all`` (default)
or ``qops=pw`` (only the 1x1 convolutions; the depthwise convs stay fp32). Build such keys with
``format_extra(qformat="qop", qops="pw")``.
"""

from __future__ import annotations

import platform
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx

from nas.arch.opkey import OpKey
from nas.errors import LatencyTableError

QFORMATS = ("qdq", "qop")
QOPS = ("all", "pw")


@lru_cache(maxsize=1)
def int8_weights_saturate() -> bool:
    """Whether this CPU's U8S8 kernels can overflow: x86 without VNNI, where ONNX Runtime uses VPMADDUBSW, which adds
    pairs of uint8 x int8 products in saturating int16 (8-bit weights against large activations overflow: a 32-bit x
    16 px test net's logits moved by 5.3 on an AVX2-only AMD EPYC), as ONNX Runtime's quantization guide warns."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # x86 whose features cannot be read: assume the kernels that can overflow
    return not ("avx512_vnni" in flags or "avx_vnni" in flags)


def int8_weight_type(qformat: str = "qdq"):
    """The weight type of every int8 model hwnas builds in ``qformat`` on this CPU. QDQ: signed (U8S8), or unsigned
    (U8U8) where int8 weights saturate (``int8_weights_saturate``): a symmetric grid stored as uint8 with zero point
    128 holds the same values. QOperator: always signed, since onnxruntime.quantization stores QLinearConv weights
    as int8 whatever type is asked (a uint8 grid there is corrupted); where int8 saturates, QOperator files are not
    shipped (``nas.search.quant.export.exportable_formats``)."""
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if qformat == "qdq" and int8_weights_saturate() else QuantType.QInt8


def int8_options(key: OpKey) -> tuple[str, str]:
    """(qformat, qops) from the key's ``extra``; LatencyTableError naming the key if they are unknown."""
    options = key.extra_args()
    qformat, qops = options.get("qformat", "qdq"), options.get("qops", "all")
    if qformat not in QFORMATS or qops not in QOPS:
        raise LatencyTableError(f"key {key}: qformat must be one of {', '.join(QFORMATS)} and qops one of "
                                f"{', '.join(QOPS)}")
    return qformat, qops


def pointwise_conv_nodes(path: Path) -> list[str]:
    """Names of the Conv nodes with 1x1 kernels and one group (the pointwise convs)."""
    model = onnx.load(str(path))
    init = {t.name: t.dims for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        dims = init.get(node.input[1])
        if dims is not None and list(dims[2:]) == [1, 1] and (group == 1 or group < dims[0]):
            names.append(node.name)
    return names


def untie_shared_initializers(model: onnx.ModelProto) -> int:
    """Give every ``Identity(initializer)`` reader its own copy of the initializer; returns the readers untied.

    torch's exporter stores equal initializers once and reads the copies through Identity nodes (an untrained
    model's batch-norm-folded biases are all zeros, so every layer of a width shares one). onnxruntime.quantization
    leaves such a bias float, and ONNX Runtime then cannot fuse the layer's QuantizeLinear / DequantizeLinear group
    into an int8 kernel: the layer runs as a float Conv whose weights are dequantized at every call (on the 2-vCPU
    VM, a 5x5 depthwise layer at 56 px took 1.35 ms in place of 0.22 ms float and 0.49 ms int8)."""
    inits = {t.name: t for t in model.graph.initializer}
    aliases = {}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            aliases[node.output[0]] = node.input[0]
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in aliases:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[aliases[name]])
                copy.name = name
                model.graph.initializer.append(copy)
                node.input[i] = name
    kept = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in aliases)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return len(aliases)


def quantize_int8(fp32_path: Path, out_path: Path, input_shapes: dict[str, tuple[int, ...]],
                  qformat: str = "qdq", qops: str = "all", samples: int = 8, seed: int = 0) -> Path:
    """Static int8 quantization calibrated on ``samples`` random normal inputs; returns ``out_path``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    rng = np.random.default_rng(seed)

    class RandomReader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{n: rng.standard_normal(s).astype(np.float32) for n, s in input_shapes.items()}
                                 for _ in range(samples)])

        def get_next(self):
            return next(self.batches, None)

    prepped = out_path.with_name(out_path.stem + ".prep.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        source = prepped
    except Exception:  # pre-processing only helps; quantize the plain export if it fails
        source = fp32_path
    nodes = pointwise_conv_nodes(source) if qops == "pw" else None
    if nodes == []:
        raise LatencyTableError(f"{fp32_path.name}: qops=pw but the block has no pointwise convolution")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(source), str(out_path), RandomReader(),
                        quant_format=QuantFormat.QDQ if qformat == "qdq" else QuantFormat.QOperator,
                        activation_type=QuantType.QUInt8, weight_type=int8_weight_type(qformat), per_channel=True,
                        nodes_to_quantize=nodes)
    return out_path
