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
