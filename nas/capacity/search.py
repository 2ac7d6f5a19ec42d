"""``hwnas search capacity``: choose keep ratios and a capacity threshold for a latency budget.

Optuna's TPE sampler proposes configs (a keep ratio per pruning stage and a threshold, from the space's
options) under the constraint ``predicted_ms <= target_ms``; each proposal is evaluated for real by the
``CapacityEvaluator`` (validation accuracy, predicted latency, and measured ONNX Runtime latency). The study
lives in an Optuna journal in the run directory, so an interrupted search resumes where it stopped. The
winner is the most accurate feasible config (ties: the faster), exported with a parity check and timed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import pandas as pd

from nas.capacity.config import CapacityConfig, StaticPlan
from nas.capacity.evaluate import CapacityEvaluator
from nas.capacity.export import export_plan, measure_onnx_ms, onnx_parity
from nas.capacity.latency import plan_keys, predict_plan, require_space_covered
from nas.capacity.training import plan_accuracy
from nas.errors import SearchError
from nas.run import RunDir

TrialCallback = Callable[[int, int, dict], None]  # (done, total, row)
STUDY = "capacity"
FINAL_ROUNDS = 5  # the winner is timed in this many rounds (median), the candidates once


def cheapest_config(evaluator: CapacityEvaluator) -> tuple[CapacityConfig, float]:
    """The config the space's options make fastest (by prediction): smallest keep ratios, and the threshold
    whose calibrated plan is cheapest."""
    space = evaluator.model.space
    ratios = tuple([min(space.spec.pruning.keep_ratio_options)] * len(space.stages))
    best = None
    for threshold in space.spec.moe.threshold_options if space.moe_blocks else [0.5]:
        config = CapacityConfig(ratios, threshold)
        ms = evaluator.predicted_ms(config)
        if best is None or ms < best[1]:
            best = (config, ms)
    return best


def check_target(evaluator: CapacityEvaluator, target_ms: float) -> tuple[CapacityConfig, float]:
    """SearchError when no config of the space can meet ``target_ms`` (``LatencyTableError`` when the fallback
    is disabled and the table lacks a unit some config needs); returns the cheapest config."""
    require_space_covered(evaluator.latency, evaluator.model.space)
    cheapest, cheapest_ms = cheapest_config(evaluator)
    if target_ms < cheapest_ms:
        space = evaluator.model.space
        raise SearchError(f"target {target_ms:g} ms is below the cheapest config of {space.name} on device "
                          f"{evaluator.latency.device_id!r} ({cheapest.label()}: predicted {cheapest_ms:.3f} ms)")
    return cheapest, cheapest_ms


def _open_study(run: RunDir, seed: int):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial's error is raised, not logged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)  # constraints: trial.set_constraint
        storage = JournalStorage(JournalFileBackend(str(run.file("optuna_journal.log"))))
        return optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler, direction="maximize",
                                   load_if_exists=True)


def _completed_rows(study) -> list[dict]:
    import optuna

    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        row = dict(t.user_attrs.get("row", {}))
        if row:
            rows.append({"trial": t.number, **row})
    return rows


def pareto_mask(accuracy: list[float], latency: list[float]) -> list[bool]:
    """True for configs no other config beats on both accuracy (higher) and latency (lower)."""
    keep = []
    for i, (a, t) in enumerate(zip(accuracy, latency)):
        keep.append(not any((a2 >= a and t2 <= t) and (a2 > a or t2 < t)
                            for j, (a2, t2) in enumerate(zip(accuracy, latency)) if j != i))
    return keep


def choose(rows: list[dict], target_ms: float) -> dict | None:
    feasible = [r for r in rows if r["predicted_ms"] <= target_ms]
    if not feasible:
        return None
    return max(feasible, key=lambda r: (round(r["val_accuracy"], 6), -r["predicted_ms"]))


def _frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    for col in ("keep_ratios", "kept_patches", "expert_tokens", "expert_loads", "tokens_per_block"):
        if col in frame:
            frame[col] = frame[col].map(lambda v: " ".join(str(x) for x in v))
    return frame


def search_capacity(evaluator: CapacityEvaluator, target_ms: float, run: RunDir, *, trials: int = 40,
                    seed: int = 0, on_trial: TrialCallback | None = None) -> list[dict]:
    """Run (or resume) the study until ``trials`` configs are complete; write history.csv and pareto.csv."""
    space = evaluator.model.space
    cheapest, _ = check_target(evaluator, target_ms)
    study = _open_study(run, seed)
    rows = _completed_rows(study)
    evaluator.cache.update({r["config"]: {k: v for k, v in r.items() if k != "trial"} for r in rows})
    if not rows:  # anchor the study: no pruning at the lowest threshold, a middle config, and the cheapest
        options = space.spec.pruning.keep_ratio_options
        middle = options[len(options) // 2]
        thresholds = space.spec.moe.threshold_options
        for ratios, thr in (([1.0] * len(space.stages), thresholds[0]),
                            ([middle] * len(space.stages), thresholds[len(thresholds) // 2]),
                            (list(cheapest.keep_ratios), cheapest.threshold)):
            study.enqueue_trial({**{f"keep_{s}": r for s, r in enumerate(ratios)}, "threshold": thr},
                                skip_if_exists=True)

    if rows and on_trial is not None:  # resumed: report what is already done
        on_trial(len(rows), trials, rows[-1])

    def objective(trial) -> float:
        ratios = tuple(trial.suggest_categorical(f"keep_{s}", space.spec.pruning.keep_ratio_options)
                       for s in range(len(space.stages)))
        threshold = trial.suggest_categorical("threshold", space.spec.moe.threshold_options) \
            if space.moe_blocks else 0.5
        row = evaluator.evaluate(CapacityConfig(ratios, threshold))
        trial.set_user_attr("row", row)
        trial.set_constraint("latency", row["predicted_ms"] - target_ms)
        return row["val_accuracy"]

    while len(rows) < trials:
        study.optimize(objective, n_trials=1)
        rows = _completed_rows(study)
        run.write_csv("history.csv", _frame(rows))
        if on_trial is not None:
            on_trial(len(rows), trials, rows[-1])
    run.write_csv("history.csv", _frame(rows))
    write_pareto(run, rows, target_ms)
    return rows


def write_pareto(run: RunDir, rows: list[dict], target_ms: float) -> Path:
    """pareto.csv: every config tried, with accuracy, predicted and measured latency and Pareto flags."""
    unique = list({r["config"]: r for r in rows}.values())
    acc = [r["val_accuracy"] for r in unique]
    frame = _frame(unique)
    frame["feasible"] = [r["predicted_ms"] <= target_ms for r in unique]
    frame["pareto_predicted"] = pareto_mask(acc, [r["predicted_ms"] for r in unique])
    if all("measured_ms" in r for r in unique):
        frame["pareto_measured"] = pareto_mask(acc, [r["measured_ms"] for r in unique])
    frame = frame.sort_values("predicted_ms").drop(columns=[c for c in ("trial",) if c in frame])
    return run.write_csv("pareto.csv", frame)


def finalize(evaluator: CapacityEvaluator, rows: list[dict], target_ms: float, run: RunDir) -> dict:
    """Export the winner of a search (see ``export_config``)."""
    best = choose(rows, target_ms)
    if best is None:
        raise SearchError(f"no config tried meets {target_ms:g} ms (predicted); raise --target-ms or --trials")
    return export_config(evaluator, best, run, target_ms, trials=len(rows))


def export_config(evaluator: CapacityEvaluator, row: dict, run: RunDir, target_ms: float | None = None,
                  trials: int = 1) -> dict:
    """capacity.json, model.onnx (parity-checked on the test split) and report.json with measured vs predicted."""
    model, data, space = evaluator.model, evaluator.data, evaluator.model.space
    config = CapacityConfig(tuple(row["keep_ratios"]), row["threshold"])
    plan = StaticPlan(tuple(row["kept_patches"]), tuple(row["expert_tokens"]))
    prediction = predict_plan(evaluator.latency, space, plan)
    run.write_json("capacity.json", {"space": space.name, "space_fingerprint": space.fingerprint(),
                                     "space_args": space.space_args(), "config": config.to_dict(),
                                     "plan": plan.to_dict(), "expert_loads": row["expert_loads"],
                                     "tokens_per_block": row["tokens_per_block"],
                                     "keys": [str(k) for k in plan_keys(space, plan)]})
    onnx_path = export_plan(model, plan, run.file("model.onnx"))
    parity = onnx_parity(model, plan, onnx_path, data.x_test, data.y_test)
    measured = measure_onnx_ms(onnx_path, evaluator.latency.table.manifest, rounds=FINAL_ROUNDS)
    report = {
        "space": space.name, "device": evaluator.latency.device_id, "target_ms": target_ms,
        "config": config.to_dict(), "plan": plan.to_dict(),
        "val_accuracy": row["val_accuracy"],
        "accuracy": plan_accuracy(model, plan, data.x_test, data.y_test), **parity,
        "predicted_ms": prediction.ms, "estimated_keys": [str(k) for k in prediction.estimated],
        **measured,
        "measured_vs_predicted": measured["measured_ms"] / prediction.ms - 1,
        "within_10pct_of_prediction": abs(measured["measured_ms"] / prediction.ms - 1) <= 0.10,
    }
    if target_ms is not None:
        report |= {"measured_vs_target": measured["measured_ms"] / target_ms - 1,
                   "meets_target": measured["measured_ms"] <= 1.10 * target_ms}
    report |= {"trials": trials, "latency_model": evaluator.latency.describe(), "warnings": prediction.warnings,
               "onnx": onnx_path.name}
    run.write_json("report.json", report)
    return report
