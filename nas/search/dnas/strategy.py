"""The differentiable searches as strategies (``nas.search.strategy``): DNAS and DMasking, end to end.

``SupernetStrategy.prepare`` checks everything a user can get wrong (data, space, device table and its coverage,
the latency target against the attainable range) before anything is written; ``run`` then owns the run directory:
``config.json``, the per-epoch search checkpoint, ``history.csv``, ``arch.json``, ``model.onnx``, ``report.json``
and the plots. Rerunning the same command on the same directory resumes wherever it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import pandas as pd
import torch

from nas.arch.space import Arch, Space
from nas.data.dataset import Dataset
from nas.data.task import load_search_task
from nas.errors import LatencyTableError, SearchError
from nas.latency.device import Device
from nas.latency.measurement import Measurement, measuring_device
from nas.latency.model import LatencyModel
from nas.latency.table import tables_root
from nas.progress import Progress, no_progress
from nas.run import RunDir
from nas.search.dnas.decode import attainable_range_ms, most_probable_in_band
from nas.search.dnas.distribution import ArchDistribution
from nas.search.dnas.dmasking_supernet import DMaskingSupernet
from nas.search.dnas.dnas_supernet import DNASSupernet
from nas.search.dnas.flops_cost import COSTS, FlopsLatencyModel
from nas.search.dnas.latency_terms import LatencyTerms
from nas.search.dnas.search import SupernetSearch, SupernetSearchSettings
from nas.search.finalize import train_export_measure
from nas.search.report import MODEL, build_report, latency_remedies, write_report
from nas.search.strategy import Strategy
from nas.search.targets import RANDOM_ARCHS, LatencyScale, Target, given_targets, model_reference, resolve_one
from nas.train.engine import Engine
from nas.train.recipe import Recipe

METHODS = ("dnas", "dmasking")
TARGET_TOLERANCE = 0.10  # the final arch's predicted latency lands within 10% under the target


@dataclass(kw_only=True)
class SearchJob:
    method: str  # "dnas" | "dmasking"
    space: str
    device: str
    dataset: str = "digits"
    target_ms: float | None = None  # absolute; prepare sets it to what ``target`` resolves to
    resolution: int | None = None
    width: float | None = None
    seed: int = 0  # the supernet's weights, the search's sampling and the winner's training
    split_seed: int | None = None  # the train / val / test split (default: ``seed``)
    settings: SupernetSearchSettings = field(default_factory=SupernetSearchSettings)
    recipe: Recipe = field(default_factory=Recipe)
    tables_dir: str | None = None
    profile: bool = False
    allow_estimated: bool = False
    engine: Engine = field(default_factory=Engine)  # where the supernet and the winner train
    skip_bad_images: bool = False
    target: str | None = None  # a target as given (``nas.search.targets``: 2.5ms, p40, 0.8x:fbnet_a)
    cost: str = "latency"  # "latency": the device's table; "flops": FLOPs fitted to its ms (the ablation)

    @property
    def data_seed(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed

    def config(self, space: Space) -> dict:
        """Everything that determines the result (what a resumed run must match), flat so that a mismatch names
        the setting (``search.epochs``, ``recipe.lr``)."""
        return {"command": f"search {self.method}", "space": self.space, "dataset": self.dataset,
                "device": self.device, "space_args": space.space_args(),
                "space_fingerprint": space.fingerprint(), "target": self.target,
                "target_ms": self.target_ms, "seed": self.seed, "split_seed": self.data_seed, "cost": self.cost,
                "accelerator": self.engine.accelerator.kind,
                "precision": self.engine.accelerator.precision, "world_size": self.engine.world.size,
                **{f"search.{k}": v for k, v in self.settings.to_dict().items()},
                **{f"recipe.{k}": v for k, v in self.recipe.model_dump().items()}}


@dataclass(kw_only=True)
class PreparedSupernetSearch:
    job: SearchJob
    data: Dataset
    space: Space
    lm: LatencyModel
    cost: LatencyModel  # what the search costs archs with: ``lm``, or the FLOPs line (``--cost flops``)
    dist: ArchDistribution
    terms: LatencyTerms
    min_ms: float
    max_ms: float
    target: Target | None = None

    def run_config(self) -> dict:
        return self.job.config(self.space)

    def run_name(self) -> str:
        return self.space.name

    def summary(self) -> str:
        s = self.space
        target = f", target {self.target.describe()}" if self.target else ""
        return (f"{self.job.method} on {s.name} @ {s.resolution}px x{s.width_multiplier:g}, {self.job.dataset} "
                f"{self.data.sizes()}, device {self.job.device}{' (cost: FLOPs)' if self.job.cost == 'flops' else ''}"
                f": attainable {self.min_ms:.4g}-{self.max_ms:.4g} ms{target}; "
                f"search and training on {self.job.engine.accelerator.describe()}")


def profile_command(job: SearchJob, space: Space) -> str:
    cmd = (f"hwnas latency profile --space {job.space} --device {job.device} --resolution {space.resolution} "
           f"--width {space.width_multiplier:g} --classes {space.classes} --in-channels {space.in_channels}")
    return cmd + (f" --tables-dir {job.tables_dir}" if job.tables_dir else "")


def _profile(job: SearchJob, device: Device, space: Space, progress: Progress) -> None:
    """Measure the space's missing keys on ``device`` (this machine), then (re)fit the table's correction."""
    from nas.latency.calibrate import calibrate
    from nas.latency.profile import profile_items, space_profile_items

    profile_items(device, space_profile_items(space), tables_dir=job.tables_dir,
                  on_progress=lambda d, t, note: progress("profile", d, t, note))
    calibrate(device, space, tables_dir=job.tables_dir,
              on_progress=lambda d, t, note: progress("calibrate", d, t, note))


def _load_or_profile(job: SearchJob, space: Space, progress: Progress) -> LatencyModel:
    """The device's LatencyModel; with ``--profile``, a device without a usable table is profiled first (one
    thread, CPU-time clock: robust while others share the cores)."""
    try:
        return LatencyModel.load(job.device, job.tables_dir)
    except LatencyTableError as e:
        if not job.profile:
            raise LatencyTableError(f"no usable latency table for device {job.device!r} in "
                                    f"{tables_root(job.tables_dir)} ({e}); measure it with "
                                    f"`{profile_command(job, space)}` or rerun with --profile") from None
    try:
        device = Device.load(job.device, job.tables_dir)  # a table with a manifest but no rows yet keeps its set-up
    except LatencyTableError:
        device = Device(clock="cpu", device_id=job.device)
    _profile(job, device, space, progress)
    return LatencyModel.load(job.device, job.tables_dir)


def _prepare(job: SearchJob, progress: Progress = no_progress) -> PreparedSupernetSearch:
    """Load and check everything; raise a one-line HwnasError for any bad input. Writes nothing but tables."""
    if job.method not in METHODS:
        raise SearchError(f"unknown method {job.method!r} (use {' or '.join(METHODS)})")
    given = given_targets(job.target, job.target_ms)
    if job.settings.alpha < 0 or job.settings.beta <= 0:
        raise SearchError(f"--alpha must be >= 0 and --beta > 0, got alpha {job.settings.alpha}, "
                          f"beta {job.settings.beta}")
    if job.cost not in COSTS:
        raise SearchError(f"--cost must be {' or '.join(COSTS)}, got {job.cost!r}")
    if job.settings.epochs < 2:
        raise SearchError(f"--epochs must be at least 2 (one warm-up epoch, then search), got {job.settings.epochs}")
    data, space = load_search_task(job.dataset, job.space, resolution=job.resolution, width=job.width,
                                   seed=job.data_seed, skip_bad_images=job.skip_bad_images)
    masks = job.method == "dmasking"
    if not (any(len(layer.candidates) > 1 for layer in space.layers)
            or masks and (space.searches_channels or space.searches_resolution)):
        raise SearchError(f"space {space.name!r} has no choices for {job.method} to make (a fixed model?)")
    dist = ArchDistribution(space, search_channels=masks, search_resolution=masks)
    lm = _load_or_profile(job, space, progress)
    terms = LatencyTerms(dist, lm)
    missing = terms.estimated_keys()
    if missing and job.profile:
        _profile(job, lm.device, space, progress)
        lm.refresh()
        terms = LatencyTerms(dist, lm)
        missing = terms.estimated_keys()
    cost, table_terms = lm, terms  # relative targets read the table under either cost: both searches aim alike
    if job.cost == "flops":  # the table is not used: its missing keys do not matter
        cost = FlopsLatencyModel.fit_on_calibration(lm)
        terms, missing = LatencyTerms(dist, cost), []
    if missing and not job.allow_estimated:
        raise LatencyTableError(f"the table of device {job.device!r} lacks {len(missing)} of {len(terms.keys())} "
                                f"blocks this search needs (e.g. {missing[0]}); measure them with "
                                f"`{profile_command(job, space)}`, or rerun with --profile (or --allow-estimated)")
    min_ms, max_ms = attainable_range_ms(terms)
    target = resolve_one(given[0] if given else None, lambda: LatencyScale(
        job.device, f"{RANDOM_ARCHS} random archs of {space.name}",
        lambda: table_terms.random_archs_ms(RANDOM_ARCHS, job.seed), model_reference(lm, space)))
    if target is not None and not (min_ms <= target.ms <= max_ms):
        side = "below the fastest" if target.ms < min_ms else "above the slowest"
        raise SearchError(f"target {target.describe()} is {side} arch of {space.name} on device {job.device!r}: "
                          f"attainable {min_ms:.4g}-{max_ms:.4g} ms at {space.resolution}px, width "
                          f"{space.width_multiplier:g}")
    if target is not None:  # the job as it runs: the target in milliseconds, the form given beside it
        job = replace(job, target=target.given, target_ms=target.ms,
                      settings=replace(job.settings, target_ms=target.ms))
    return PreparedSupernetSearch(job=job, data=data, space=space, lm=lm, cost=cost, dist=dist, terms=terms,
                                  min_ms=min_ms, max_ms=max_ms, target=target)


def build_supernet(prep: PreparedSupernetSearch) -> torch.nn.Module:
    """DNAS: FBNet's supernet (a block per candidate). DMasking: the shared-weight masked supernet."""
    if prep.job.method == "dnas":
        return DNASSupernet(prep.dist, prep.job.recipe.dropout)
    return DMaskingSupernet(prep.dist, prep.job.recipe.dropout)


def final_arch(prep: PreparedSupernetSearch) -> tuple[Arch, dict]:
    """The argmax arch; with a target, the most probable arch predicted at most 10% under it (or, failing that, the
    most probable one predicted under it): the shipped model is judged on its measured latency against the target."""
    terms, dist, target = prep.terms, prep.dist, prep.job.target_ms
    argmax = dist.argmax_indices()
    info = {"argmax_arch": dist.arch_from_indices(*argmax).to_dict(), "argmax_predicted_ms": terms.arch_ms(*argmax),
            "selection": "argmax"}
    chosen = argmax
    if target is not None and not (1 - TARGET_TOLERANCE) * target <= terms.arch_ms(*argmax) <= target:
        for lo_ms, selection in (((1 - TARGET_TOLERANCE) * target, "most probable within 10% under the target"),
                                 (0.0, "most probable under the target")):
            found = most_probable_in_band(terms, lo_ms, target)
            if found is not None:
                chosen, info["selection"] = found, selection
                break
    return dist.arch_from_indices(*chosen), info


def _run(prep: PreparedSupernetSearch, run: RunDir, progress: Progress = no_progress) -> dict:
    """Search (resuming from ``run``), pick the final arch, retrain it with the recipe, export, measure, report."""
    job, space, lm = prep.job, prep.space, prep.lm
    torch.manual_seed(job.seed)  # the supernet's initial weights: the same command and seed give the same arch
    supernet = build_supernet(prep)
    search = SupernetSearch(supernet, prep.dist, prep.terms, prep.data, job.settings, job.recipe, prep.min_ms,
                            job.engine)
    start = time.perf_counter()
    epochs = job.settings.epochs

    def searched(epoch: int, row: dict) -> None:
        run.write_csv("history.csv", pd.DataFrame(search.history))  # readable while the search runs
        progress("search", epoch, epochs, f"val acc {row['val_accuracy']:.3f}  E[lat] {row['expected_ms']:.4g} ms  "
                                          f"alpha {row['alpha']:.3g}")

    history = search.run(run.file("search_checkpoint.pt"), searched)
    search_seconds = time.perf_counter() - start
    run.write_csv("history.csv", pd.DataFrame(history))
    arch, selection = final_arch(prep)
    predicted = prep.cost.predict(space, arch)  # what the search believed (the FLOPs line under --cost flops)

    def trained(epoch: int, row: dict) -> None:
        progress("train", epoch, job.recipe.epochs, f"loss {row['train_loss']:.3f} val "
                                                    f"{row.get('val_accuracy', float('nan')):.3f}")

    measure_on = measuring_device(lm.device)
    figures = train_export_measure(space, arch, prep.data, job.recipe, run, measure_on=measure_on, on_epoch=trained,
                                   table=lm.table, engine=job.engine)
    shared = {k: figures.pop(k) for k in ("accuracy", "measured_ms", "onnx_max_abs_diff")}
    report = build_report(
        job.method, device=job.device, predicted_ms=predicted, target_ms=job.target_ms, target=job.target, **shared,
        warnings=prep.target.warnings if prep.target else (),
        measurement=Measurement.from_dict(figures.pop("measurement")),
        remedies=latency_remedies(job.device, tables_dir=job.tables_dir, model_path=run.file(MODEL),
                                  reprofile=profile_command(job, space)), detail={
            **figures, "measurement_note": measure_on.note, "attainable_ms": [prep.min_ms, prep.max_ms],
            "target_basis": prep.target.basis if prep.target else None, **selection,
            **cost_detail(prep, arch), "decidedness": prep.dist.decidedness(),
            "search_epochs": epochs, "search_seconds": search_seconds,
            "supernet_val_accuracy": history[-1]["val_accuracy"], "final_alpha": history[-1]["alpha"],
            "estimated_keys": len(prep.terms.estimated_keys()), "space_args": space.space_args(),
            "training": job.engine.record()})
    write_report(run, report)
    from nas.search.dnas.plots import plot_search
    plot_search(history, prep.dist, run.path, target_ms=job.target_ms, attainable=(prep.min_ms, prep.max_ms))
    return report


def cost_detail(prep: PreparedSupernetSearch, arch: Arch) -> dict:
    """Which cost the search used; under ``--cost flops`` the fitted line and the table's prediction beside it."""
    if prep.job.cost == "latency":
        return {"cost": "latency"}
    return {"cost": "flops", "flops_fit": prep.cost.fit.to_dict(), "macs_of_arch": sum(
        prep.cost.macs(k) for k in prep.lm.arch_keys(prep.space, arch)), "table_predicted_ms": prep.lm.predict(
        prep.space, arch)}


class SupernetStrategy(Strategy):
    """DNAS or DMasking (``config.method``), as a ``nas.search.strategy.Strategy``."""

    def __init__(self, config: SearchJob):
        super().__init__(config)
        self.name = config.method

    def prepare(self, progress: Progress = no_progress) -> PreparedSupernetSearch:
        return _prepare(self.config, progress)

    def run(self, prepared: PreparedSupernetSearch, run: RunDir, progress: Progress = no_progress) -> dict:
        return _run(prepared, run, progress)
