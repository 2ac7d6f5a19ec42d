"""The predictor-guided searches (NARS, ChamNet, Optuna) as one strategy (``nas.search.strategy``) over a run directory.

Writes ``config.json``, ``history.csv`` (every evaluation in order, predicted and actual figures), ``pareto.csv``
(the best evaluated candidate under each latency constraint), ``arch.json`` (the winner: the best under the first
constraint met; for a table, its row, decisions and metrics), ``best/<constraint>/`` (``arch.json`` and
``recipe.json`` for model spaces, ``candidate.json`` for tables), ``report.json`` (with ``progress``: per
constraint, the evaluations the search took to reach its final best and random search's expected best with as many
evaluations), ``pareto.png``, ``predictions.png`` and ``progress.png`` (best so far against evaluations, with
random search's expectation: ``nas.search.predict.convergence``), and ``study.db`` (the Optuna study every strategy
keeps its evaluations in, unless ``--storage`` names another; ``nas.search.predict.optuna_search``). On model spaces
the winner (or, with ``export="all"``, the best under every constraint) is trained with its recipe, exported to
``model.onnx``, checked for output parity and its latency measured (``nas.search.finalize.train_export_measure``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nas.latency.measurement import Measurement
from nas.progress import Progress, no_progress
from nas.run import RunDir
from nas.search.blackbox.history import History
from nas.search.blackbox.pareto import family, pareto_mask, plot_pareto, plot_predictions
from nas.search.blackbox.problem import Constraint, ModelProblem, SearchProblem
from nas.search.predict.convergence import plot_progress, search_progress
from nas.search.predict.nars import NarsConfig, run_nars
from nas.search.predict.search_setup import PredictorSearchSettings, build_constraints, build_problem
from nas.search.report import MODEL, build_report, latency_remedies, write_report
from nas.search.strategy import Strategy


@dataclass
class PreparedPredictorSearch:
    settings: PredictorSearchSettings
    problem: SearchProblem
    constraints: list[Constraint]
    constraints_auto: bool

    def run_config(self) -> dict:
        return {**self.settings.config(), **({"table_decisions": self.problem.table.decision_rule}
                                             if self.settings.is_table else {})}

    def run_name(self) -> str:
        return Path(self.settings.space.split(":", 1)[-1]).stem

    def summary(self) -> str:
        auto = " (automatic)" if self.constraints_auto else ""
        return (f"{self.settings.strategy} on {self.settings.space}: objective {self.problem.objective}, "
                f"constraints {', '.join(c.describe() for c in self.constraints)}{auto}"
                + (f"\n{self.problem.table.decision_line()}" if self.settings.is_table else ""))


class PredictorStrategy(Strategy):
    """NARS, ChamNet or Optuna (``settings.strategy``) on a model or table space, as a ``Strategy``."""

    def __init__(self, config: PredictorSearchSettings):
        super().__init__(config)
        self.name = config.strategy

    def prepare(self, progress: Progress = no_progress) -> PreparedPredictorSearch:
        """Validate everything a user can get wrong (settings, table, space, devices, constraints, storage);
        nothing is written."""
        settings = self.config
        settings.validate()
        problem = build_problem(settings)
        constraints, auto = build_constraints(settings, problem)
        problem.check_constraints(constraints, _probe(settings, problem))
        if settings.storage:
            from nas.search.blackbox.study import open_storage
            open_storage(settings.storage)
        return PreparedPredictorSearch(settings, problem, constraints, auto)

    def run(self, prepared: PreparedPredictorSearch, run: RunDir, progress: Progress = no_progress) -> dict:
        settings, problem, constraints = prepared.settings, prepared.problem, prepared.constraints
        emit = _progress_events(settings, problem, progress)
        if isinstance(problem, ModelProblem):
            problem.evaluator.checkpoint_dir = run.file("evals")
            problem.evaluator.on_epoch = lambda e, row: emit("epoch", {"epoch": e, **row})
        detail: dict = {"space": settings.space, "objective": problem.objective, "direction": settings.direction,
                        "devices": problem.devices, "budget": settings.budget, "seed": settings.seed,
                        "constraints": [c.to_dict() for c in constraints],
                        "constraints_chosen_automatically": prepared.constraints_auto,
                        "warnings": list(getattr(problem.space, "warnings", []))}
        if isinstance(problem, ModelProblem):
            detail["training"] = problem.evaluator.engine.record()  # this machine's; workers choose their own
        from nas.search.blackbox.study import storage_errors

        with storage_errors(_study_config(settings, run).storage):
            if settings.strategy == "optuna":
                history = _run_optuna(settings, problem, constraints, run, emit, detail)
            else:
                history = _run_nars(settings, problem, constraints, run, emit, detail)
        detail["evaluations"] = history.used
        winner = _write_outputs(run, problem, history, constraints, detail, settings.strategy)
        exports = []
        if isinstance(problem, ModelProblem) and settings.export != "none" and winner is not None:
            exports = _export(run, problem, history, constraints, winner, settings, emit)
            detail["export"] = exports
        report = _report(settings, problem, history, winner, exports, detail, run)
        return write_report(run, report)


def _progress_events(settings: PredictorSearchSettings, problem: SearchProblem, progress: Progress):
    """The searches' events as ``progress`` calls: stage "evaluate" (done of the budget), then "train winner"."""
    state = {"done": 0, "epochs": None}
    budget = settings.budget

    def emit(kind: str, info: dict) -> None:
        if kind == "eval":
            state["done"] += 1
            progress("evaluate", state["done"], budget, f"{info['phase']}: {problem.objective} "
                                                        f"{info[problem.objective]:.4g}")
        elif kind == "progress":
            state["done"] = info["done"]
            progress("evaluate", state["done"], budget, f"{info['done']} evaluated")
        elif kind == "resume":
            progress("evaluate", state["done"], budget, f"resuming: {info['stored']} stored evaluations")
        elif kind == "fit":
            progress("evaluate", state["done"], budget, f"fit on {info['n_train']}: held-out tau "
                                                        f"{info['heldout_tau']:.3f}")
        elif kind == "phase":
            progress("evaluate", state["done"], budget, f"{info['name']} {info.get('note', '')}")
        elif kind == "generation":
            progress("evaluate", state["done"], budget, f"evolution generation {info['generation']}")
        elif kind == "epoch":
            progress("evaluate", state["done"], budget, f"epoch {info['epoch']} loss {info['train_loss']:.3f}")
        elif kind == "export":
            state["epochs"] = info["epochs"]
            progress("train winner", 0, info["epochs"], info["constraint"])
        elif kind == "export_epoch":
            progress("train winner", info["epoch"], state["epochs"], f"loss {info['train_loss']:.3f}")

    return emit


def _study_config(settings: PredictorSearchSettings, run: RunDir):
    from nas.search.predict.optuna_search import OptunaConfig
    from nas.search.blackbox.study import default_storage_url

    return OptunaConfig(budget=settings.budget, seed=settings.seed, sampler=settings.sampler,
                        storage=settings.storage or default_storage_url(run.path), study=settings.study,
                        workers=settings.workers, proposer=settings.strategy != "optuna")


def _study_detail(config, stats: dict) -> dict:
    from nas.search.blackbox.study import masked_url

    return {**stats, "storage": masked_url(config.storage), "study": config.study,
            "dashboard": f"optuna-dashboard {masked_url(config.storage)}"}


def _run_nars(settings, problem, constraints, run, emit, detail) -> History:
    from nas.search.predict.optuna_search import LocalWorkers, machine_settings, open_job
    from nas.search.blackbox.study import PROPOSER_DONE_ATTR, evaluated_trials
    from nas.search.blackbox.worker import StudyEvaluations, run_worker

    config = _study_config(settings, run)
    job = open_job(config, problem, constraints, settings)
    stored = len(evaluated_trials(job.study))
    if stored >= settings.budget:
        emit("phase", {"name": "nothing to do", "note": f"the study has its {stored} evaluations"})
    # asynchronous with several workers: this process proposes, evaluating only while its workers start
    proposes_only = settings.asynchronous and config.workers > 1
    local = config.workers if proposes_only else config.workers - 1
    workers = LocalWorkers(config.storage, config.study, local, machine_settings(settings))
    stop = workers.ready if proposes_only else (lambda: False)
    evaluations = StudyEvaluations(job, work=lambda: run_worker(job, wait=False, stop=stop), local=local,
                                   asynchronous=settings.asynchronous)
    history = History(problem, settings.budget, constraints, run.file("history.csv"),
                      on_eval=lambda row: emit("eval", row), evaluations=evaluations)
    if history.resumed or stored:
        emit("resume", {"stored": max(history.resumed, stored)})
    nars_config = NarsConfig(budget=settings.budget, seed=settings.seed,
                             predictor="gp" if settings.strategy == "chamnet" else "mlp", init=settings.init,
                             batch=settings.batch, pool=settings.pool, pretrain=settings.pretrain,
                             population=settings.population, generations=settings.generations)
    try:
        result = run_nars(problem, constraints, history, nars_config, on_event=emit)
        job.study.set_user_attr(PROPOSER_DONE_ATTR, True)
        stats = workers.close(wait=True)
    finally:
        workers.close(wait=False)
    history.absorb()  # what the study holds besides this run's proposals (an interrupted run's evaluations)
    job.drop_waiting()
    detail["study"] = _study_detail(config, {"nothing_to_do": stored >= settings.budget,
                                             "workers": [job.counts] + stats,
                                             "trials": len(job.study.get_trials(deepcopy=False))})
    detail["predictor"] = {
        "kind": "FBNetV3 MLP (ArchRecipePredictor)" if nars_config.predictor == "mlp" else "ChamNet GP (gpytorch)",
        "pretrained_on_proxies": bool(nars_config.predictor == "mlp" and nars_config.pretrain and
                                      problem.proxy_names),
        "proxies": problem.proxy_names, "pretrain_loss": result.pretrain_loss,
        "heldout_kendall_tau": result.heldout_tau, "cv_kendall_tau": result.cv_tau, "rounds": result.rounds}
    detail["pool"] = {"size": result.pool_size, "feasible": result.pool_feasible}
    if result.evolution is not None:
        evo = result.evolution
        detail["evolution"] = {"exhaustive": problem.finite, "scored": evo.scored, "generations": evo.generations,
                               "seconds": evo.seconds, "cpu_seconds": evo.cpu_seconds,
                               "candidates_per_cpu_minute": evo.candidates_per_cpu_minute,
                               "winners": result.predicted_winners}
    return history


def _run_optuna(settings, problem, constraints, run, emit, detail) -> History:
    config = _study_config(settings, run)
    history, detail["optuna"] = optuna_history(problem, constraints, run, config, settings, emit)
    if detail["optuna"]["evaluations"] < settings.budget:
        detail["warnings"].append(f"Optuna stopped at {detail['optuna']['evaluations']} of {settings.budget} "
                                  f"evaluations: its sampler kept proposing candidates that break the constraint "
                                  f"or were evaluated")
    return history


def optuna_history(problem: SearchProblem, constraints: list[Constraint], run: RunDir, config, settings=None,
                   emit=None, enqueue: list[dict] | None = None) -> tuple[History, dict]:
    """Run (or resume) the Optuna study of ``config`` (``nas.search.predict.optuna_search.OptunaConfig``) to its budget,
    then its evaluations as a History written to history.csv; returns it and the study's figures. ``settings``:
    the search's, stored in the study for workers; ``enqueue``: decision values the study evaluates first (when
    it has no trials yet)."""
    from nas.search.predict.optuna_search import open_job, run_optuna
    from nas.search.blackbox.study import evaluated_trials

    emit = emit or (lambda kind, info: None)
    if enqueue:
        study = open_job(config, problem, constraints, settings).study
        if not study.get_trials(deepcopy=False):
            for values in enqueue:
                study.enqueue_trial(values, user_attrs={"proposed": "anchor"}, skip_if_exists=True)
    stats = run_optuna(problem, constraints, config, settings, on_progress=lambda n: emit("progress", {"done": n}))
    study = open_job(config, problem, constraints).study
    history = History(problem, config.budget, constraints, None)
    for t in evaluated_trials(study):
        genome = np.asarray(t.user_attrs["genome"], float)
        history.record(genome, t.user_attrs.get("proposed", "optuna"), t.user_attrs["metrics"],
                       float(t.user_attrs.get("seconds", np.nan)), extra={"trial": t.number})
    history.path = run.file("history.csv")
    history.save()
    return history, _study_detail(config, {**stats, "sampler": config.sampler})


def _probe(settings: PredictorSearchSettings, problem: SearchProblem) -> np.ndarray:
    """Candidates to check the constraints against: a table's rows, or the Sobol pool and the smallest archs."""
    if problem.finite:
        return problem.all_candidates()
    return np.concatenate([problem.pool(settings.pool, settings.seed), problem.smallest_genomes()])


def _winner_documents(run: RunDir, problem: SearchProblem, history: History, i: int, folder: str,
                      decisions: dict) -> None:
    """``folder/arch.json`` (and ``recipe.json``) for a model space; for a table, ``folder/candidate.json``."""
    prefix = f"{folder}/" if folder else ""
    if isinstance(problem, ModelProblem):
        from nas.arch.space import arch_document
        cand = problem.joint.candidate(history.genomes[i])
        run.write_json(f"{prefix}arch.json", arch_document(problem.joint.space, cand.arch))
        run.write_json(f"{prefix}recipe.json", cand.recipe.model_dump())
        return
    metrics = {k[2:]: v for k, v in history.rows[i].items() if k.startswith("m:")}
    row = int(problem.table.source_rows[problem.table.row_of(history.genomes[i][None, :])[0]]) + 1
    run.write_json(f"{prefix}{'candidate.json' if folder else 'arch.json'}",
                   {"row": row, "decisions": decisions, "metrics": metrics})


def _write_outputs(run: RunDir, problem: SearchProblem, history: History, constraints: list[Constraint],
                   detail: dict, strategy: str) -> tuple[Constraint, int] | None:
    """history.csv, pareto.csv, best/<constraint>/ and the plots; the winner (the best evaluated candidate under
    the first constraint any meets) goes to arch.json and is returned as (constraint, row index)."""
    if not history.used:
        return None
    frame = history.frame()
    frame["pareto_front"] = pareto_mask(history.scores(), history.latency_array()) if problem.devices \
        else history.scores() == history.scores().max()
    run.write_csv("history.csv", frame)
    fam = family(history, constraints)
    run.write_csv("pareto.csv", fam)
    winners, winner = [], None
    for c, (_, row) in zip(constraints, fam.iterrows()):
        entry = {"constraint": c.label, "target": c.given or c.label, "found": bool(row["found"])}
        i = history.best_under(c)
        if i is not None:
            h = history.rows[i]
            entry.update({"eval": int(h["eval"]), problem.objective: h[problem.objective],
                          "latency_ms": {d: h[f"latency_ms[{d}]"] for d in problem.devices},
                          "decisions": problem.describe(history.genomes[i])})
            _winner_documents(run, problem, history, i, f"best/{c.slug}", entry["decisions"])
            if winner is None:
                winner = (c, i)
                _winner_documents(run, problem, history, i, "", entry["decisions"])
        winners.append(entry)
    detail["winners"] = winners
    _write_progress(run, history, constraints, detail, strategy)
    plot_pareto(run.file("pareto.png"), history, constraints,
                title=f"{strategy} on {Path(detail['space']).name}: {history.used} evaluations")
    plot_predictions(run.file("predictions.png"), history, title="predictions made before each evaluation")
    return winner


def _write_progress(run: RunDir, history: History, constraints: list[Constraint], detail: dict,
                    strategy: str) -> None:
    """How many evaluations each constraint's best took (report.json ``progress``, and ``evaluations_to_best``
    of the winners) and ``progress.png``: best-so-far against evaluations with random search's expectation."""
    summary, curves, baselines, note = search_progress(history, constraints)
    detail["progress"] = summary
    for entry in detail["winners"]:
        entry["evaluations_to_best"] = summary[entry["constraint"]]["evaluations_to_best"]
    detail["evaluations_to_best"] = next((e["evaluations_to_best"] for e in detail["winners"] if e["found"]), None)
    plot_progress(run.file("progress.png"), curves, baselines, history.problem.objective, history.problem.sign(),
                  title=f"{strategy} on {Path(detail['space']).name}: best so far against evaluations", note=note)


def _export(run: RunDir, problem: ModelProblem, history: History, constraints: list[Constraint],
            winner: tuple[Constraint, int], settings: PredictorSearchSettings, emit) -> list[dict]:
    """Train, export and time the winner (``model.onnx``), and with ``export="all"`` the best under every other
    constraint (``<constraint>_model.onnx``)."""
    from nas.latency.measurement import measuring_device
    from nas.search.finalize import train_export_measure
    from nas.search.predict.search_setup import evaluation_engine

    space = problem.joint.space
    device_id = problem.devices[0]
    lm = problem.costs.latency_models[device_id]
    measure_on = measuring_device(lm.device)
    targets = [(winner[0], winner[1], "")]
    if settings.export == "all":
        targets += [(c, history.best_under(c), f"{c.slug}_") for c in constraints if c != winner[0]]
    exports, seen = [], set()
    for c, i, prefix in targets:
        if i is None or history.rows[i]["key"] in seen:
            continue
        seen.add(history.rows[i]["key"])
        cand = problem.joint.candidate(history.genomes[i])
        emit("export", {"constraint": c.label, "epochs": cand.recipe.epochs})
        rep = train_export_measure(space, cand.arch, problem.data, cand.recipe, run, measure_on=measure_on,
                                   prefix=prefix, predict_ms=lambda a: lm.predict(space, a),
                                   on_epoch=lambda e, row: emit("export_epoch", {"epoch": e, **row}),
                                   table=lm.table, engine=evaluation_engine(settings, winner=True))
        run.write_json(f"{prefix}recipe.json", cand.recipe.model_dump())
        rep.update({"constraint": c.label, "device": device_id, "measurement_note": measure_on.note,
                    "predicted_ms_per_device": {d: float(problem.costs.latency_ms(history.genomes[i][None])[0, j])
                                                for j, d in enumerate(problem.devices)},
                    "estimated_keys": problem.costs.estimated_keys(history.genomes[i])})
        exports.append(rep)
    return json.loads(json.dumps(exports, default=float))


def _report(settings: PredictorSearchSettings, problem: SearchProblem, history: History,
            winner: tuple[Constraint, int] | None, exports: list[dict], detail: dict, run: RunDir) -> dict:
    """The shared keys from the winner: its exported model's figures (judged on its measurement), or (no model)
    its evaluated figures."""
    device = problem.devices[0] if problem.devices else None
    target_ms = predicted_ms = accuracy = target = None
    if winner is not None:
        c, i = winner
        target = c.given or None
        bound = float(c.bound(problem.devices)[0]) if problem.devices else float("inf")
        target_ms = bound if np.isfinite(bound) else None
        h = history.rows[i]
        predicted_ms = h[f"latency_ms[{device}]"] if device else None
        accuracy = h.get("m:test_accuracy") if isinstance(problem, ModelProblem) else h[problem.objective]
    first = exports[0] if exports else {}
    if first:
        accuracy, predicted_ms = first["accuracy"], first["predicted_ms"]
    remedies = None
    if device is not None:
        remedies = latency_remedies(device, tables_dir=settings.tables_dir, model_path=run.file(MODEL),
                                    space=problem.joint.space if isinstance(problem, ModelProblem) else None)
    return build_report(settings.strategy, device=device, accuracy=accuracy, predicted_ms=predicted_ms,
                        measured_ms=first.get("measured_ms"), onnx_max_abs_diff=first.get("onnx_max_abs_diff"),
                        target_ms=target_ms, target=target, detail=detail, warnings=detail["warnings"],
                        remedies=remedies,
                        measurement=Measurement.from_dict(first["measurement"]) if first else None,
                        winner="arch.json" if winner is not None else None, model=MODEL if first else None)
