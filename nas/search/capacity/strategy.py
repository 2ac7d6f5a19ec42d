"""``hwnas search capacity`` as a strategy (``nas.search.strategy``): keep ratios and a capacity threshold for a budget.

Optuna's TPE sampler (the predictor searches' Optuna runner, ``nas.search.predict.runner.optuna_history``) proposes
configs of the ``CapacityProblem`` under the constraint ``predicted_ms <= target_ms``, starting from three anchor
configs; the ``CapacityEvaluator`` evaluates each for real. The study lives in ``study.db`` in the run directory,
so an interrupted search resumes where it stopped. The winner is the most accurate feasible config (ties: the
faster), exported with a parity check and timed. The run writes ``config.json``, ``history.csv``, ``pareto.csv``
(every config tried, with Pareto flags), ``arch.json``, ``capacity.json``, ``model.onnx``, ``report.json`` and
the plots.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pandas as pd

from nas.errors import SearchError
from nas.progress import Progress, no_progress
from nas.run import RunDir
from nas.search.blackbox.history import History
from nas.search.blackbox.pareto import pareto_mask
from nas.search.blackbox.problem import Constraint
from nas.search.capacity.evaluate import CapacityEvaluator
from nas.search.capacity.search import CapacityProblem, export_config
from nas.search.report import write_report
from nas.search.strategy import Strategy
from nas.search.targets import LatencyScale, Target, given_targets, resolve_one

STUDY = "capacity"
RANDOM_CONFIGS = 64  # random configs a percentile target is read off (each is calibrated on images once)


@dataclass(kw_only=True)
class CapacityJob:
    space: str
    checkpoint: str  # model.pt written by `hwnas train-dynamic`
    device: str
    target_ms: float | None = None  # absolute; preparing sets it to what ``target`` resolves to
    dataset: str = "digits"
    trials: int = 40
    seed: int | None = None  # data split (None: the checkpoint's) and sampler seed
    measure: bool = True  # also time every config tried
    allow_fallback: bool = True
    tables_dir: str | None = None
    target: str | None = None  # as given (``nas.search.targets``: 2ms, p40, 0.5x:vit_capacity)


@dataclass
class PreparedCapacity:
    job: CapacityJob
    problem: CapacityProblem
    seed: int
    target: Target | None = None

    @property
    def evaluator(self) -> CapacityEvaluator:
        return self.problem.evaluator

    def run_config(self) -> dict:
        sp = self.problem.capacity_space
        job = self.job
        return {"command": "search capacity", "space": sp.name, "space_fingerprint": sp.fingerprint(),
                "checkpoint": job.checkpoint, "dataset": job.dataset, "device": job.device,
                "target": job.target, "target_ms": job.target_ms, "trials": job.trials, "seed": self.seed,
                "measure": job.measure, "allow_fallback": job.allow_fallback}

    def run_name(self) -> str:
        return self.problem.capacity_space.name

    def summary(self) -> str:
        job = self.job
        target = self.target.describe() if self.target else f"{job.target_ms:g} ms"
        return (f"searching {self.problem.capacity_space.name} configs for {target} on {job.device!r} "
                f"({job.trials} trials{', measured' if job.measure else ''})")


def load_evaluator(space: str, dataset: str, checkpoint: str, device: str, seed: int | None, allow_fallback: bool,
                   tables_dir: str | None, measure: bool = True) -> tuple[CapacityEvaluator, int]:
    """The evaluator of a trained checkpoint on a device's table, and the data seed it splits with."""
    import torch

    from nas.latency.model import LatencyModel
    from nas.search.capacity.task import load_capacity_model

    torch.set_num_threads(1)  # inference on small batches; more threads only contend with ONNX Runtime timing
    lm = LatencyModel.load(device, tables_dir, allow_fallback=allow_fallback)
    data, model, meta = load_capacity_model(space, dataset, str(checkpoint), seed)
    return CapacityEvaluator(model, data, lm, measure=measure), meta["data_seed"]


class CapacityStrategy(Strategy):
    name = "capacity"

    def prepare(self, progress: Progress = no_progress) -> PreparedCapacity:
        job: CapacityJob = self.config
        given = given_targets(job.target, job.target_ms)
        if not given:
            raise SearchError("search capacity needs a latency target: --target (2ms, p40, 0.5x:SPACE) or "
                              "--target-ms")
        if job.trials < 1:
            raise SearchError(f"--trials must be at least 1, got {job.trials}")
        evaluator, seed = load_evaluator(job.space, job.dataset, job.checkpoint, job.device, job.seed,
                                         job.allow_fallback, job.tables_dir, job.measure)
        problem = CapacityProblem(evaluator)
        target = resolve_one(given[0], lambda: capacity_scale(problem, seed))
        problem.check_target(target.ms)
        return PreparedCapacity(replace(job, target=target.given, target_ms=target.ms), problem, seed, target)

    def run(self, prepared: PreparedCapacity, run: RunDir, progress: Progress = no_progress) -> dict:
        from nas.search.predict.optuna_search import OptunaConfig
        from nas.search.blackbox.study import default_storage_url
        from nas.search.capacity.plots import plot_search
        from nas.search.predict.runner import optuna_history

        job, problem = prepared.job, prepared.problem
        constraint = Constraint(((None, job.target_ms),))
        config = OptunaConfig(budget=job.trials, seed=prepared.seed, sampler="tpe", study=STUDY,
                              storage=default_storage_url(run.path))

        def emit(kind: str, info: dict) -> None:
            if kind == "progress":
                progress("configs", info["done"], job.trials, f"{info['done']} evaluated")

        history, study = optuna_history(problem, [constraint], run, config, emit=emit, enqueue=problem.anchors())
        rows = _rows(problem, history)
        write_pareto(run, rows, job.target_ms)
        best = choose(rows, job.target_ms)
        if best is None:
            raise SearchError(f"no config tried meets {job.target_ms:g} ms (predicted); raise --target-ms or --trials")
        report = export_config(prepared.evaluator, best["config"], run, method="capacity", target_ms=job.target_ms,
                               target=job.target, detail={"trials": history.used, "optuna": study,
                                                          "target_basis": prepared.target and prepared.target.basis},
                               warnings=prepared.target.warnings if prepared.target else ())
        plot_search(rows, job.target_ms, best, run.path)
        return write_report(run, report)


def capacity_scale(problem: CapacityProblem, seed: int) -> LatencyScale:
    """Relative targets of a capacity search: percentiles of random configs' predicted latency; the space's own
    name as the reference, meaning its full-capacity config."""
    space = problem.capacity_space

    def reference(name: str) -> tuple[float, list[str]]:
        if name != space.name:
            raise SearchError(f"target Fx:{name}: a capacity search compares with its own space's full-capacity "
                              f"config: Fx:{space.name}")
        return float(problem.latency_ms(problem.genome_of(problem.full())[None, :])[0, 0]), []

    return LatencyScale(problem.devices[0], f"{RANDOM_CONFIGS} random configs of {space.name}",
                        lambda: problem.random_configs_ms(RANDOM_CONFIGS, seed), reference)


def _rows(problem: CapacityProblem, history: History) -> list[dict]:
    """Every evaluation as a dict: its config, decisions and figures."""
    device = problem.devices[0]
    rows = []
    for genome, h in zip(history.genomes, history.rows):
        figures = {k[2:]: v for k, v in h.items() if k.startswith("m:")}
        rows.append({"config": problem.config(genome), **problem.describe(genome), **figures,
                     "predicted_ms": h[f"latency_ms[{device}]"]})
    return rows


def choose(rows: list[dict], target_ms: float) -> dict | None:
    """The most accurate config predicted to meet ``target_ms`` (ties: the faster)."""
    feasible = [r for r in rows if r["predicted_ms"] <= target_ms]
    if not feasible:
        return None
    return max(feasible, key=lambda r: (round(r["val_accuracy"], 6), -r["predicted_ms"]))


def write_pareto(run: RunDir, rows: list[dict], target_ms: float) -> None:
    """pareto.csv: every config tried, with accuracy, predicted and measured latency and Pareto flags."""
    frame = pd.DataFrame([{**r, "config": r["config"].label()} for r in rows])
    acc = frame["val_accuracy"].to_numpy(float)
    frame["feasible"] = frame["predicted_ms"] <= target_ms
    frame["pareto_predicted"] = pareto_mask(acc, frame[["predicted_ms"]].to_numpy(float))
    if "measured_ms" in frame and frame["measured_ms"].notna().all():
        frame["pareto_measured"] = pareto_mask(acc, frame[["measured_ms"]].to_numpy(float))
    run.write_csv("pareto.csv", frame.sort_values("predicted_ms"))

