"""Dynamic-capacity vision transformers: token keep ratios (DynamicViT) and MoE capacity (DiffMoE), chosen for
a latency budget against token-count-keyed latency tables, and exported to ONNX.

Modules:
- ``space``: the ``kind: vit_capacity`` YAML schema (``load_capacity_space``), token arithmetic, ``dense_variant``.
- ``config``: ``CapacityConfig`` (keep ratio per stage + threshold), ``StaticPlan`` (tokens kept, tokens per expert).
- ``blocks``: patch embedding, attention (with DynamicViT masking), MLP, ``TokenScorer``, ``TokenSelect`` (TopK+Gather).
- ``moe``: ``MoEBlock`` (batch-pool expert choice in training, capacity predictor, static per-expert capacity).
- ``vit``: ``DynamicViT`` (training / static / per-image-threshold paths), ``ConfiguredViT`` (one plan, for export).
- ``training``: once-for-all training with configs sampled per batch (resumable).
- ``checkpoint``: state dict + JSON sidecar naming the space; rejects checkpoints of other spaces.
- ``planning``: threshold -> per-block expert capacities by calibration (``plan_for_config``).
- ``latency``: unit op keys by token count, ``ProfileItem``s for the shared profiler, ``predict_plan``, whole-model
  calibration of the device correction.
- ``export``: ONNX export of a plan, parity, timing with the device table's settings.
- ``evaluate``: ``CapacityEvaluator`` (accuracy, predicted and measured latency of one config).
- ``search``: ``CapacityProblem`` (a ``SearchProblem``: keep ratios x threshold) and ``export_config`` (arch.json,
  capacity.json, model.onnx, the report).
- ``strategy``: ``CapacityStrategy``: Optuna (predict's runner) over the problem, pareto.csv, the winner, plots.
- ``plots``, ``task``: plots; loading data + space + checkpoint together.
"""
