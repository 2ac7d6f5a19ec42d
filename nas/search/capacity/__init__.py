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
- ``comparison``: dynamic configs against dense ViTs at equal measured latency (targets relative to a reference
  model, each family chosen on validation under the target, test accuracy as mean ± std over seeds).
- ``diagnostics``: learned vs random token selection, capacity predictor vs gates, a plan's latency by part.
- ``plots``, ``task``: plots; loading data + space + checkpoint together.
"""

from nas import lazy_exports

_EXPORTS = {
    "Candidate": "nas.search.capacity.comparison",
    "CapacityConfig": "nas.search.capacity.config",
    "CapacityConfigError": "nas.search.capacity.config",
    "CapacityEvaluator": "nas.search.capacity.evaluate",
    "CapacityJob": "nas.search.capacity.strategy",
    "CapacityProblem": "nas.search.capacity.search",
    "CapacityStrategy": "nas.search.capacity.strategy",
    "ConfiguredViT": "nas.search.capacity.vit",
    "DynamicViT": "nas.search.capacity.vit",
    "PreparedCapacity": "nas.search.capacity.strategy",
    "calibrate_capacity": "nas.search.capacity.latency",
    "calibration_images": "nas.search.capacity.evaluate",
    "capacity_factor_plan": "nas.search.capacity.config",
    "capacity_profile_items": "nas.search.capacity.latency",
    "compare_at_target": "nas.search.capacity.comparison",
    "dense_variant": "nas.search.capacity.space",
    "export_config": "nas.search.capacity.search",
    "export_plan": "nas.search.capacity.export",
    "interleaved_ms": "nas.search.capacity.export",
    "latency_breakdown": "nas.search.capacity.diagnostics",
    "load_capacity_data": "nas.search.capacity.task",
    "load_capacity_space": "nas.search.capacity.space",
    "load_config_file": "nas.search.capacity.config",
    "load_dynamic_vit": "nas.search.capacity.checkpoint",
    "load_evaluator": "nas.search.capacity.strategy",
    "parse_keep_ratios": "nas.search.capacity.config",
    "plan_accuracy": "nas.search.capacity.training",
    "plan_for_config": "nas.search.capacity.planning",
    "plot_comparison": "nas.search.capacity.plots",
    "plot_curves": "nas.search.capacity.plots",
    "predict_plan": "nas.search.capacity.latency",
    "random_selection_accuracy": "nas.search.capacity.diagnostics",
    "read_sidecar": "nas.search.capacity.checkpoint",
    "relative_targets": "nas.search.capacity.comparison",
    "save_dynamic_vit": "nas.search.capacity.checkpoint",
    "train_dynamic": "nas.search.capacity.training",
    "validate_config": "nas.search.capacity.config",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
