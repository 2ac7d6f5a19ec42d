"""A search problem: a decision space, an expensive evaluation, free latency and free proxies, constraints.

``ModelProblem`` is a joint arch x recipe space evaluated by training (latency from each device's
LatencyModel); ``TableProblem`` is a user's table (latency from its latency columns); ``CapacityProblem``
(``nas.search.capacity.search``) is a trained dynamic-capacity ViT's keep ratios x threshold. Each holds an
``Evaluator``. The searches (NARS, GP-BO, evolution, Optuna) see only this interface, so each runs on all.

Latency constraints (``--target``, ``nas.search.targets``): ``5ms`` bounds every device at 5 ms;
``phone=5ms,server=p40`` bounds each named device; relative terms are resolved per device (``nas.search.predict.search_setup``). Several
constraints give a Pareto family (one winner per constraint).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from nas.errors import SearchError
from nas.search.blackbox.decisions import DecisionSpace
from nas.search.targets import parse_bounds


class Evaluator(Protocol):
    """The expensive evaluation of one candidate: a dict of named metrics (floats)."""

    def evaluate(self, candidate: Any) -> dict[str, float]: ...


@dataclass(frozen=True)
class Constraint:
    """Latency bounds in ms per device; ``None`` as the device means every device. ``given``: the bounds as the
    user wrote them (``p25``), when that is not ``label``."""

    limits: tuple[tuple[str | None, float], ...]
    given: str = field(default="", compare=False)

    @property
    def label(self) -> str:
        if not self.limits:
            return "unconstrained"
        return ",".join(f"{d}={ms:g}ms" if d else f"{ms:g}ms" for d, ms in self.limits)

    @property
    def slug(self) -> str:
        """A file-name-safe label (``5ms``, ``phone-5ms_server-2ms``)."""
        if not self.limits:
            return "unconstrained"
        return "_".join(f"{d}-{ms:g}ms" if d else f"{ms:g}ms" for d, ms in self.limits).replace("/", "-")

    def bound(self, devices: list[str]) -> np.ndarray:
        """The limit per device (inf where unconstrained)."""
        out = np.full(len(devices), np.inf)
        for d, ms in self.limits:
            for j, name in enumerate(devices):
                if d is None or d == name:
                    out[j] = min(out[j], ms)
        return out

    def feasible(self, latency_ms: np.ndarray, devices: list[str]) -> np.ndarray:
        """Boolean mask of rows of an n x devices latency array meeting every bound."""
        latency_ms = np.atleast_2d(latency_ms)
        if latency_ms.shape[1] == 0:
            return np.ones(len(latency_ms), dtype=bool)
        return (latency_ms <= self.bound(devices)[None, :] + 1e-12).all(axis=1)

    def violation(self, latency_ms: np.ndarray, devices: list[str]) -> np.ndarray:
        """Largest excess over the bounds in ms (<= 0 when feasible), per row."""
        latency_ms = np.atleast_2d(latency_ms)
        if latency_ms.shape[1] == 0:
            return np.zeros(len(latency_ms))
        b = self.bound(devices)
        excess = np.where(np.isfinite(b)[None, :], latency_ms - b[None, :], -np.inf)
        return excess.max(axis=1)

    def describe(self) -> str:
        """``p25 (0.0412ms)``, or the label alone when the bounds were given in milliseconds."""
        return f"{self.given} ({self.label})" if self.given and self.given != self.label else self.label

    def to_dict(self) -> dict:
        return {"label": self.label, "given": self.given or self.label,
                "limits_ms": {d or "*": ms for d, ms in self.limits}}


def parse_constraint(text: str, devices: list[str]) -> Constraint:
    """``"5"`` or ``"dev=5,dev2=8ms"`` (milliseconds) -> Constraint; SearchError naming the text on a bad form or
    device. Relative bounds (``p25``) need the space's latencies: ``search_setup.build_constraints``."""
    return Constraint(tuple((dev, form.value) for dev, form in parse_bounds(text, devices, "--target-ms")))


class SearchProblem(ABC):
    """What every strategy needs. Subclasses fill in the space, the evaluation and the free figures."""

    space: DecisionSpace
    evaluator: Evaluator
    objective: str
    maximize: bool = True
    devices: list[str]
    proxy_names: list[str]
    finite: bool = False  # True when the candidates are a fixed list (a table)
    kind: str = "model"

    def sign(self) -> float:
        return 1.0 if self.maximize else -1.0

    @abstractmethod
    def latency_ms(self, genomes: np.ndarray) -> np.ndarray:  # n x devices, free
        ...

    @abstractmethod
    def proxies(self, genomes: np.ndarray) -> np.ndarray:  # n x proxies, free
        ...

    def pool(self, n: int, seed: int) -> np.ndarray:
        """A space-filling pool of candidate genomes (Sobol points)."""
        return self.space.sobol(n, seed)

    def neighbours(self, genomes: np.ndarray) -> np.ndarray:
        """The candidates one decision away from any of ``genomes`` (``DecisionSpace.neighbours``), distinct."""
        out = [self.space.neighbours(g) for g in np.atleast_2d(genomes)]
        out = np.concatenate(out) if out else np.zeros((0, self.space.dims))
        return out[self.space.unique(out)] if len(out) else out

    def all_candidates(self) -> np.ndarray:
        """Every candidate genome; only finite problems (``finite``: a table) have such a list."""
        raise TypeError(f"a {self.kind} problem has no finite list of candidates")

    @abstractmethod
    def evaluate(self, genome: np.ndarray) -> dict[str, float]:
        ...

    def describe(self, genome: np.ndarray) -> dict[str, Any]:
        return self.space.describe(genome)

    def check_constraints(self, constraints: list[Constraint], probe: np.ndarray) -> None:
        """SearchError for a constraint that no candidate of ``probe`` meets, naming the fastest found."""
        lat = self.latency_ms(probe)
        for c in constraints:
            if not c.feasible(lat, self.devices).any():
                excess = c.violation(lat, self.devices)
                best = int(np.argmin(excess))
                shown = ", ".join(f"{d} {lat[best, j]:.3f} ms" for j, d in enumerate(self.devices))
                scope = "of the table's" if self.finite else "found among"
                raise SearchError(f"no candidate meets the latency constraint {c.label}: the fastest {scope} "
                                  f"{len(probe)} candidates takes {shown}")


class ModelProblem(SearchProblem):
    """A joint arch x recipe space; evaluation trains, latency and proxies come from ModelSpaceCosts."""

    kind = "model"

    def __init__(self, joint, evaluator: Evaluator, costs, objective: str = "val_accuracy", maximize: bool = True):
        self.space = joint
        self.joint = joint
        self.evaluator = evaluator
        self.costs = costs
        self.objective, self.maximize = objective, maximize
        self.devices = list(costs.devices)
        self.proxy_names = costs.proxy_names + ["train_steps"]

    def latency_ms(self, genomes):
        return self.costs.latency_ms(genomes)

    def train_steps(self, genomes: np.ndarray) -> np.ndarray:
        """Optimiser steps of each candidate's training: epochs (capped at the evaluator's max_epochs) x batches
        per epoch. A free proxy of the recipe, as MACs and params are of the architecture."""
        genomes = np.atleast_2d(genomes)
        base = self.joint.base_recipe
        columns = {d.name: j for j, d in enumerate(self.joint.decisions)}
        epochs = np.full(len(genomes), float(base.epochs))
        batch = np.full(len(genomes), float(base.batch_size))
        if "epochs" in columns:
            epochs = self.joint.decisions[columns["epochs"]].values(genomes[:, columns["epochs"]]).astype(float)
        if "batch_size" in columns:
            batch = self.joint.decisions[columns["batch_size"]].values(genomes[:, columns["batch_size"]]).astype(float)
        cap = getattr(self.evaluator, "max_epochs", None)
        if cap is not None:
            epochs = np.minimum(epochs, cap)
        n_train = len(self.evaluator.data.y_train) if hasattr(self.evaluator, "data") else 1
        return epochs * np.ceil(n_train / batch)

    def proxies(self, genomes):
        return np.column_stack([self.costs.proxies(genomes), self.train_steps(genomes)])

    def evaluate(self, genome):
        return self.evaluator.evaluate(self.joint.candidate(genome))

    def smallest_genomes(self) -> np.ndarray:
        """Archs near the latency minimum: per layer the cheapest op on the primary device, at every
        channel / resolution extreme, to check that a constraint can be met at all."""
        joint = self.joint
        base = joint.sample(1, np.random.default_rng(0))[0]
        for j, d in enumerate(joint.decisions[joint.n_arch:], start=joint.n_arch):
            base[j] = 0.0
        for j, d in enumerate(joint.decisions[:joint.n_arch]):
            if d.kind == "ord":
                base[j] = 0.0  # smallest channels / resolution
        out = [base.copy()]
        if self.devices:  # greedy per-layer cheapest op (costs are additive over blocks)
            g = base.copy()
            for j, d in enumerate(joint.decisions[:joint.n_arch]):
                if d.kind != "cat":
                    continue
                trials = np.repeat(g[None, :], d.size, axis=0)
                trials[:, j] = np.arange(d.size)
                g[j] = float(np.argmin(self.latency_ms(trials)[:, 0]))
            out.append(g)
        return np.stack(out)


class TableProblem(SearchProblem):
    """A user's table; genomes are always snapped to existing rows."""

    kind = "table"
    finite = True

    def __init__(self, table, evaluator: Evaluator, maximize: bool = True):
        self.space = table
        self.table = table
        self.evaluator = evaluator
        self.objective = table.objective
        self.maximize = maximize
        self.devices = list(table.latency_columns)
        self.proxy_names = list(table.proxy_columns) + list(table.latency_columns)  # all free

    def latency_ms(self, genomes):
        return self.table.latency_ms(self.table.row_of(genomes))

    def proxies(self, genomes):
        rows = self.table.row_of(genomes)
        return np.column_stack([self.table.proxies(rows), self.table.latency_ms(rows)])

    def pool(self, n: int, seed: int) -> np.ndarray:
        """Sobol points snapped to their nearest rows, de-duplicated, then every other row (shuffled)."""
        sob = self.table.genomes[self.table.row_of(self.space.sobol(min(n, self.table.rows), seed))]
        sob = sob[self.space.unique(sob)]
        seen = set(self.space.keys(sob))
        rest = np.asarray([i for i, k in enumerate(self.space.keys(self.table.genomes)) if k not in seen], int)
        rest = np.random.default_rng(seed).permutation(rest)
        return np.concatenate([sob, self.table.genomes[rest]]) if len(rest) else sob

    def all_candidates(self) -> np.ndarray:
        return self.table.genomes

    def neighbours(self, genomes: np.ndarray) -> np.ndarray:
        """Rows one decision away from any of ``genomes``; a neighbour that is not a row is snapped to the nearest
        other row (a table of sampled candidates rarely holds the exact one); the genomes' own rows are left out."""
        genomes = np.atleast_2d(genomes)
        own = self.table.row_of(genomes)
        rows = [self.table.nearest(self.space.neighbours(g), exclude=[int(r)]) for g, r in zip(genomes, own)]
        rows = np.setdiff1d(np.unique(np.concatenate(rows)), own) if rows else np.zeros(0, int)
        return self.table.genomes[rows]

    def known_scores(self) -> np.ndarray:
        """Every row's objective as a score (higher is better), in ``all_candidates`` order: what a random search
        could draw. Only for judging a search afterwards (``nas.search.predict.convergence``); searches never read it."""
        return self.sign() * self.table.values[self.objective]

    def evaluate(self, genome):
        return self.evaluator.evaluate(int(self.table.row_of(genome[None, :])[0]))
