"""Per-device latency tables measured with ONNX Runtime, and the LatencyModel every search uses.

Entry points: ``LatencyModel``, ``Prediction``, ``ProfileItem``, ``profile_items``, ``space_profile_items``,
``predict_onnx``, ``adapt_here``, and the CLI commands ``hwnas latency profile | show | predict | validate | check |
bundle | import | adapt`` (``predict MODEL.onnx`` for any ONNX model). A quick table for tests
(a few seconds)::

    space = load_space("fbnet", resolution=32, width_multiplier=0.25, classes=10)
    device = Device(device_id="t")                                   # provider, threads, optimisation, clock
    profile_items(device, space_profile_items(space), tables_dir=tmp_path)       # add bits=(32, 8) for int8
    calibrate(device, space, models=4, tables_dir=tmp_path)                       # optional: fits correction.json
    lm = LatencyModel.load("t", tables_dir=tmp_path)

Files in ``latency_tables/<device-id>/`` (base folder ``$HWNAS_LATENCY_TABLES`` or ``./latency_tables``):
``device.json`` (manifest), ``table.csv`` (one row per op key), ``call_overhead.json``, ``calibration.csv``
(whole models measured on the device), ``mixed_calibration.csv`` (whole mixed-precision models) and
``correction.json`` (fitted ``base_ms``, ``scale``, ``per_block_ms``, ``per_reorder_ms``, ``per_weight_mb_ms`` and
the ``precision`` terms), ``layouts.csv`` (each block's memory layout as ONNX Runtime's optimised graph runs it, at
level ``all`` on the CPU provider), ``reference/`` (the reference models), and for ONNX models ``kernels.csv`` and
``kernel_correction.json``.

Modules:
- ``table``: ``LatencyTable`` (lock-safe appends, CRC-checked rows, truncation detection), ``DeviceManifest``.
- ``device``: ``Device`` (provider, threads, optimisation, clock, batch from a table's manifest): opens sessions and
  times ONNX files; every ``measured_ms`` comes from it.
- ``timing``: ``TimingConfig`` (wall or per-thread CPU clock), ``LatencyStats``, interleaved timing.
- ``overhead``: ``CallOverhead``, the fixed and per-byte cost of one ``session.run``, fitted on pass-through graphs.
- ``measurement``: ``Measurement``, a shipped model timed (what a verdict is judged on), with its ``on_device`` flag;
  ``measuring_device``: where a model is timed from here (``MeasuringDevice``: on the device itself, or on this CPU
  with a note).
- ``remote_measure``: the interleaved timing algorithm, and the standalone ``measure.py`` shipped in bundles.
- ``profile``: ``ProfileItem``, ``profile_items`` (resumable, concurrent-safe, skips identity blocks),
  ``space_profile_items``, ``space_layer_keys``, ``block_item``.
- ``quantize``: static int8 (QDQ by default; ``extra`` "qformat=qop", "qops=pw" choose format and granularity).
- ``calibrate``: whole-model calibration (``calibrate_models`` for every space kind, timed by the ``Device``),
  mixed-precision calibration rows, and the refit of ``correction.json``.
- ``relative``: reference-relative timing: files timed interleaved with reference models, their speed now against
  calibration fitted over model size (``SpeedFit``), each time expressed at calibration speed.
- ``drift``: reference models kept at calibration (``reference/``), ``time_against_references`` (the one code path
  of validate, check and a search's final measurement), ``check_drift`` (``hwnas latency check``), ``recalibrate``
  (one global rescale), ``measure_shipped`` (a search's final measurement, timed with the references).
- ``correction``: ``Correction`` (with ``PrecisionTerms``) and its least-squares fit.
- ``layout``: ``BlockLayout`` (a block's NCHWc entry, exit, residual and reorders, read from its optimised graph when
  profiled) and the walk over a model's blocks that counts the layout reorders ONNX Runtime runs beyond the blocks'
  own (``extra_reorders``; ``ExpectedReorders`` for DNAS): the one term of the prediction that is not a sum.
- ``features``: key features (analytic MACs, params, bytes) for the fallback regressor.
- ``model``: ``LatencyModel`` (``block_cost_ms``, ``is_estimated``, ``base_ms``, ``total_ms`` (the one base + sum),
  ``predict_keys``, ``arch_keys``, ``predict``, ``cost_table`` (block positions -> cost arrays), ``cost_tensor``,
  ``expected_ms``, ``precision_costs``), ``PositionCosts``, ``Prediction``, ``FallbackRegressor``.
- ``precision``: a quantisable model as keys (``PrecisionGraph``: layers at fp32 / int8, edges with their transition
  keys), its ``PrecisionCostTable`` (the one mixed-precision formula, exact and differentiable), ``int8_speedups``.
- ``validate``: random archs measured end to end (at calibration speed) against predictions (within_5pct /
  within_10pct, MAPE, bias, Kendall tau, and the raw times' bias and the drift beside them).
- ``kernels``: any ONNX model as the kernels ONNX Runtime runs after optimising it at the device's level (keys,
  analytic sizes, single-node models fed with what the kernel sees in the model).
- ``kernel_table``: the device's kernel table (``kernels.csv``: kernels timed alone with the reference models) and
  the correction from their sum to a whole model (``kernel_correction.json``).
- ``onnx_predict``: ``predict_onnx`` (``hwnas latency predict MODEL.onnx``): per-kernel breakdown and total, missing
  kernels profiled (``--profile``) or estimated by a kernel regressor and flagged.
- ``adapt``: device B's table from device A's and <= 20 whole models measured on B (``hwnas latency adapt``).
- ``bundle``: ``write_bundle`` (zip for a remote device) and ``import_results`` (its results as a new device).
"""

from nas import lazy_exports

_EXPORTS = {
    "CalibrationModel": "nas.latency.calibrate",
    "KernelGraph": "nas.latency.kernels",
    "OnnxPrediction": "nas.latency.onnx_predict",
    "RelativeTiming": "nas.latency.relative",
    "SpeedFit": "nas.latency.relative",
    "adapt_device": "nas.latency.adapt",
    "adapt_here": "nas.latency.adapt",
    "kernel_graph": "nas.latency.kernels",
    "predict_onnx": "nas.latency.onnx_predict",
    "time_against_references": "nas.latency.drift",
    "time_with_references": "nas.latency.relative",
    "Device": "nas.latency.device",
    "DeviceManifest": "nas.latency.table",
    "FEATURE_NAMES": "nas.latency.features",
    "FallbackRegressor": "nas.latency.model",
    "LatencyModel": "nas.latency.model",
    "LatencyTable": "nas.latency.table",
    "Measurement": "nas.latency.measurement",
    "MeasuringDevice": "nas.latency.measurement",
    "PrecisionCostTable": "nas.latency.precision",
    "PrecisionEdge": "nas.latency.precision",
    "PrecisionGraph": "nas.latency.precision",
    "PrecisionLayer": "nas.latency.precision",
    "PrecisionTerms": "nas.latency.correction",
    "Prediction": "nas.latency.model",
    "ProfileItem": "nas.latency.profile",
    "TimingConfig": "nas.latency.timing",
    "append_precision_row": "nas.latency.calibrate",
    "block_item": "nas.latency.profile",
    "calibrate": "nas.latency.calibrate",
    "calibrate_models": "nas.latency.calibrate",
    "check_clock": "nas.latency.timing",
    "check_drift": "nas.latency.drift",
    "check_provider": "nas.latency.device",
    "cpu_model": "nas.latency.remote_measure",
    "drift_before_measuring": "nas.latency.drift",
    "import_results": "nas.latency.bundle",
    "int8_speedups": "nas.latency.precision",
    "key_family": "nas.latency.correction",
    "key_features": "nas.latency.features",
    "key_is_identity": "nas.latency.profile",
    "list_devices": "nas.latency.table",
    "measure_shipped": "nas.latency.drift",
    "measuring_device": "nas.latency.measurement",
    "precision_terms_matrix": "nas.latency.calibrate",
    "profile_items": "nas.latency.profile",
    "read_manifest": "nas.latency.table",
    "read_precision_rows": "nas.latency.calibrate",
    "recalibrate": "nas.latency.drift",
    "refit_precision": "nas.latency.calibrate",
    "space_layer_keys": "nas.latency.profile",
    "space_profile_items": "nas.latency.profile",
    "tables_root": "nas.latency.table",
    "validate": "nas.latency.validate",
    "write_bundle": "nas.latency.bundle",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
