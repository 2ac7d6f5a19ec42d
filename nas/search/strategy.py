"""The Strategy protocol every search follows, its one progress type, and the registry the CLI builds from.

A strategy is small, in the way Optuna's ``BaseSampler`` is: it holds a configuration, ``prepare(progress)``
checks everything a user can get wrong and writes nothing (but latency tables it is asked to measure), and
``run(prepared, run, progress)`` does the search in a run directory and returns the report written to
``report.json`` (``nas.search.report``). Every strategy reports progress through one callable,
``progress(stage, done, total, note)``.

    strategy = get_strategy("dnas")(DnasConfig(...))
    prepared = strategy.prepare(progress)
    run = open_run(strategy, prepared, out)          # config.json; refuses a run started with other settings
    report = strategy.run(prepared, run, progress)

Registering a strategy (``register(name, "module:Class", help)``) adds it to ``hwnas search`` when one of the
CLI's option sets (``options``) parses its configuration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from nas import import_reference
from nas.errors import SearchError
from nas.progress import Progress, no_progress
from nas.run import RunDir, default_run_path


class Prepared(Protocol):
    """What ``Strategy.prepare`` returns: everything checked and loaded, nothing written."""

    def run_config(self) -> dict:
        """``config.json``: everything that determines the result (what a resumed run must match)."""

    def run_name(self) -> str:
        """What the run is of (a space or model name), for the default run folder."""

    def summary(self) -> str:
        """One line saying what is about to run."""


class Strategy(ABC):
    """A search: a configuration, ``prepare`` (checks, writes nothing) and ``run`` (into a run directory)."""

    name: ClassVar[str]

    def __init__(self, config: Any):
        self.config = config

    @abstractmethod
    def prepare(self, progress: Progress = no_progress) -> Prepared:
        """Load and validate everything; raise a one-line ``HwnasError`` for any bad input."""

    @abstractmethod
    def run(self, prepared: Prepared, run: RunDir, progress: Progress = no_progress) -> dict:
        """Search (resuming from ``run``), write the winner, model and ``report.json``; return the report."""


def open_run(strategy: Strategy, prepared: Prepared, out: str | Path | None = None) -> RunDir:
    """The run directory (default ``results/<strategy>-<name>-<time>``); SearchError if it holds a run started
    with other settings."""
    return RunDir(out or default_run_path(strategy.name, prepared.run_name()), prepared.run_config())


# ---- the registry ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Registered:
    name: str
    target: str | type  # the Strategy class, or "module:Class" (imported on first use: the CLI starts fast)
    help: str
    options: str  # the CLI option set that parses its configuration (several strategies share one)

    def load(self) -> type[Strategy]:
        return import_reference(self.target) if isinstance(self.target, str) else self.target


STRATEGIES: dict[str, Registered] = {}


def register(name: str, target: str | type, help: str, options: str | None = None) -> None:
    """Add (or replace) a strategy; ``options`` defaults to its own name."""
    STRATEGIES[name] = Registered(name, target, help, options or name)


def get_strategy(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise SearchError(f"unknown search strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[name].load()


def strategies(options: str | None = None) -> list[Registered]:
    """The registered strategies, those parsed by one CLI option set when ``options`` is given."""
    return [r for r in STRATEGIES.values() if options is None or r.options == options]


register("dnas", "nas.search.dnas.strategy:SupernetStrategy", "FBNet DNAS: a block per candidate, Gumbel-softmax "
         "over them (all paths, or --sampled-path), loss CE * (1 + alpha * log(LAT / LAT_min)) ** beta.", options="dnas")
register("dmasking", "nas.search.dnas.strategy:SupernetStrategy", "FBNetV2 DMaskingNAS: one shared-weight block per "
         "layer; ops, channels and input resolution chosen through Gumbel-weighted masks.", options="dnas")
register("nars", "nas.search.predict.runner:PredictorStrategy", "FBNetV3 NARS: Sobol pool, MLP predictor "
         "pretrained on free proxies, evolutionary search.", options="predictor")
register("chamnet", "nas.search.predict.runner:PredictorStrategy", "ChamNet GP-BO: Sobol pool, gpytorch GP, expected "
         "improvement, evolutionary search.", options="predictor")
register("optuna", "nas.search.predict.runner:PredictorStrategy", "Optuna multi-objective search (NSGA-II or "
         "TPE) with a latency constraint; resumable studies.", options="predictor")
register("mixed-precision", "nas.search.quant.pipeline:MixedPrecisionStrategy", "Search per-layer (weight, activation) "
         "bits by DNAS, fine-tune, export an ONNX model whose int8 layers are quantized by "
         "onnxruntime.quantization, and compare it with uniform fp32 and uniform int8.")
register("capacity", "nas.search.capacity.strategy:CapacityStrategy", "Choose keep ratios per stage and the "
         "MoE capacity threshold of a trained dynamic-capacity ViT for a latency budget on a device.")
