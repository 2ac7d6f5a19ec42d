"""Predictor-driven evolutionary search for several latency constraints at once (FBNetV3's final stage).

One population serves every constraint: each generation's children (mutants and uniform crossovers of the
elites) are scored in one batch by the predictor and the vectorised latency model, and each constraint keeps its
own elite (the best predicted candidates meeting it; until one does, the least violating). The parents of the
next generation are the union of the elites, so the search covers the whole latency range at once and ends with
a family of winners, one per constraint. Everything is array code: populations are genome matrices, scoring is
one predictor call and one latency gather per generation.

For a finite space (a table), ``rank_all`` scores every candidate instead, which is exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from nas.search.blackbox.decisions import DecisionSpace
from nas.search.blackbox.problem import Constraint

ScoreFn = Callable[[np.ndarray], np.ndarray]  # genomes -> predicted score (higher is better)
LatencyFn = Callable[[np.ndarray], np.ndarray]  # genomes -> n x devices ms


@dataclass
class EvolutionResult:
    genomes: list[np.ndarray]  # per constraint: feasible elites, best first (k x D)
    scores: list[np.ndarray]
    latency: list[np.ndarray]
    scored: int = 0  # candidates scored by the predictor
    generations: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    trace: list[dict] = field(default_factory=list)  # best predicted score per constraint per generation

    @property
    def candidates_per_cpu_minute(self) -> float:
        return 60.0 * self.scored / max(self.cpu_seconds, 1e-9)


def _ranked(scores: np.ndarray, violation: np.ndarray) -> np.ndarray:
    """Sort key: feasible candidates by score, then infeasible ones by how little they violate."""
    return np.where(violation <= 1e-12, scores, -1e12 - violation)


def evolve(space: DecisionSpace, score: ScoreFn, latency: LatencyFn, constraints: list[Constraint],
           devices: list[str], *, rng: np.random.Generator, population: int = 2048, generations: int = 40,
           elite: int = 64, mutation_prob: float | None = None, init: np.ndarray | None = None,
           time_limit_s: float | None = None, on_generation: Callable[[int, list[float]], None] | None = None
           ) -> EvolutionResult:
    """Evolve genomes of ``space`` maximising ``score`` under each constraint; returns each one's elite."""
    start, cpu_start = time.perf_counter(), time.process_time()
    prob = mutation_prob if mutation_prob is not None else min(0.5, 1.5 / space.dims)
    pop = space.sample(population, rng)
    if init is not None and len(init):
        pop = np.concatenate([np.asarray(init, float), pop])[:max(population, len(init))]
    elites: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # genomes, score, latency, rank
    s, lat = score(pop), latency(pop)
    scored = len(pop)
    for c in constraints:
        elites.append(_select(space, pop, s, lat, _ranked(s, c.violation(lat, devices)), elite))
    result = EvolutionResult([], [], [])
    gen = 0
    for gen in range(1, generations + 1):
        parents = np.concatenate([e[0] for e in elites])
        n_mut = population // 2
        mutants = space.mutate(parents[rng.integers(len(parents), size=n_mut)], rng, prob)
        a = parents[rng.integers(len(parents), size=population - n_mut)]
        b = parents[rng.integers(len(parents), size=population - n_mut)]
        children = np.concatenate([mutants, space.crossover(a, b, rng)])
        s, lat = score(children), latency(children)
        scored += len(children)
        for j, c in enumerate(constraints):
            g0, s0, l0, r0 = elites[j]
            rank = _ranked(s, c.violation(lat, devices))
            elites[j] = _select(space, np.concatenate([g0, children]), np.concatenate([s0, s]),
                                np.concatenate([l0, lat]), np.concatenate([r0, rank]), elite)
        best = [float(e[3][0]) if e[3][0] > -1e12 else float("nan") for e in elites]
        result.trace.append({"generation": gen, "best": best})
        if on_generation is not None:
            on_generation(gen, best)
        if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
            break
    for g, sc, l, r in elites:
        ok = r > -1e12
        result.genomes.append(g[ok])
        result.scores.append(sc[ok])
        result.latency.append(l[ok])
    result.scored, result.generations = scored, gen
    result.seconds, result.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return result


def _select(space: DecisionSpace, genomes, scores, latency, rank, k):
    keep = space.unique(genomes)
    order = keep[np.argsort(-rank[keep], kind="stable")[:k]]
    return genomes[order], scores[order], latency[order], rank[order]


def rank_all(candidates: np.ndarray, score: ScoreFn, latency: LatencyFn, constraints: list[Constraint],
             devices: list[str], top: int = 64) -> EvolutionResult:
    """Exhaustive version for finite spaces: score every candidate, keep each constraint's best ``top``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    s, lat = score(candidates), latency(candidates)
    result = EvolutionResult([], [], [], scored=len(candidates))
    for c in constraints:
        ok = np.flatnonzero(c.feasible(lat, devices))
        order = ok[np.argsort(-s[ok], kind="stable")[:top]]
        result.genomes.append(candidates[order])
        result.scores.append(s[order])
        result.latency.append(lat[order])
    result.seconds, result.cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return result
