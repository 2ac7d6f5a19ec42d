"""A finished search's run directory, read back as what a comparison needs: its winner, data, recipe and device.

A run of ``hwnas search dnas | dmasking | nars | chamnet | optuna`` on a model space holds ``config.json`` (the dataset
and its split seed; the DNAS / DMasking recipe as ``recipe.*`` keys), ``arch.json`` (the winner with its space
arguments), ``recipe.json`` (the predictor searches' winner's own recipe), ``report.json`` (device, test accuracy,
measured latency) and ``model.onnx``. Everything is checked here, before a comparison writes anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nas.arch.space import Arch, Space, load_arch, load_space
from nas.errors import HwnasError, SearchError
from nas.train.recipe import Recipe, load_recipe, parse_recipe

SUPERNET_COMMANDS = ("search dnas", "search dmasking")
PREDICTOR_COMMANDS = ("search nars", "search chamnet", "search optuna")


@dataclass
class SearchedRun:
    path: Path
    method: str  # dnas | dmasking | nars | chamnet | optuna
    cost: str  # latency | flops (the DNAS / DMasking ablation)
    device: str
    dataset: str
    data_seed: int  # the train / val / test split of the run (every contender trains and tests on it)
    skip_bad_images: bool
    recipe: Recipe  # what the winner was retrained with
    space: Space
    arch: Arch
    accuracy: float
    measured_ms: float
    tables_dir: str | None  # where the run's device table was (predictor searches record it), else None

    @property
    def model(self) -> Path:
        return self.path / "model.onnx"

    @property
    def label(self) -> str:
        """``dmasking``, ``dmasking --cost flops``, ``nars``: the method as the user ran it."""
        return self.method + (" --cost flops" if self.cost == "flops" else "")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise SearchError(f"{path.parent}: no {path.name} ({what}); is it the folder of a finished search?")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise SearchError(f"{path}: not valid JSON") from None
    if not isinstance(data, dict):
        raise SearchError(f"{path}: not a JSON object")
    return data


def read_run(path: str | Path) -> SearchedRun:
    """The run directory ``path`` as a ``SearchedRun``; SearchError naming the file for anything missing or wrong."""
    path = Path(path)
    if not path.is_dir():
        raise SearchError(f"run directory not found: {path}")
    config = _read_json(path / "config.json", "the run's settings")
    command = config.get("command")
    if command not in SUPERNET_COMMANDS + PREDICTOR_COMMANDS:
        raise SearchError(f"{path}: a run of {command!r}; compare takes runs of "
                          f"{', '.join(c.split()[1] for c in SUPERNET_COMMANDS + PREDICTOR_COMMANDS)}")
    if str(config.get("space", "")).startswith("table:"):
        raise SearchError(f"{path}: a search over a table ({config['space']}) has no model to compare")
    report = _read_json(path / "report.json", "the search has not finished")
    for key in ("device", "accuracy", "measured_ms"):
        if report.get(key) is None:
            raise SearchError(f"{path / 'report.json'}: no {key!r} (was the winner exported and measured?)")
    if not (path / "model.onnx").is_file():
        raise SearchError(f"{path}: no model.onnx (the winner was not exported)")
    try:
        arch, space_args = load_arch(str(path / "arch.json"))
        space = load_space(str(config.get("space") or arch.space), **space_args)  # a YAML path, or a name
        arch = space.validate(arch)
    except HwnasError as e:
        raise SearchError(f"{path / 'arch.json'}: {e}") from None
    if command in SUPERNET_COMMANDS:
        recipe = parse_recipe({k[len("recipe."):]: v for k, v in config.items() if k.startswith("recipe.")},
                              str(path / "config.json"))
    else:
        recipe = load_recipe(path / "recipe.json")
    return SearchedRun(path, command.split()[1], config.get("cost", "latency"), str(report["device"]),
                       str(config.get("dataset", "digits")), int(config.get("split_seed", config.get("seed", 0))),
                       bool(config.get("skip_bad_images", False)), recipe, space, arch, float(report["accuracy"]),
                       float(report["measured_ms"]), config.get("tables_dir"))
