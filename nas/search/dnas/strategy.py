"""The differentiable searches as strategies (``nas.search.strategy``): DNAS and DMasking, end to end.

``SupernetStrategy.prepare`` checks everything a user can get wrong (data, space, device table and its coverage,
the latency target against the attainable range) before anything is written; ``run`` then owns the run directory:
``config.json``, the per-epoch search checkpoint, ``history.csv``, ``arch.json``, ``model.onnx``, ``report.json``
and the plots. Rerunning the same command on the same directory resumes wherever it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd
import torch

from nas.arch.space import Arch, Space
from nas.data.dataset import Dataset
from nas.data.task import load_search_task
from nas.errors import LatencyTableError, SearchError
from nas.latency.device import Device
from nas.latency.measurement import Measurement
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
from nas.search.dnas.search import SearchSettings, SupernetSearch
from nas.search.finalize import measuring_device, train_export_measure
from nas.search.report import MODEL, build_report, latency_remedies, write_report
from nas.search.strategy import Strategy
from nas.train.engine import Engine
from nas.train.recipe import Recipe

METHODS = ("dnas", "dmasking")
TARGET_TOLERANCE = 0.10  # the final arch's predicted latency lands within 10% under the target


@dataclass
class SearchJob:
    method: str  # "dnas" | "dmasking"
    space: str
    device: str
    dataset: str = "digits"
    target_ms: float | None = None
    resolution: int | None = None
    width: float | None = None
    seed: int = 0
    settings: SearchSettings = field(default_factory=SearchSettings)
    recipe: Recipe = field(default_factory=Recipe)
    tables_dir: str | None = None
    profile: bool = False
    allow_estimated: bool = False
    engine: Engine = field(default_factory=Engine)  # where the supernet and the winner train
    skip_bad_images: bool = False
    cost: str = "latency"  # "latency": the device's table; "flops": FLOPs fitted to its ms (the ablation)

    def config(self, space: Space) -> dict:
        """Everything that determines the result (what a resumed run must match), flat so that a mismatch names
        the setting (``search.epochs``, ``recipe.lr``)."""
        return {"command": f"search {self.method}", "space": self.space, "dataset": self.dataset,
                "device": self.device, "space_args": space.space_args(), "target_ms": self.target_ms,
                "seed": self.seed, "cost": self.cost, "accelerator": self.engine.accelerator.kind,
                "precision": self.engine.accelerator.precision, "world_size": self.engine.world.size,
                **{f"search.{k}": v for k, v in self.settings.to_dict().items()},
                **{f"recipe.{k}": v for k, v in self.recipe.model_dump().items()}}


@dataclass
class PreparedSearch:
    job: SearchJob
    data: Dataset
    space: Space
    lm: LatencyModel
    cost: LatencyModel  # what the search costs archs with: ``lm``, or the FLOPs line (``--cost flops``)
    dist: ArchDistribution
    terms: LatencyTerms
    min_ms: float
    max_ms: float

    def run_config(self) -> dict:
        return self.job.config(self.space)

    def run_name(self) -> str:
        return self.space.name

    def summary(self) -> str:
        s = self.space
        return (f"{self.job.method} on {s.name} @ {s.resolution}px x{s.width_multiplier:g}, {self.job.dataset} "
                f"{self.data.sizes()}, device {self.job.device}{' (cost: FLOPs)' if self.job.cost == 'flops' else ''}"
                f": attainable {self.min_ms:.4g}-{self.max_ms:.4g} ms; "
                f"search and training on {self.job.engine.accelerator.describe()}")


def profile_command(job: SearchJob, space: Space) -> str:
    cmd = (f"hwnas latency profile --space {job.space} --device {job.device} --resolution {space.resolution} "
           f"--width {space.width_multiplier:g} --classes {space.classes} --in-channels {space.in_channels}")
    return cmd + (f" --tables-dir {job.tables_dir}" if job.tables_dir else "")


def _profile(job: SearchJob, space: Space, progress: Progress) -> None:
    """Measure the space's missing keys on this machine, then (re)fit the table's correction."""
    from nas.latency.calibrate import calibrate
    from nas.latency.profile import profile_items, space_profile_items
    from nas.latency.timing import TimingConfig

    try:
        device = Device.load(job.device, job.tables_dir)
    except LatencyTableError:  # a new device: one thread, CPU-time clock (robust while others share the cores)
        device = Device(clock="cpu", device_id=job.device)
    settings = dict(provider=device.provider, threads=device.threads, tables_dir=job.tables_dir,
                    optimization=device.optimization)
    profile_items(job.device, space_profile_items(space), **settings, timing=TimingConfig(clock=device.clock),
                  on_progress=lambda d, t, note: progress("profile", d, t, note))
    calibrate(job.device, space, **settings, on_progress=lambda d, t, note: progress("calibrate", d, t, note))


def _prepare(job: SearchJob, progress: Progress = no_progress) -> PreparedSearch:
    """Load and check everything; raise a one-line HwnasError for any bad input. Writes nothing but tables."""
    if job.method not in METHODS:
        raise SearchError(f"unknown method {job.method!r} (use {' or '.join(METHODS)})")
    if job.target_ms is not None and job.target_ms <= 0:
        raise SearchError(f"--target-ms must be positive, got {job.target_ms}")
    if job.settings.alpha < 0 or job.settings.beta <= 0:
        raise SearchError(f"--alpha must be >= 0 and --beta > 0, got alpha {job.settings.alpha}, "
                          f"beta {job.settings.beta}")
    if job.cost not in COSTS:
        raise SearchError(f"--cost must be {' or '.join(COSTS)}, got {job.cost!r}")
    if job.settings.epochs < 2:
        raise SearchError(f"--epochs must be at least 2 (one warm-up epoch, then search), got {job.settings.epochs}")
    data, space = load_search_task(job.dataset, job.space, resolution=job.resolution, width=job.width,
                                   seed=job.seed, skip_bad_images=job.skip_bad_images)
    masks = job.method == "dmasking"
    if not (any(len(layer.candidates) > 1 for layer in space.layers)
            or masks and (space.searches_channels or space.searches_resolution)):
        raise SearchError(f"space {space.name!r} has no choices for {job.method} to make (a fixed model?)")
    dist = ArchDistribution(space, search_channels=masks, search_resolution=masks)
    try:
        lm = LatencyModel.load(job.device, job.tables_dir)
    except LatencyTableError as e:
        if not job.profile:
            raise LatencyTableError(f"no usable latency table for device {job.device!r} in "
                                    f"{tables_root(job.tables_dir)} ({e}); measure it with "
                                    f"`{profile_command(job, space)}` or rerun with --profile") from None
        _profile(job, space, progress)
        lm = LatencyModel.load(job.device, job.tables_dir)
    terms = LatencyTerms(dist, lm)
    missing = terms.estimated_keys()
    if missing and job.profile:
        _profile(job, space, progress)
        lm = LatencyModel.load(job.device, job.tables_dir)
        terms = LatencyTerms(dist, lm)
        missing = terms.estimated_keys()
    cost = lm
    if job.cost == "flops":  # the table is not used: its missing keys do not matter
        cost = FlopsLatencyModel.fit_on_calibration(lm)
        terms, missing = LatencyTerms(dist, cost), []
    if missing and not job.allow_estimated:
        raise LatencyTableError(f"the table of device {job.device!r} lacks {len(missing)} of {len(terms.keys())} "
                                f"blocks this search needs (e.g. {missing[0]}); measure them with "
                                f"`{profile_command(job, space)}`, or rerun with --profile (or --allow-estimated)")
    min_ms, max_ms = attainable_range_ms(terms)
    if job.target_ms is not None and not (min_ms <= job.target_ms <= max_ms):
        side = "below the fastest" if job.target_ms < min_ms else "above the slowest"
        raise SearchError(f"target {job.target_ms:g} ms is {side} arch of {space.name} on device {job.device!r}: "
                          f"attainable {min_ms:.4g}-{max_ms:.4g} ms at {space.resolution}px, width "
                          f"{space.width_multiplier:g}")
    return PreparedSearch(job, data, space, lm, cost, dist, terms, min_ms, max_ms)


def build_supernet(prep: PreparedSearch) -> torch.nn.Module:
    """DNAS: FBNet's supernet (a block per candidate). DMasking: the shared-weight masked supernet."""
    if prep.job.method == "dnas":
        return DNASSupernet(prep.dist, prep.job.recipe.dropout)
    return DMaskingSupernet(prep.dist, prep.job.recipe.dropout)


def final_arch(prep: PreparedSearch) -> tuple[Arch, dict]:
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


def _run(prep: PreparedSearch, run: RunDir, progress: Progress = no_progress) -> dict:
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

    device, note = measuring_device(lm.device)
    figures = train_export_measure(space, arch, prep.data, job.recipe, run, device=device, on_epoch=trained,
                                   table=lm.table, note=note, engine=job.engine)
    shared = {k: figures.pop(k) for k in ("accuracy", "measured_ms", "onnx_max_abs_diff")}
    report = build_report(
        job.method, device=job.device, predicted_ms=predicted, target_ms=job.target_ms, **shared,
        measurement=Measurement.from_dict(figures.pop("measurement")),
        remedies=latency_remedies(job.device, tables_dir=job.tables_dir, model_path=run.file(MODEL),
                                  reprofile=profile_command(job, space)), detail={
            **figures, "measurement_note": note, "attainable_ms": [prep.min_ms, prep.max_ms], **selection,
            **cost_detail(prep, arch), "decidedness": prep.dist.decidedness(),
            "search_epochs": epochs, "search_seconds": search_seconds,
            "supernet_val_accuracy": history[-1]["val_accuracy"], "final_alpha": history[-1]["alpha"],
            "estimated_keys": len(prep.terms.estimated_keys()), "space_args": space.space_args(),
            "training": job.engine.record()})
    write_report(run, report)
    from nas.search.dnas.plots import plot_search
    plot_search(history, prep.dist, run.path, target_ms=job.target_ms, attainable=(prep.min_ms, prep.max_ms))
    return report


def cost_detail(prep: PreparedSearch, arch: Arch) -> dict:
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

    def prepare(self, progress: Progress = no_progress) -> PreparedSearch:
        return _prepare(self.config, progress)

    def run(self, prepared: PreparedSearch, run: RunDir, progress: Progress = no_progress) -> dict:
        return _run(prepared, run, progress)
