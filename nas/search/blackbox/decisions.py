"""Decision spaces as arrays: a population of candidates is one float matrix, one column per decision.

Every predictor-guided search (NARS, GP-BO, evolution, Optuna) works on *genomes*: row vectors with one entry
per decision. A categorical or ordinal decision stores its option index; a float or int decision stores its
position in ``[0, 1]`` between ``low`` and ``high`` (on a log scale when ``log``). Sampling, Sobol points,
mutation, crossover and the predictor feature encoding are all whole-population numpy operations, so that an
evolutionary search can score hundreds of thousands of candidates a minute.

The feature encoding (``DecisionSpace.encode``) is the one encoding every predictor sees: one-hot for
categorical decisions, the scaled index for ordinal ones, the ``[0, 1]`` position for numeric ones. For an
architecture it matches ``Space.encode`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
from scipy.stats import qmc

Kind = Literal["cat", "ord", "float", "int"]


@dataclass(frozen=True)
class Decision:
    """One decision. ``options`` for ``cat``/``ord``; ``low``/``high``/``log`` for ``float``/``int``."""

    name: str
    kind: Kind
    options: tuple = ()
    low: float = 0.0
    high: float = 1.0
    log: bool = False

    @property
    def size(self) -> int:
        """Number of options (categorical/ordinal), or of integer values; 0 for a float."""
        if self.kind in ("cat", "ord"):
            return len(self.options)
        if self.kind == "int":
            return int(self.high - self.low) + 1
        return 0

    @property
    def width(self) -> int:
        """Number of feature columns this decision takes in the encoding."""
        return len(self.options) if self.kind == "cat" else 1

    # ---- unit cube <-> genome entries <-> values -------------------------------------------------------------
    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Map points of [0, 1) to genome entries (option index, or canonical position)."""
        u = np.clip(u, 0.0, 1.0 - 1e-12)
        if self.kind in ("cat", "ord"):
            return np.floor(u * len(self.options))
        if self.kind == "int":
            n = self.size
            return np.floor(u * n) / max(n - 1, 1)
        return u

    def value(self, g: float) -> Any:
        """The user-facing value of one genome entry."""
        if self.kind in ("cat", "ord"):
            return self.options[int(round(g))]
        if self.kind == "int":
            return int(round(self.low + g * (self.high - self.low)))
        if self.log:
            return float(math.exp(math.log(self.low) + g * (math.log(self.high) - math.log(self.low))))
        return float(self.low + g * (self.high - self.low))

    def values(self, column: np.ndarray) -> np.ndarray:
        """Vectorised ``value`` for numeric decisions; an object array for categorical ones."""
        if self.kind in ("cat", "ord"):
            return np.asarray(self.options, dtype=object)[np.rint(column).astype(int)]
        if self.kind == "int":
            return np.rint(self.low + column * (self.high - self.low)).astype(np.int64)
        if self.log:
            return np.exp(math.log(self.low) + column * (math.log(self.high) - math.log(self.low)))
        return self.low + column * (self.high - self.low)

    def entry(self, value: Any) -> float:
        """The genome entry of a user-facing value (inverse of ``value``); ValueError if it does not fit."""
        if self.kind in ("cat", "ord"):
            for i, option in enumerate(self.options):
                if option == value or (isinstance(option, (int, float)) and isinstance(value, (int, float))
                                       and float(option) == float(value)):
                    return float(i)
            raise ValueError(f"{value!r} is not an option of {self.name!r} ({list(self.options)})")
        v = float(value)
        if not (self.low - 1e-12 <= v <= self.high + 1e-12):
            raise ValueError(f"{self.name!r}: {v} is outside [{self.low}, {self.high}]")
        if self.high == self.low:
            return 0.0
        if self.log:
            return (math.log(v) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (v - self.low) / (self.high - self.low)


class DecisionSpace:
    """An ordered list of decisions and the whole-population operations on genomes (n x D float arrays)."""

    def __init__(self, decisions: Sequence[Decision]):
        self.decisions = list(decisions)
        if not self.decisions:
            raise ValueError("a decision space needs at least one decision")
        self.names = [d.name for d in self.decisions]
        self.n_features = sum(d.width for d in self.decisions)
        # encoding plan: for categorical columns, the feature offset of option 0
        self._cat_cols = [i for i, d in enumerate(self.decisions) if d.kind == "cat"]
        self._num_cols = [i for i, d in enumerate(self.decisions) if d.kind != "cat"]
        offsets, pos = [], 0
        for d in self.decisions:
            offsets.append(pos)
            pos += d.width
        self._offsets = np.asarray(offsets)
        self._ord_scale = np.asarray([1.0 / max(d.size - 1, 1) if d.kind == "ord" else 1.0
                                      for d in self.decisions])

    @property
    def dims(self) -> int:
        return len(self.decisions)

    def from_unit(self, u: np.ndarray) -> np.ndarray:
        """Map an n x D array of points in [0, 1) to genomes."""
        return np.stack([d.from_unit(u[:, j]) for j, d in enumerate(self.decisions)], axis=1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.from_unit(rng.random((n, self.dims)))

    def sobol(self, n: int, seed: int) -> np.ndarray:
        """``n`` scrambled Sobol points (scipy.stats.qmc) mapped to genomes; n is rounded up to a power of 2."""
        m = max(0, math.ceil(math.log2(max(n, 1))))
        sampler = qmc.Sobol(d=self.dims, scramble=True, seed=seed)
        return self.from_unit(sampler.random_base2(m))[:n]

    def mutate(self, genomes: np.ndarray, rng: np.random.Generator, prob: float = 0.1) -> np.ndarray:
        """Resample each entry with probability ``prob``; every row changes at least one entry."""
        n = len(genomes)
        mask = rng.random(genomes.shape) < prob
        mask[np.arange(n), rng.integers(self.dims, size=n)] = True
        return np.where(mask, self.sample(n, rng), genomes)

    def crossover(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Uniform crossover of paired rows."""
        return np.where(rng.random(a.shape) < 0.5, a, b)

    def encode(self, genomes: np.ndarray) -> np.ndarray:
        """Predictor features (n x n_features, float32): one-hot, scaled index, or [0, 1] position."""
        genomes = np.atleast_2d(genomes)
        n = len(genomes)
        x = np.zeros((n, self.n_features), dtype=np.float32)
        if self._num_cols:
            cols = np.asarray(self._num_cols)
            x[:, self._offsets[cols]] = genomes[:, cols] * self._ord_scale[cols]
        if self._cat_cols:
            cols = np.asarray(self._cat_cols)
            hot = self._offsets[cols][None, :] + np.rint(genomes[:, cols]).astype(np.int64)
            x[np.repeat(np.arange(n), len(cols)), hot.ravel()] = 1.0
        return x

    def neighbours(self, genome: np.ndarray, step: float = 0.1) -> np.ndarray:
        """Every genome one decision away from ``genome`` (local search's neighbourhood, as in BANANAS' and
        NPENAS' mutations): each other option of a categorical decision, the next option either side of an
        ordinal or integer one, and ``step`` of the range either side of a float (clipped to the range)."""
        genome = np.asarray(genome, float)
        out = []
        for j, d in enumerate(self.decisions):
            g = genome[j]
            if d.kind == "cat":
                entries = [float(o) for o in range(d.size) if o != int(round(g))]
            elif d.kind == "ord":
                entries = [float(o) for o in (round(g) - 1, round(g) + 1) if 0 <= o < d.size]
            elif d.kind == "int":
                unit = 1.0 / max(d.size - 1, 1)
                entries = [v for v in (g - unit, g + unit) if -1e-9 <= v <= 1 + 1e-9]
            else:
                entries = sorted({float(np.clip(g - step, 0, 1)), float(np.clip(g + step, 0, 1))} - {float(g)})
            for e in entries:
                child = genome.copy()
                child[j] = e
                out.append(child)
        return np.stack(out) if out else np.zeros((0, self.dims))

    def feature_groups(self) -> np.ndarray:
        """The decision each feature column of ``encode`` belongs to (a categorical decision's one-hot block
        shares one index): kernels over categorical inputs tie their lengthscales by it."""
        return np.repeat(np.arange(self.dims), [d.width for d in self.decisions])

    def keys(self, genomes: np.ndarray) -> list[str]:
        """A stable text key per genome (for de-duplication and the evaluation cache)."""
        rounded = np.round(np.atleast_2d(genomes), 6)
        return [",".join(f"{v:.6g}" for v in row) for row in rounded]

    def unique(self, genomes: np.ndarray) -> np.ndarray:
        """Row indices of the first occurrence of each distinct genome, in order."""
        _, first = np.unique(np.round(genomes, 6), axis=0, return_index=True)
        return np.sort(first)

    def describe(self, genome: np.ndarray) -> dict[str, Any]:
        """The decisions of one genome as ``name -> value`` (the columns of history.csv)."""
        return {d.name: _plain(d.value(g)) for d, g in zip(self.decisions, genome)}

    def genome(self, values: dict[str, Any]) -> np.ndarray:
        """Inverse of ``describe``: ValueError naming the decision if a value does not fit."""
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ValueError(f"missing decision(s): {', '.join(missing)}")
        return np.asarray([d.entry(values[d.name]) for d in self.decisions], dtype=np.float64)


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
