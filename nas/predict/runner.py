"""``hwnas search nars|chamnet|optuna``: run a predictor-guided search into a run directory.

Writes ``config.json``, ``history.csv`` (every evaluation in order, predicted and actual figures), ``pareto.csv``
(the best evaluated candidate under each latency constraint), ``best/<constraint>/`` (``arch.json`` and
``recipe.json`` for model spaces, ``candidate.json`` for tables), ``report.json``, ``pareto.png`` and
``predictions.png``; for Optuna also ``study.db``. On model spaces the winner of the first constraint (or of
every constraint with ``export="all"``) is trained with its recipe, exported to ``model.onnx``, checked for
output parity and its latency measured (``nas.finalize.train_export_measure``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nas.predict.history import History
from nas.predict.nars import NarsConfig, run_nars
from nas.predict.predictors import torch_threads
from nas.predict.pareto import family, pareto_mask, plot_pareto, plot_predictions
from nas.predict.problem import Constraint, ModelProblem, SearchProblem
from nas.predict.search_setup import SearchSettings, build_constraints, build_problem
from nas.run import RunDir

EventCallback = Callable[[str, dict], None]


@dataclass
class PreparedSearch:
    settings: SearchSettings
    problem: SearchProblem
    constraints: list[Constraint]
    constraints_auto: bool
    run: RunDir


def prepare_search(settings: SearchSettings, out: str | Path) -> PreparedSearch:
    """Validate everything a user can get wrong (settings, table, space, devices, constraints, storage), then
    open the run directory. Nothing is written before the checks pass."""
    settings.validate()
    problem = build_problem(settings, out)
    constraints, auto = build_constraints(settings, problem)
    problem.check_constraints(constraints, _probe(settings, problem))
    if settings.strategy == "optuna" and settings.storage:
        from nas.predict.optuna_search import open_storage
        open_storage(settings.storage)
    return PreparedSearch(settings, problem, constraints, auto, RunDir(out, settings.config()))


def run_search(prepared: PreparedSearch, *, on_event: EventCallback | None = None,
               on_epoch: Callable[[int, dict], None] | None = None) -> dict:
    emit = on_event or (lambda kind, info: None)
    settings, problem, constraints, run = prepared.settings, prepared.problem, prepared.constraints, prepared.run
    auto = prepared.constraints_auto
    if on_epoch is not None and hasattr(getattr(problem, "evaluator", None), "on_epoch"):
        problem.evaluator.on_epoch = on_epoch
    emit("start", {"constraints": [c.label for c in constraints], "auto": auto, "resumed": run.resumed,
                   "devices": problem.devices, "objective": problem.objective})
    report: dict = {"strategy": settings.strategy, "space": settings.space, "objective": problem.objective,
                    "direction": settings.direction, "devices": problem.devices, "budget": settings.budget,
                    "seed": settings.seed, "constraints": [c.to_dict() for c in constraints],
                    "constraints_chosen_automatically": auto, "warnings": list(getattr(problem.space, "warnings", []))}
    if settings.strategy == "optuna":
        history = _run_optuna(settings, problem, constraints, run, emit, report)
    else:
        history = History(problem, settings.budget, constraints, run.file("history.csv"),
                          on_eval=lambda row: emit("eval", row))
        if history.resumed:
            emit("resume", {"stored": history.resumed})
        config = NarsConfig(budget=settings.budget, seed=settings.seed,
                            predictor="gp" if settings.strategy == "chamnet" else "mlp", init=settings.init,
                            batch=settings.batch, pool=settings.pool, pretrain=settings.pretrain,
                            population=settings.population, generations=settings.generations)
        result = run_nars(problem, constraints, history, config, on_event=emit)
        report["predictor"] = {
            "kind": "FBNetV3 MLP (ArchRecipePredictor)" if config.predictor == "mlp" else "ChamNet GP (gpytorch)",
            "pretrained_on_proxies": bool(config.predictor == "mlp" and config.pretrain and problem.proxy_names),
            "proxies": problem.proxy_names, "pretrain_loss": result.pretrain_loss,
            "heldout_kendall_tau": result.heldout_tau, "cv_kendall_tau": result.cv_tau, "rounds": result.rounds}
        report["pool"] = {"size": result.pool_size, "feasible": result.pool_feasible}
        if result.evolution is not None:
            evo = result.evolution
            report["evolution"] = {"exhaustive": problem.finite, "scored": evo.scored,
                                   "generations": evo.generations, "seconds": evo.seconds,
                                   "cpu_seconds": evo.cpu_seconds,
                                   "candidates_per_cpu_minute": evo.candidates_per_cpu_minute,
                                   "winners": result.predicted_winners}
    report["evaluations"] = history.used
    _write_outputs(run, problem, history, constraints, report)
    if isinstance(problem, ModelProblem) and settings.export != "none" and history.used:
        report["export"] = _export(run, problem, history, constraints, settings, emit)
    report = _finite(report)
    run.write_json("report.json", report)
    return report


def _finite(obj):
    """NaN and infinities as null, so that report.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _run_optuna(settings, problem, constraints, run, emit, report) -> History:
    from nas.predict.optuna_search import OptunaConfig, default_storage_url, evaluated_trials, open_study, run_optuna

    url = settings.storage or default_storage_url(run.path)
    config = OptunaConfig(budget=settings.budget, seed=settings.seed, sampler=settings.sampler, storage=url,
                          study=settings.study, lock_path=str(run.file(".budget.lock")), workers=settings.workers)
    factory = functools.partial(build_problem, settings, run.path)
    stats = run_optuna(problem, factory, constraints, config, on_progress=lambda n: emit("progress", {"done": n}))
    study = open_study(config, problem)
    history = History(problem, settings.budget, constraints, None)
    for t in evaluated_trials(study):
        genome = np.asarray(t.user_attrs["genome"], float)
        history.record(genome, "optuna", t.user_attrs["metrics"], float(t.user_attrs.get("seconds", np.nan)),
                       extra={"trial": t.number})
    history.path = run.file("history.csv")
    history.save()
    if stats["evaluations"] < settings.budget:
        report["warnings"].append(f"Optuna stopped at {stats['evaluations']} of {settings.budget} evaluations: its "
                                  f"sampler kept proposing candidates that break the constraint or were evaluated")
    report["optuna"] = {**stats, "sampler": settings.sampler, "storage": url, "study": settings.study,
                        "dashboard": f"optuna-dashboard {url}"}
    return history


def _probe(settings: SearchSettings, problem: SearchProblem) -> np.ndarray:
    """Candidates to check the constraints against: a table's rows, or the Sobol pool and the smallest archs."""
    if problem.finite:
        return problem.all_candidates()
    return np.concatenate([problem.pool(settings.pool, settings.seed), problem.smallest_genomes()])


def _write_outputs(run: RunDir, problem: SearchProblem, history: History, constraints: list[Constraint],
                   report: dict) -> None:
    if not history.used:
        return
    frame = history.frame()
    frame["pareto_front"] = pareto_mask(history.scores(), history.latency_array()) if problem.devices \
        else history.scores() == history.scores().max()
    run.write_csv("history.csv", frame)
    fam = family(history, constraints)
    run.write_csv("pareto.csv", fam)
    winners = []
    for c, (_, row) in zip(constraints, fam.iterrows()):
        entry = {"constraint": c.label, "found": bool(row["found"])}
        i = history.best_under(c)
        if i is not None:
            h = history.rows[i]
            entry.update({"eval": int(h["eval"]), problem.objective: h[problem.objective],
                          "latency_ms": {d: h[f"latency_ms[{d}]"] for d in problem.devices},
                          "decisions": problem.describe(history.genomes[i])})
            folder = f"best/{c.slug}"
            if isinstance(problem, ModelProblem):
                from nas.space import arch_document
                cand = problem.joint.candidate(history.genomes[i])
                run.write_json(f"{folder}/arch.json", arch_document(problem.joint.space, cand.arch))
                run.write_json(f"{folder}/recipe.json", cand.recipe.model_dump())
            else:
                metrics = {k[2:]: v for k, v in h.items() if k.startswith("m:")}
                run.write_json(f"{folder}/candidate.json", {"row": int(problem.table.source_rows[
                    problem.table.row_of(history.genomes[i][None, :])[0]]) + 1,
                    "decisions": entry["decisions"], "metrics": metrics})
        winners.append(entry)
    report["winners"] = winners
    plot_pareto(run.file("pareto.png"), history, constraints,
                title=f"{report['strategy']} on {Path(report['space']).name}: {history.used} evaluations")
    plot_predictions(run.file("predictions.png"), history, title="predictions made before each evaluation")


def _export(run: RunDir, problem: ModelProblem, history: History, constraints: list[Constraint],
            settings: SearchSettings, emit: EventCallback) -> list[dict]:
    from nas.finalize import train_export_measure

    space = problem.joint.space
    device = problem.devices[0]
    lm = problem.costs.latency_models[device]
    measure_on, note = lm.device, ""
    if not measure_on.runs_here:
        measure_on = measure_on.or_local_cpu()
        note = f"device {device!r} uses {lm.device.provider}, not available here: measured on this CPU instead"
    elif measure_on.remote:
        note = f"device {device!r} was measured elsewhere: measured_ms is this machine's, not the device's"
    exports, seen = [], set()
    targets = constraints if settings.export == "all" else constraints[:1]
    for k, c in enumerate(targets):
        i = history.best_under(c)
        if i is None:
            continue
        key = history.rows[i]["key"]
        prefix = "" if k == 0 else f"{c.slug}_"
        if key in seen:
            continue
        seen.add(key)
        cand = problem.joint.candidate(history.genomes[i])
        emit("export", {"constraint": c.label, "epochs": cand.recipe.epochs})
        with torch_threads(1):  # see TrainEvaluator: oneDNN heap corruption with 2 threads on some small archs
            rep = train_export_measure(space, cand.arch, problem.data, cand.recipe, run, device=measure_on,
                                       prefix=prefix, predict_ms=lambda a: lm.predict(space, a),
                                       on_epoch=lambda e, row: emit("export_epoch", {"epoch": e, **row}))
        run.write_json(f"{prefix}recipe.json", cand.recipe.model_dump())
        rep.update({"constraint": c.label, "device": device, "measurement_note": note,
                    "predicted_ms_per_device": {d: float(problem.costs.latency_ms(history.genomes[i][None])[0, j])
                                                for j, d in enumerate(problem.devices)},
                    "estimated_keys": problem.costs.estimated_keys(history.genomes[i])})
        exports.append(rep)
    return json.loads(json.dumps(exports, default=float))
