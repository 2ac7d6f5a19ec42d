"""Capacity search as a ``SearchProblem`` (``nas.search.blackbox.problem``): keep ratios x threshold are the decisions.

A genome holds a keep ratio per pruning stage (``keep_0``, ``keep_1`` ...) and the MoE capacity threshold, each an
option of the space. Latency is the table's prediction of the config's static plan (free: calibration is
inference on a few training images, cached per config); the expensive evaluation is the ``CapacityEvaluator``
(validation accuracy, and measured ONNX Runtime latency). The predictor searches' runner, history and Pareto code
search it (``nas.search.capacity.strategy``). ``export_config`` ships one config: ``arch.json`` (space and config),
``capacity.json`` (its static plan), ``model.onnx`` (parity-checked on the test split, timed on the table's
device) and its report.
"""

from __future__ import annotations

import numpy as np

from nas.errors import SearchError
from nas.run import RunDir
from nas.search.blackbox.decisions import Decision, DecisionSpace
from nas.search.blackbox.problem import SearchProblem
from nas.search.capacity.config import CapacityConfig
from nas.search.capacity.evaluate import CapacityEvaluator
from nas.search.capacity.export import export_plan, onnx_parity
from nas.search.capacity.latency import plan_keys, predict_plan, require_space_covered
from nas.search.report import MODEL, build_report, latency_remedies

OBJECTIVE = "val_accuracy"
FIGURES = ("val_accuracy", "predicted_ms", "measured_ms", "estimated_keys")  # the numbers history.csv keeps
NO_MOE_THRESHOLD = 0.5  # the threshold of a space without MoE blocks (it changes nothing)


class CapacityProblem(SearchProblem):
    """The configs of a trained dynamic-capacity ViT on one device; evaluation by ``CapacityEvaluator``."""

    kind = "capacity"

    def __init__(self, evaluator: CapacityEvaluator):
        self.evaluator = evaluator
        space = evaluator.model.space
        self.capacity_space = space
        decisions = [Decision(f"keep_{s}", "ord", tuple(sorted(space.spec.pruning.keep_ratio_options)))
                     for s in range(len(space.stages))]
        if space.moe_blocks:
            decisions.append(Decision("threshold", "ord", tuple(sorted(space.spec.moe.threshold_options))))
        self.space = DecisionSpace(decisions)
        self.objective, self.maximize = OBJECTIVE, True
        self.devices = [evaluator.latency.device_id]
        self.proxy_names = []

    def config(self, genome: np.ndarray) -> CapacityConfig:
        values = self.space.describe(genome)
        ratios = tuple(float(values[f"keep_{s}"]) for s in range(len(self.capacity_space.stages)))
        return CapacityConfig(ratios, float(values.get("threshold", NO_MOE_THRESHOLD)))

    def genome_of(self, config: CapacityConfig) -> np.ndarray:
        values = {f"keep_{s}": r for s, r in enumerate(config.keep_ratios)}
        if self.capacity_space.moe_blocks:
            values["threshold"] = config.threshold
        return self.space.genome(values)

    def latency_ms(self, genomes: np.ndarray) -> np.ndarray:
        genomes = np.atleast_2d(genomes)
        return np.asarray([[self.evaluator.predicted_ms(self.config(g))] for g in genomes], float)

    def proxies(self, genomes: np.ndarray) -> np.ndarray:
        return np.zeros((len(np.atleast_2d(genomes)), 0))

    def evaluate(self, genome: np.ndarray) -> dict[str, float]:
        row = self.evaluator.evaluate(self.config(genome))
        return {k: float(row[k]) for k in FIGURES if k in row}

    def cheapest(self) -> tuple[CapacityConfig, float]:
        """The config the space's options make fastest (by prediction): smallest keep ratios, and the threshold
        whose calibrated plan is cheapest."""
        space = self.capacity_space
        ratios = tuple([min(space.spec.pruning.keep_ratio_options)] * len(space.stages))
        thresholds = space.spec.moe.threshold_options if space.moe_blocks else [NO_MOE_THRESHOLD]
        configs = [CapacityConfig(ratios, t) for t in thresholds]
        ms = [self.evaluator.predicted_ms(c) for c in configs]
        best = int(np.argmin(ms))
        return configs[best], ms[best]

    def full(self) -> CapacityConfig:
        """The config with the most capacity: no pruning, at the lowest threshold."""
        space = self.capacity_space
        thresholds = space.spec.moe.threshold_options if space.moe_blocks else [NO_MOE_THRESHOLD]
        return CapacityConfig((1.0,) * len(space.stages), float(min(thresholds)))

    def random_configs_ms(self, n: int, seed: int) -> np.ndarray:
        """Predicted latency of ``n`` configs drawn uniformly from the options (from ``seed``): what a percentile
        target is read off."""
        return self.latency_ms(self.space.sample(n, np.random.default_rng(seed)))[:, 0]

    def anchors(self) -> list[dict]:
        """Decision values evaluated first: no pruning at the lowest threshold, a middle config, the cheapest."""
        space = self.capacity_space
        options = space.spec.pruning.keep_ratio_options
        thresholds = space.spec.moe.threshold_options
        stages = len(space.stages)
        cheapest, _ = self.cheapest()
        configs = [self.full(),
                   CapacityConfig((options[len(options) // 2],) * stages, thresholds[len(thresholds) // 2]),
                   cheapest]
        return [self.space.describe(self.genome_of(c)) for c in configs]

    def check_target(self, target_ms: float) -> None:
        """SearchError when no config of the space can meet ``target_ms`` (``LatencyTableError`` when the fallback
        is disabled and the table lacks a unit some config needs)."""
        require_space_covered(self.evaluator.latency, self.capacity_space)
        cheapest, cheapest_ms = self.cheapest()
        if target_ms < cheapest_ms:
            raise SearchError(f"target {target_ms:g} ms is below the cheapest config of {self.capacity_space.name} "
                              f"on device {self.devices[0]!r} ({cheapest.label()}: predicted {cheapest_ms:.3f} ms)")


def export_config(evaluator: CapacityEvaluator, config: CapacityConfig, run: RunDir, *, method: str,
                  target_ms: float | None = None, detail: dict | None = None, target: str | None = None,
                  warnings: tuple[str, ...] = ()) -> dict:
    """``capacity.json``, ``model.onnx`` (parity-checked on the test split, timed on the table's device) and the
    report (returned; the caller writes it): measured against predicted, and against ``target_ms`` if given."""
    from nas.latency.drift import measure_shipped
    from nas.latency.measurement import measuring_device

    model, data, space = evaluator.model, evaluator.data, evaluator.model.space
    row = evaluator.evaluate(config)
    plan, _ = evaluator.plan(config)
    prediction = predict_plan(evaluator.latency, space, plan)
    run.write_json("arch.json", {"space": space.name, "space_fingerprint": space.fingerprint(),
                                 "space_args": space.space_args(), "config": config.to_dict()})
    run.write_json("capacity.json", {"space": space.name, "space_fingerprint": space.fingerprint(),
                                     "space_args": space.space_args(), "config": config.to_dict(),
                                     "plan": plan.to_dict(), "expert_loads": row["expert_loads"],
                                     "tokens_per_block": row["tokens_per_block"],
                                     "keys": [str(k) for k in plan_keys(space, plan)]})
    onnx_path = export_plan(model, plan, run.file("model.onnx"))
    parity = onnx_parity(model, plan, onnx_path, data.test)
    measure_on = measuring_device(evaluator.latency.device)
    measurement = measure_shipped(onnx_path, measure_on, table=evaluator.latency.table)
    measured = measurement.p50_ms
    error = measured / prediction.ms - 1
    tables_dir = evaluator.latency.table.folder.parent
    reprofile = (f"hwnas latency profile-capacity --space {space.name} --device {evaluator.latency.device_id} "
                 f"--tables-dir {tables_dir}")
    figures = {"config": config.to_dict(), "plan": plan.to_dict(), "val_accuracy": row["val_accuracy"],
               "accuracy_onnx": parity["accuracy_onnx"], "onnx_top1_agreement": parity["onnx_top1_agreement"],
               "estimated_keys": [str(k) for k in prediction.estimated], "measured_p90_ms": measurement.p90_ms,
               "timing": measure_on.device.to_dict(), "measurement_note": measure_on.note,
               "within_10pct_of_prediction": abs(error) <= 0.10,
               "measured_vs_target_pct": None if target_ms is None else 100.0 * (measured / target_ms - 1),
               "latency_model": evaluator.latency.describe(), "warnings": prediction.warnings, **(detail or {})}
    return build_report(method, device=evaluator.latency.device_id,
                        accuracy=parity["accuracy"],
                        predicted_ms=prediction.ms, measured_ms=measured,
                        onnx_max_abs_diff=parity["onnx_max_abs_diff"], target_ms=target_ms, target=target,
                        measurement=measurement, warnings=[*warnings, *prediction.warnings], detail=figures,
                        remedies=latency_remedies(evaluator.latency.device_id, tables_dir=tables_dir,
                                                  model_path=run.file(MODEL), reprofile=reprofile))
