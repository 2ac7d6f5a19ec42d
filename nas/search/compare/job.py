"""``hwnas compare``: searched winners against what a user would do instead, at the same measured latency.

For every run directory given, each baseline (a fixed model: FBNet-A/B/C, MobileNetV2) is width-scaled to the run
winner's measured latency on the run's device (``scaling``), trained with the run's recipe on the run's data split
over ``seeds`` seeds, exported and timed; then every exported model is timed again in one interleaved pass per device,
and the figures go to ``results.csv`` / ``results.json`` (one row per contender: mean and standard deviation over
seeds), ``models.csv`` (one row per trained model) and ``pareto.png``. The folder:

    OUT/config.json                      the comparison (a rerun with the same OUT resumes it)
    OUT/<run>/<baseline>/width.json      the width chosen and every width timed on the way
    OUT/<run>/<contender>/seed<k>/       one training each (a run directory: resumes, never trains twice)
    OUT/models.csv, results.csv, results.json, pareto.png
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nas.arch.space import load_space
from nas.arch.spec import builtin_spaces
from nas.data.dataset import Dataset, load_dataset
from nas.errors import HwnasError, SearchError
from nas.latency.measurement import MeasuringDevice, measuring_device
from nas.latency.model import LatencyModel
from nas.latency.timing import TimingConfig
from nas.progress import Progress, no_progress
from nas.run import RunDir
from nas.search.compare.contenders import Contender, measure_models, summarise, train_contender
from nas.search.compare.plot import plot_comparison
from nas.search.compare.runs import SearchedRun, read_run
from nas.search.compare.scaling import TOLERANCE, WidthChoice, scale_to_latency, scaled_space
from nas.train.engine import Engine

DEFAULT_BASELINES = ("fbnet_a", "mobilenet_v2")


@dataclass
class CompareJob:
    runs: list[str]
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    seeds: int = 1
    tables_dir: str | None = None
    engine: Engine = field(default_factory=Engine)  # where the contenders train
    timing: TimingConfig | None = None  # the final measurement pass (default: the device's timing settings)


@dataclass
class PreparedCompare:
    job: CompareJob
    runs: list[SearchedRun]
    names: list[str]  # each run's folder under OUT (its own folder's name, made unique)
    models: dict[str, LatencyModel]  # device id -> its latency model
    data: dict[tuple, Dataset]

    def dataset(self, run: SearchedRun) -> Dataset:
        return self.data[data_key(run)]

    def measure_on(self, run: SearchedRun) -> MeasuringDevice:
        """Where ``run``'s models are timed from here (``nas.latency.measurement.measuring_device``)."""
        return measuring_device(self.models[run.device].device)


def data_key(run: SearchedRun) -> tuple:
    return run.dataset, run.space.resolution, run.data_seed, run.skip_bad_images


def fixed_models() -> list[str]:
    return [name for name, kind in builtin_spaces().items() if kind == "conv" and load_space(name).is_fixed]


def prepare_compare(job: CompareJob, progress: Progress = no_progress) -> PreparedCompare:
    """Read and check every run, baseline, device table and dataset; one-line HwnasError for any bad input.
    Writes nothing."""
    if not job.runs:
        raise SearchError("give at least one run directory to compare")
    if job.seeds < 1:
        raise SearchError(f"--seeds must be at least 1, got {job.seeds}")
    if len(set(job.baselines)) != len(job.baselines):
        raise SearchError("--baseline: a model is named twice")
    for name in job.baselines:
        try:
            fixed = load_space(name).is_fixed
        except HwnasError:
            fixed = False
        if not fixed:
            raise SearchError(f"--baseline {name!r} is not a fixed model (built in: {', '.join(fixed_models())})")
    runs = [read_run(p) for p in job.runs]
    if len({r.path.resolve() for r in runs}) != len(runs):
        raise SearchError("a run directory is given twice")
    names: list[str] = []
    for r in runs:
        name, k = r.path.resolve().name, 2
        while name in names:
            name, k = f"{r.path.resolve().name}-{k}", k + 1
        names.append(name)
    models = {}
    for r in runs:
        if r.device not in models:
            models[r.device] = LatencyModel.load(r.device, job.tables_dir or r.tables_dir)
        for name in job.baselines:
            scaled_space(name, r.space, 1.0)  # the baseline fits the run's input (channels, classes)
    data = {}
    for i, r in enumerate(runs):
        if data_key(r) not in data:
            progress("data", i, len(runs), r.dataset)
            data[data_key(r)] = load_dataset(r.dataset, resolution=r.space.resolution, seed=r.data_seed,
                                             skip_bad_images=r.skip_bad_images)
    progress("data", len(runs), len(runs), "loaded")
    return PreparedCompare(job, runs, names, models, data)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def baseline_width(prep: PreparedCompare, run: SearchedRun, name: str, folder: Path,
                   progress: Progress = no_progress) -> WidthChoice:
    """Fixed model ``name``'s width for ``run``, chosen by ``scale_to_latency`` and kept in ``folder/width.json``
    (read back while the run's model is unchanged)."""
    path = folder / "width.json"
    reference = _sha256(run.model)
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("reference_sha256") == reference:
            return WidthChoice.from_dict(stored["choice"])
    choice = scale_to_latency(name, run.space, run.model, run.measured_ms, prep.models[run.device],
                              prep.measure_on(run).device,
                              on_round=lambda r, note: progress("scale widths", None, None, note))
    RunDir(folder, {"command": "compare baseline", "baseline": name, "run": str(run.path.resolve())}).write_json(
        "width.json", {"reference": str(run.model), "reference_sha256": reference, "choice": choice.to_dict()})
    return choice


def searched_contender(run: SearchedRun, label: str | None = None) -> Contender:
    return Contender(run, "searched", label or run.label, "searched", run.space, run.arch)


def baseline_contender(prep: PreparedCompare, run: SearchedRun, name: str, folder: Path,
                       progress: Progress = no_progress) -> Contender:
    """Fixed model ``name`` width-scaled to ``run``'s winner (its width kept in ``folder``)."""
    choice = baseline_width(prep, run, name, folder, progress)
    space = scaled_space(name, run.space, choice.width)
    return Contender(run, name, f"{name} x{choice.width:g}", "baseline", space, space.fixed_arch(), choice)


def contenders(prep: PreparedCompare, out: Path, progress: Progress = no_progress) -> list[Contender]:
    """Every run's winner and its width-scaled baselines (widths chosen, or read back)."""
    found = []
    several = len({r.label for r in prep.runs}) < len(prep.runs)
    total = len(prep.runs) * len(prep.job.baselines)
    for i, (run, name) in enumerate(zip(prep.runs, prep.names)):
        found.append(searched_contender(run, f"{run.label} ({name})" if several else None))
        for j, baseline in enumerate(prep.job.baselines):
            progress("scale widths", i * len(prep.job.baselines) + j, total, baseline)
            found.append(baseline_contender(prep, run, baseline, out / name / baseline, progress))
    progress("scale widths", total, total, "done")
    return found


def train_all(prep: PreparedCompare, found: list[Contender], folder_of, progress: Progress = no_progress,
              seeds: int | None = None) -> list[dict]:
    """Train every contender over the seeds (resuming; finished trainings are read back); one row per model."""
    seeds = seeds or prep.job.seeds
    plan = [(c, s) for c in found for s in range(seeds)]
    sizes = {id(c): c.size() for c in found}
    rows = []
    for n, (c, seed) in enumerate(plan):
        note_of = f"{c.label} seed {seed}"
        progress("train", n, len(plan), note_of)
        trained = train_contender(
            c, seed, folder_of(c), prep.dataset(c.run), measure_on=prep.measure_on(c.run),
            table=prep.models[c.run.device].table, engine=prep.job.engine,
            on_epoch=lambda e, row: progress("train", n, len(plan), f"{note_of}: epoch {e} loss "
                                                                    f"{row['train_loss']:.3f}"))
        rows.append({**trained.to_dict(), "device": c.run.device, **sizes[id(c)]})
    progress("train", len(plan), len(plan), "done")
    return rows


def measure_all(prep: PreparedCompare, rows: list[dict], progress: Progress = no_progress) -> list[dict]:
    """Every model of ``rows`` timed again, interleaved with the others of its device, in one pass per device."""
    out = [dict(r) for r in rows]
    for device_id in dict.fromkeys(r["device"] for r in rows):
        measure_on = measuring_device(prep.models[device_id].device)
        mine = [r for r in out if r["device"] == device_id]
        stats = measure_models([Path(r["model"]) for r in mine], measure_on.device, prep.job.timing,
                               lambda k: progress("measure", k, None, f"{len(mine)} models on {device_id}"))
        for r, st in zip(mine, stats):
            r.update({"measured_ms": st.p50_ms, "measured_p90_ms": st.p90_ms, "measurement_stable": st.stable,
                      "measurement_note": measure_on.note})
    return out


def results(prep: PreparedCompare, measured: list[dict]) -> list[dict]:
    """``summarise``'s rows, each with its run's folder name and its latency and accuracy against the run's
    searched winner."""
    names = {str(r.path): n for r, n in zip(prep.runs, prep.names)}
    rows = summarise(measured)
    winners = {r["run"]: r for r in rows if r["kind"] == "searched"}
    for r in rows:
        w = winners.get(r["run"])
        r["run_name"] = names[r["run"]]
        r["latency_vs_searched"] = r["measured_ms"] / w["measured_ms"] if w else None
        r["accuracy_vs_searched"] = r["accuracy"] - w["accuracy"] if w else None
        r["legend"] = (r.get("group") or r["label"]) if r["kind"] == "searched" else (
            "random archs" if r["kind"] == "random" else f"{r['contender']} (width-scaled)")
    return rows


def width_warnings(rows: list[dict]) -> list[str]:
    """A line for each baseline no width brought within the tolerance of its run's winner (a model too large even
    at its narrowest, or too small at its widest)."""
    return [f"{r['contender']}: no width within {TOLERANCE:.0%} of {r['run_name']}'s winner's latency; the closest "
            f"(x{r['width']:g}) timed {r['width_measured_ratio']:.2f}x it" for r in rows
            if r["kind"] == "baseline" and abs(r["width_measured_ratio"] - 1) > TOLERANCE]


def plot_title(prep: PreparedCompare, seeds: int) -> str:
    datasets = ", ".join(dict.fromkeys(Path(r.dataset.split(":", 1)[-1]).name for r in prep.runs))
    devices = ", ".join(prep.models)
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
    return f"{datasets}: test accuracy vs measured latency on {devices} ({spread})"


def write_results(prep: PreparedCompare, run: RunDir, measured: list[dict], seeds: int) -> dict:
    rows = results(prep, measured)
    run.write_csv("models.csv", pd.DataFrame(measured))
    run.write_csv("results.csv", pd.DataFrame(rows))
    plot = plot_comparison(rows, run.file("pareto.png"), title=plot_title(prep, seeds))
    summary = {"runs": [str(r.path) for r in prep.runs], "baselines": prep.job.baselines, "seeds": seeds,
               "results": rows, "models": measured, "plot": str(plot), "warnings": width_warnings(rows)}
    run.write_json("results.json", summary)
    return summary


def run_compare(prep: PreparedCompare, out: str | Path, progress: Progress = no_progress) -> dict:
    """Scale, train, measure, plot (resuming whatever ``out`` already holds); the summary written to
    ``results.json``."""
    run = RunDir(out, {"command": "compare"})
    found = contenders(prep, run.path, progress)
    names = {id(r): n for r, n in zip(prep.runs, prep.names)}
    rows = train_all(prep, found, lambda c: run.path / names[id(c.run)] / c.slug, progress)
    return write_results(prep, run, measure_all(prep, rows, progress), prep.job.seeds)
