"""The models a comparison trains and times: the searched winner and its alternatives, each over several seeds.

Every contender is compared on its run's terms: the run's data split, recipe and device. Seed ``k`` trains with the
recipe's seed plus ``k`` (the split stays the run's, so every contender is tested on the same images); the searched
winner's seed 0 is the run's own trained model. Each training is a run directory of its own
(``<folder>/seed<k>/``: ``config.json``, checkpoint, ``model.onnx``, ``report.json``), so a comparison resumes
where it stopped and never trains a model twice. Latency is not judged from the trainings' own measurements (each
timed alone, at whatever load the machine had then) but from one interleaved pass over every exported model
(``measure_models``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from nas.arch.space import Arch, Space
from nas.data.dataset import Dataset
from nas.latency.device import Device
from nas.latency.measurement import MeasuringDevice
from nas.latency.table import LatencyTable
from nas.latency.timing import LatencyStats, TimingConfig
from nas.run import RunDir
from nas.search.compare.runs import SearchedRun
from nas.search.compare.scaling import WidthChoice
from nas.search.finalize import train_export_measure
from nas.train.engine import Engine, EpochCallback

KINDS = ("searched", "baseline", "random")


@dataclass
class Contender:
    """One model of a comparison, compared on ``run``'s data, recipe and device."""

    run: SearchedRun
    slug: str  # its folder under the run's: "searched", "fbnet_a", "random1"
    label: str  # what the table and the plot call it: "dmasking", "fbnet_a x0.35"
    kind: str  # one of KINDS
    space: Space
    arch: Arch
    width: WidthChoice | None = None  # a width-scaled baseline's choice
    group: str | None = None  # the plot's one legend entry for several contenders (e.g. one search's seeds)

    def size(self) -> dict:
        """MACs and params of the deployed model (``hwnas space show``'s counting)."""
        from nas.models.builder import build_model, count_macs, count_params

        model = build_model(self.space, self.arch)
        return {"macs": count_macs(model, model.input_shape), "params": count_params(model)}

    def recipe_for(self, seed: int):
        return self.run.recipe.model_copy(update={"seed": self.run.recipe.seed + seed})

    def training_config(self, seed: int) -> dict:
        """What determines a training (a resumed one must match it)."""
        return {"command": "compare train", "contender": self.label, "space": self.space.name,
                "space_args": self.space.space_args(), "arch": self.arch.to_dict(), "dataset": self.run.dataset,
                "data_seed": self.run.data_seed, "recipe": self.recipe_for(seed).model_dump(),
                "device": self.run.device}


@dataclass
class Trained:
    """One contender trained with one seed: its test accuracy and exported model."""

    contender: Contender
    seed: int
    accuracy: float
    model: Path

    def to_dict(self) -> dict:
        c = self.contender
        return {"run": str(c.run.path), "contender": c.slug, "label": c.label, "kind": c.kind, "seed": self.seed,
                "accuracy": self.accuracy, "model": str(self.model), "width": c.width.width if c.width else None,
                "width_measured_ratio": c.width.measured_ratio if c.width else None, "group": c.group}


def trained_report(folder: Path) -> dict | None:
    """A finished training's figures, or None if it has not finished."""
    path = folder / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None


def train_contender(c: Contender, seed: int, folder: Path, data: Dataset, *, measure_on: MeasuringDevice,
                    table: LatencyTable, engine: Engine | None = None, on_epoch: EpochCallback | None = None
                    ) -> Trained:
    """Contender ``c`` trained with seed ``seed`` in ``folder/seed<seed>`` (resumed, or read back when done); the
    searched winner's seed 0 is its run's own model."""
    if c.kind == "searched" and seed == 0:
        return Trained(c, 0, c.run.accuracy, c.run.model)
    path = folder / f"seed{seed}"
    run = RunDir(path, c.training_config(seed))
    report = trained_report(path)
    if report is None:
        report = train_export_measure(c.space, c.arch, data, c.recipe_for(seed), run, measure_on=measure_on,
                                      on_epoch=on_epoch, table=table, engine=engine)
        run.write_json("report.json", report)
    return Trained(c, seed, float(report["accuracy"]), path / report["onnx"])


def measure_models(models: list[Path], device: Device, timing: TimingConfig | None = None,
                   on_round=None) -> list[LatencyStats]:
    """Every model timed in one interleaved pass on ``device`` (each round runs all of them, so a burst of load
    lands on all alike)."""
    return device.time_files(models, timing, on_round)


def _mean_std(values: Iterable[float]) -> tuple[float, float | None]:
    v = np.asarray(list(values), dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def summarise(rows: list[dict]) -> list[dict]:
    """One row per contender from its seeds' rows (``accuracy``, ``measured_ms``, and ``macs``, ``params``): mean
    and standard deviation over seeds (None for one seed), in the order the contenders first appear."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["run"], row["contender"]), []).append(row)
    out = []
    for (run, slug), group in groups.items():
        first = group[0]
        acc, acc_std = _mean_std(r["accuracy"] for r in group)
        ms, ms_std = _mean_std(r["measured_ms"] for r in group)
        out.append({"run": run, "contender": slug, "label": first["label"], "kind": first["kind"],
                    "width": first.get("width"), "width_measured_ratio": first.get("width_measured_ratio"),
                    "seeds": len(group), "accuracy": acc, "accuracy_std": acc_std,
                    "measured_ms": ms, "measured_ms_std": ms_std, "macs": first.get("macs"),
                    "params": first.get("params"), "group": first.get("group")})
    return out
