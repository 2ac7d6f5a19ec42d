"""Evaluating one dynamic-capacity config for real: plan, validation accuracy, predicted and measured latency.

Evaluation is inference only (one trained checkpoint serves every config), so every candidate the search
tries is run on the validation split and, optionally, exported and timed on the table's ``Device``. It is the
``Evaluator`` (``nas.search.blackbox.problem``) of ``nas.search.capacity.search.CapacityProblem``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nas.data.dataset import Dataset
from nas.latency.model import LatencyModel
from nas.search.capacity.config import CapacityConfig, StaticPlan
from nas.search.capacity.export import export_plan
from nas.search.capacity.latency import predict_plan
from nas.search.capacity.planning import plan_for_config
from nas.search.capacity.training import plan_accuracy
from nas.search.capacity.vit import DynamicViT

CALIBRATION_IMAGES = 256


def calibration_images(data: Dataset, count: int = CALIBRATION_IMAGES) -> torch.Tensor:
    """Images the threshold is calibrated on: the first ``count`` of the training split (only those are decoded)."""
    return data.train.first(count)


@dataclass
class CapacityEvaluator:
    model: DynamicViT
    data: Dataset
    latency: LatencyModel
    measure: bool = True
    cache: dict = field(default_factory=dict)
    plans: dict = field(default_factory=dict)

    def __post_init__(self):
        self.x_calib = calibration_images(self.data)

    def plan(self, config: CapacityConfig) -> tuple[StaticPlan, list[float]]:
        """The static plan of ``config`` and the loads it was rounded from (calibrated once per config)."""
        name = config.label()
        if name not in self.plans:
            self.plans[name] = plan_for_config(self.model, config, self.x_calib)
        return self.plans[name]

    def predicted_ms(self, config: CapacityConfig) -> float:
        plan, _ = self.plan(config)
        return predict_plan(self.latency, self.model.space, plan).ms

    def evaluate(self, config: CapacityConfig) -> dict:
        """Metrics of one config; repeated configs are answered from the cache."""
        name = config.label()
        if name in self.cache:
            return dict(self.cache[name])
        space = self.model.space
        plan, loads = self.plan(config)
        prediction = predict_plan(self.latency, space, plan)
        row = {"config": name, "keep_ratios": list(config.keep_ratios), "threshold": config.threshold,
               "kept_patches": list(plan.kept_patches), "expert_tokens": list(plan.expert_tokens),
               "expert_loads": [round(x, 3) for x in loads],
               "tokens_per_block": space.block_tokens(list(plan.kept_patches)),
               "val_accuracy": plan_accuracy(self.model, plan, self.data.val),
               "predicted_ms": prediction.ms, "estimated_keys": len(prediction.estimated)}
        if self.measure:
            with tempfile.TemporaryDirectory(prefix="hwnas-capacity-") as tmp:
                path = export_plan(self.model, plan, Path(tmp) / "model.onnx")
                row["measured_ms"] = self.latency.device.time_file(path).p50_ms
        self.cache[name] = dict(row)
        return row
