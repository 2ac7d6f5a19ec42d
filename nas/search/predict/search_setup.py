"""From command-line settings to a search problem: a model space (data, joint space, latency models, trainer)
or a table space (``table:PATH.csv``), the latency constraints, and the run's config for ``RunDir``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nas.errors import SearchError
from nas.search.blackbox.problem import Constraint, ModelProblem, SearchProblem, TableProblem
from nas.search.targets import LatencyScale, model_reference, parse_bounds, resolve_target

TABLE_PREFIX = "table:"
DEFAULT_TARGETS = ("p25", "p50", "p75")  # the constraints of a search given none
STRATEGIES = ("nars", "chamnet", "optuna")
SAMPLERS = ("nsga2", "tpe")


MACHINE_SETTINGS = ("workers", "asynchronous", "accelerator", "precision", "threads")  # may differ between runs


@dataclass
class PredictorSearchSettings:
    strategy: str
    space: str
    devices: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)  # one constraint each: [DEVICE=]TARGET[,...] (nas.search.targets)
    budget: int = 100
    seed: int = 0
    dataset: str = "digits"
    objective: str | None = None
    direction: str = "max"
    # table spaces
    latency_columns: list[str] = field(default_factory=list)
    proxy_columns: list[str] = field(default_factory=list)
    metric_columns: list[str] = field(default_factory=list)
    decision_columns: list[str] = field(default_factory=list)
    sleep_column: str | None = None  # rehearsing a distributed run: each lookup sleeps this column's seconds
    sleep_scale: float = 1.0  # ... times this
    # model spaces
    resolution: int | None = None
    width: float | None = None
    recipe: str | None = None
    max_epochs: int | None = None
    tables_dir: str | None = None
    measure_each: bool = False
    # strategy knobs
    pool: int = 4096
    init: int | None = None
    batch: int | None = None
    generations: int = 40
    population: int = 2048
    pretrain: bool = True
    sampler: str = "nsga2"
    storage: str | None = None
    study: str = "hwnas"
    workers: int = 1
    asynchronous: bool = True  # nars/chamnet with several workers: next batch before the last ends (False: wait)
    # where this machine's evaluations train (per machine: not stored in the study, workers choose their own)
    accelerator: str = "auto"
    precision: str = "32"
    threads: int | None = None  # per worker; default one CPU thread (many small models: a core per worker)
    export: str = "first"  # first | all | none

    @property
    def is_table(self) -> bool:
        return self.space.startswith(TABLE_PREFIX)

    def config(self) -> dict:
        """What must match to resume a run directory and what workers rebuild the problem from (the workers,
        their scheduling and where they train may change between runs and machines)."""
        d = asdict(self)
        for per_run in MACHINE_SETTINGS:
            d.pop(per_run)
        from nas.search.blackbox.study import masked_url
        return {"command": f"search {self.strategy}", **d, "storage": self.storage and masked_url(self.storage)}

    def validate(self) -> None:
        if self.strategy not in STRATEGIES:
            raise SearchError(f"unknown strategy {self.strategy!r} ({', '.join(STRATEGIES)})")
        if self.budget < 1:
            raise SearchError(f"--budget must be at least 1 (got {self.budget})")
        if self.direction not in ("max", "min"):
            raise SearchError(f"--direction must be max or min (got {self.direction!r})")
        if self.workers < 1:
            raise SearchError(f"--workers must be at least 1 (got {self.workers})")
        from nas.train.accelerator import check_per_core
        from nas.search.blackbox.storage_url import check_storage_url, check_study_name
        check_per_core("--workers", self.workers, "worker processes")
        if self.storage is not None:
            check_storage_url(self.storage)
        check_study_name(self.study)
        if self.strategy == "optuna" and self.sampler not in SAMPLERS:
            raise SearchError(f"--sampler {self.sampler!r}: use {' or '.join(SAMPLERS)}")
        if self.export not in ("first", "all", "none"):
            raise SearchError(f"--export must be first, all or none (got {self.export!r})")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise SearchError(f"--max-epochs must be at least 1 (got {self.max_epochs})")
        if self.pool < 16:
            raise SearchError(f"--pool must be at least 16 (got {self.pool})")
        if self.is_table:
            if self.devices:
                raise SearchError("a table space takes its latency from --latency-column (one per device), "
                                  "not --device")
            if not self.objective:
                raise SearchError("a table space needs --objective COLUMN (the metric to optimise)")
        else:
            from nas.train.accelerator import resolve_accelerator
            resolve_accelerator(self.accelerator, self.precision, self.threads)  # this machine can train so
            if not self.devices:
                raise SearchError("a model space needs --device DEVICE_ID (a latency table; "
                                  "`hwnas latency profile` makes one)")
            for flag, value in (("--latency-column", self.latency_columns), ("--proxy", self.proxy_columns),
                                ("--metric", self.metric_columns), ("--decision", self.decision_columns)):
                if value:
                    raise SearchError(f"{flag} applies to table spaces (--space table:PATH.csv) only")
        if len(set(self.devices)) != len(self.devices):
            raise SearchError("--device: a device is named twice")


def evaluation_engine(settings: PredictorSearchSettings, winner: bool = False):
    """Where a model space's evaluations train: ``settings.accelerator`` and ``precision``, on ``threads`` torch
    threads (default 1 on the CPU: the searches train many small models, and each local worker takes a core; the
    ``winner``'s final training, alone, takes every core); AcceleratorError when this machine cannot do it."""
    from nas.train.accelerator import resolve_accelerator
    from nas.train.engine import Engine

    threads = settings.threads or (None if winner else 1)
    return Engine(resolve_accelerator(settings.accelerator, settings.precision, threads))


def build_problem(settings: PredictorSearchSettings, run_path: str | Path | None = None) -> SearchProblem:
    """The problem the settings describe (loads the table, or the data, space and latency models); a model space's
    evaluations checkpoint under ``run_path/evals`` and train on ``evaluation_engine``."""
    if settings.is_table:
        from nas.search.predict.table_space import TableEvaluator, TableSpace
        table = TableSpace(settings.space[len(TABLE_PREFIX):], settings.objective, settings.latency_columns,
                           proxy_columns=settings.proxy_columns, metric_columns=settings.metric_columns,
                           decision_columns=settings.decision_columns or None)
        return TableProblem(table, TableEvaluator(table, settings.sleep_column, settings.sleep_scale),
                            maximize=settings.direction == "max")
    from nas.data.task import load_search_task
    from nas.latency.measurement import measuring_device
    from nas.search.predict.evaluators import TrainEvaluator
    from nas.search.predict.joint_space import JointSpace
    from nas.search.predict.model_costs import ModelSpaceCosts, load_latency_models
    from nas.train.recipe import load_recipe

    data, space = load_search_task(settings.dataset, settings.space, resolution=settings.resolution,
                                   width=settings.width, seed=settings.seed)
    base = load_recipe(settings.recipe).model_copy(update={"seed": settings.seed})
    joint = JointSpace(space, base_recipe=base)
    latency_models = load_latency_models(settings.devices, settings.tables_dir)
    costs = ModelSpaceCosts(joint, latency_models)
    measure_on = measuring_device(latency_models[settings.devices[0]].device).device if settings.measure_each else None
    checkpoints = Path(run_path) / "evals" if run_path else None
    evaluator = TrainEvaluator(joint, data, max_epochs=settings.max_epochs, checkpoint_dir=checkpoints,
                               measure_on=measure_on, engine=evaluation_engine(settings))
    objective = settings.objective or "val_accuracy"
    if objective not in TrainEvaluator.metrics:
        raise SearchError(f"--objective {objective!r}: a model space reports {', '.join(TrainEvaluator.metrics)}")
    problem = ModelProblem(joint, evaluator, costs, objective, maximize=settings.direction == "max")
    problem.data = data
    return problem


def build_constraints(settings: PredictorSearchSettings, problem: SearchProblem) -> tuple[list[Constraint], bool]:
    """The constraints given (``settings.targets``, relative terms resolved on each device), or (when none) the
    25th/50th/75th percentiles of the space's latency per device.

    Returns the constraints and whether they were chosen automatically.
    """
    if settings.targets and not problem.devices:
        raise SearchError("--target needs a latency: --device for a model space, --latency-column for a table")
    if not problem.devices:
        return [Constraint(())], True
    scales = latency_scales(settings, problem)
    out = [_constraint(text, problem.devices, scales) for text in settings.targets or DEFAULT_TARGETS]
    if len({c.label for c in out}) != len(out):
        raise SearchError(f"--target: two constraints resolve to the same bounds "
                          f"({', '.join(c.describe() for c in out)})")
    return out, not settings.targets


def _constraint(text: str, devices: list[str], scales: dict[str, LatencyScale]) -> Constraint:
    """One constraint: each term's bound on its device, or (no device named) on every device at its own value."""
    limits, terms = [], parse_bounds(text, devices)
    for dev, form in terms:
        if not form.relative:
            limits.append((dev, form.value))
        elif dev is not None or len(devices) == 1:
            limits.append((dev, resolve_target(form, scales[dev or devices[0]]).ms))
        else:
            limits.extend((d, resolve_target(form, scales[d]).ms) for d in devices)
    return Constraint(tuple(limits), given=",".join(f"{d}={f.text}" if d else f.text for d, f in terms))


def latency_scales(settings: PredictorSearchSettings, problem: SearchProblem) -> dict[str, LatencyScale]:
    """What relative bounds are read off, per device: the latency of a table's rows, or of the model space's Sobol
    pool (``settings.pool`` points from the seed); a model space's named models predicted on each device."""
    cache: dict[str, np.ndarray] = {}

    def latencies() -> np.ndarray:
        if "lat" not in cache:
            pool = problem.all_candidates() if problem.finite else problem.pool(settings.pool, settings.seed)
            cache["lat"] = np.atleast_2d(problem.latency_ms(pool))
        return cache["lat"]

    if problem.finite:
        what = f"the {problem.table.rows} rows of {Path(settings.space[len(TABLE_PREFIX):]).name}"
    else:
        what = f"{settings.pool} Sobol points of {problem.joint.space.name}"
    scales = {}
    for j, d in enumerate(problem.devices):
        reference = model_reference(problem.costs.latency_models[d], problem.joint.space) \
            if isinstance(problem, ModelProblem) else None
        scales[d] = LatencyScale(d, what, lambda j=j: latencies()[:, j], reference,
                                 no_reference="a table space has no models to name")
    return scales
