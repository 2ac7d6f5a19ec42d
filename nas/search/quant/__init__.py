"""Mixed-precision quantization: per-layer bit-widths by DNAS, costed on a device, exported to ONNX int8 / fp32.

Modules:
- ``fake``: fake quantization with a straight-through estimator (weights per channel, activations per tensor).
- ``mixed``: ``BitOption`` and the bit-width supernet ``MixedPrecisionNet`` (Gumbel-softmax over shared-weight
  fake-quantized branches; fixed assignments for fine-tuning and export).
- ``graph``: the model's conv / linear layers in its ONNX graph, and the tensors between them (transitions).
- ``costs``: the ``size``, ``bitops`` and ``latency`` costs, exact per assignment and differentiable in expectation
  (``latency`` is a view of the LatencyModel's precision cost table, ``nas.latency.precision``).
- ``profile``: per-layer fp32 / int8 and Quantize/Dequantize transition keys (``precision_graph``), measured into
  the device's table.
- ``latency_fit``: whole mixed models measured for the device's precision terms (``correction.json``).
- ``export``: an assignment as an ONNX model with ``onnxruntime.quantization`` (only the chosen layers quantized).
- ``search``: the bit-width DNAS loop (resumable) and target repair.
- ``prepare``: settings, checks and costs before a run (``MixedPrecisionJob``, ``prepare_mixed_precision``).
- ``pipeline``: the whole run behind ``hwnas search mixed-precision`` (``MixedPrecisionStrategy``).
- ``plot``: the per-layer bits PNG.
"""

from nas import lazy_exports

_EXPORTS = {
    "BitOption": "nas.search.quant.mixed",
    "MixedPrecisionConfig": "nas.search.quant.prepare",
    "MixedPrecisionJob": "nas.search.quant.prepare",
    "MixedPrecisionNet": "nas.search.quant.mixed",
    "SearchConfig": "nas.search.quant.search",
    "SizeCost": "nas.search.quant.costs",
    "attach_onnx": "nas.search.quant.graph",
    "layer_items": "nas.search.quant.profile",
    "precision_graph": "nas.search.quant.profile",
    "prepare_mixed_precision": "nas.search.quant.prepare",
    "run_mixed_precision": "nas.search.quant.pipeline",
    "trace_layers": "nas.search.quant.graph",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
