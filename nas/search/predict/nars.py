"""NARS (FBNetV3) and GP-BO (ChamNet): constrained iterative optimisation with a predictor.

1. Draw a Sobol pool (``scipy.stats.qmc``) and keep the candidates that meet a latency constraint, by the free
   latency model (the LatencyModel for model spaces, the latency columns for tables).
2. Evaluate an initial space-filling sample of it (round robin over the constraints): ``budget // 10`` candidates
   (at most 10 or a quarter of the budget for small budgets), as BANANAS and NPENAS start from about ten.
3. Repeat until the budget is spent, ``budget // 20`` evaluations a round: fit the predictor on every evaluation so
   far (the objective power-transformed: ``acquisition.ObjectiveTransform``), build the round's candidates (the
   neighbours of the best evaluated under each constraint and the pool candidates the predictor rates best, all
   meeting a constraint: ``acquisition.round_candidates``) and evaluate the ones the acquisition likes best under
   each constraint: independent Thompson samples of FBNetV3's MLP ensemble (``predictor="mlp"``, its spread
   calibrated to the errors of earlier predictions), or the best expected improvement over the best feasible so far
   (ChamNet's GP with a categorical kernel over the decisions and the free proxies beside them, ``ProxyFeatures``,
   ``predictor="gp"``; a batch is chosen with the constant liar, so that it keeps several workers busy with distinct
   candidates). The predictions made before each batch is evaluated give
   the held-out Kendall tau of every fit.
4. Fit once more and run the predictor-driven evolutionary search for all constraints at once; evaluate the
   winner of each constraint (the last ``final`` evaluations of the budget are kept for this).

With one worker (or ``asynchronous=False`` in the search's settings), each step's candidates are one batch
(``History.evaluate_batch``), evaluated here or enqueued in the search's Optuna study for its workers, and the next
fit waits for the whole batch: a seed gives the same search with any number of workers. With more workers the rounds
are asynchronous (``History.submit``/``collect``): each fit picks a batch as a synchronous round does, but the next
batch is fitted and submitted while the last evaluations of the previous one still run (every worker busy and a few
candidates waiting: ``_low_water``), the GP believing the running ones score the worst seen (constant liar), so that
no worker waits for the slowest evaluation of a batch. The order results arrive in then decides the search, which is
no longer the same for a seed. The best *evaluated* candidate under each constraint is the result
(``History.best_under``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from nas.search.blackbox.evolution import EvolutionResult, evolve, rank_all
from nas.search.blackbox.history import BudgetExhausted, History
from nas.search.blackbox.problem import Constraint, ModelProblem, SearchProblem
from nas.search.predict.acquisition import (
    ObjectiveTransform,
    calibration,
    pick_gp_batch,
    round_candidates,
    thompson_picks,
)
from nas.search.predict.gp import GPPredictor, expected_improvement
from nas.search.predict.predictors import ArchRecipePredictor, cross_validated_tau, kendall_tau

EventCallback = Callable[[str, dict], None]


@dataclass
class NarsConfig:
    budget: int
    seed: int = 0
    predictor: str = "mlp"  # "mlp" (FBNetV3) | "gp" (ChamNet GP + expected improvement)
    init: int | None = None  # initial Sobol evaluations; default max(min(10, budget // 4), budget // 10)
    batch: int | None = None  # evaluations per round; default budget // 20 (at least 1)
    pool: int = 4096  # Sobol pool size (model spaces; a table's pool is all its rows); also the pretraining set
    incumbents: int = 5  # per constraint, the best evaluated whose neighbours are candidates each round
    # per constraint, the pool candidates rated best by the predictor, beside the neighbours: by the predicted mean
    # (MLP), by expected improvement (GP): on NAS-Bench-201 (20 seeds) ChamNet's mean regret 0.063 against 0.162
    # by the mean (p25 bound), 0.275 against 0.411 (p50); on four synthetic grids (4 seeds each) 0.25 against 0.29
    explore: int = 32
    # per constraint, candidates two decisions away from the best evaluated (a sample), for the MLP ensemble's
    # Thompson sampling only: on NAS-Bench-201 (5 seeds) they cut NARS's mean regret from 0.60 to 0.37 (p50 bound)
    # and 0.13 to 0.09 (p25); the GP's expected improvement over-exploited them on a synthetic grid (8 seeds: mean
    # best 93.35 against 93.55 without, one seed under random search), so GP-BO keeps single moves
    swaps: int = 2000
    pretrain: bool = True  # MLP proxy pretraining on the pool (MACs, params, predicted latency)
    evolution: bool = True
    population: int = 2048
    generations: int = 40
    final: int | None = None  # evaluations kept for the evolution winners; default one per constraint
    cv_folds: int = 5  # 0: skip the k-fold tau at the end
    predictor_kwargs: dict = field(default_factory=dict)  # e.g. {"epochs": 200} for the MLP
    # the GP sees the free proxies beside the decisions (``ProxyFeatures``): on NAS-Bench-201 at the p50 bound
    # (20 seeds) ChamNet's mean regret 0.41 against 0.50 without; at p25 0.27 against 0.27 (seeds 0-9; 0.16 on 20);
    # on four synthetic grids (4 seeds each) 0.29 against 0.26: better on two, equal on one, worse on one
    gp_proxies: bool = True


@dataclass
class NarsResult:
    rounds: list[dict] = field(default_factory=list)  # one per fit: n_train, held-out tau of its batch, ...
    heldout_tau: float = float("nan")  # pooled over every batch: predictions made before evaluation
    cv_tau: float = float("nan")  # k-fold on all evaluations at the end
    pool_size: int = 0
    pool_feasible: int = 0
    pretrain_loss: float | None = None
    evolution: EvolutionResult | None = None
    predicted_winners: list[dict] = field(default_factory=list)  # per constraint: the predictor's choice
    stopped: str | None = None  # why the rounds ended before the budget, when a round could add no evaluation


def make_predictor(kind: str, seed: int, **kwargs):
    if kind == "gp":
        return GPPredictor(seed=seed, **kwargs)  # nars passes the space's feature groups (categorical kernel)
    if kind == "mlp":
        return ArchRecipePredictor(seed=seed, **kwargs)
    raise ValueError(f"unknown predictor {kind!r} (mlp or gp)")


def run_nars(problem: SearchProblem, constraints: list[Constraint], history: History, config: NarsConfig,
             on_event: EventCallback | None = None) -> NarsResult:
    emit = on_event or (lambda kind, info: None)
    space, devices = problem.space, problem.devices
    result = NarsResult()
    # 1. the pool, filtered by the constraints with the free latency model
    pool = problem.pool(config.pool, config.seed)
    lat_pool = problem.latency_ms(pool)
    probe = pool if not isinstance(problem, ModelProblem) else np.concatenate([pool, problem.smallest_genomes()])
    problem.check_constraints(constraints, probe)
    masks = np.stack([c.feasible(lat_pool, devices) for c in constraints])
    any_ok = masks.any(axis=0)
    pool, lat_pool, masks = pool[any_ok], lat_pool[any_ok], masks[:, any_ok]
    result.pool_size, result.pool_feasible = int(len(any_ok)), int(any_ok.sum())
    emit("pool", {"size": result.pool_size, "feasible": result.pool_feasible})

    kwargs = dict(config.predictor_kwargs)
    encode = space.encode
    if config.predictor == "gp":
        groups = space.feature_groups()
        if config.gp_proxies and problem.proxy_names:
            encode = ProxyFeatures(problem, pool)
            groups = np.concatenate([groups, groups.max() + 1 + np.arange(len(problem.proxy_names))])
        kwargs.setdefault("groups", groups)
    predictor = make_predictor(config.predictor, config.seed, **kwargs)
    if config.predictor == "mlp" and config.pretrain and problem.proxy_names:
        emit("phase", {"name": "pretrain", "note": f"proxies {', '.join(problem.proxy_names)}"})
        full = problem.pool(config.pool, config.seed)[:config.pool]  # a table's pool is every row
        predictor.pretrain(space.encode(full), problem.proxies(full))
        result.pretrain_loss = predictor.pretrain_loss

    n_c = len(constraints)
    final = config.final if config.final is not None else (n_c if config.evolution else 0)
    final = min(final, max(0, config.budget - n_c))
    init = config.init if config.init is not None else max(min(10, config.budget // 4), config.budget // 10)
    init = max(min(init, config.budget - final), min(n_c, config.budget))
    batch = max(1, config.batch if config.batch is not None else config.budget // 20)
    rng = np.random.default_rng(config.seed + 7)  # the rounds' Thompson draws

    try:
        # 2. initial space-filling sample, round robin over the constraints (Sobol order within each)
        emit("phase", {"name": "init", "note": f"{init} Sobol candidates"})
        taken = np.zeros(len(pool), dtype=bool)
        picks, keys, j = [], set(history.evaluated_keys()), 0
        pool_keys = space.keys(pool)
        while history.used + len(picks) < init:
            idx = np.flatnonzero(masks[j] & ~taken)
            if len(idx):
                i = idx[0]
                taken[i] = True
                if pool_keys[i] not in keys:
                    keys.add(pool_keys[i])
                    picks.append(i)
            elif not (masks.any(axis=0) & ~taken).any():
                break
            j = (j + 1) % n_c
        asynchronous = history.slots() > 1
        if picks:
            if asynchronous:
                history.submit(pool[picks], "init")
                history.collect(_low_water(history, 0.0, batch))
            else:
                history.evaluate_batch(pool[picks], "init")
        # 3. rounds: fit, pick the best predicted (or best EI) per constraint, evaluate
        predicted_all, actual_all = [], []
        residuals, waiting = [], {}  # standardised errors of the predictions made before evaluation
        rnd, turn, refit_s = 0, 0, 0.0
        while history.remaining > final:
            rnd += 1
            asynchronous = history.pending > 0 or history.slots() > 1  # workers elsewhere may join at any time
            start, fit_start = turn if asynchronous else 0, time.perf_counter()
            evaluated, y_train = history.genome_array(), history.scores()
            x_train = encode(evaluated)
            transform = ObjectiveTransform().fit(y_train)
            z_train = transform(y_train)
            predictor.fit(x_train, z_train)
            taken = history.taken_keys()
            fresh = np.asarray([k not in taken for k in space.keys(pool)])
            pool_predicted = np.full(len(pool), -np.inf)
            if config.predictor == "gp":
                best = [float(transform(np.asarray([b]))[0]) if np.isfinite(b) else -np.inf
                        for b in (history.best_score_under(c) for c in constraints)]
            if fresh.any():  # the pool rated by the predicted mean (NARS) or the GP's own acquisition
                mean, std = _mean_std(predictor, encode(pool[fresh]))
                if config.predictor == "gp":
                    mean = expected_improvement(mean, std, max(max(best), float(np.min(z_train))))
                pool_predicted[fresh] = np.nan_to_num(mean, nan=-np.inf)
            cand, cand_masks = round_candidates(problem, constraints, evaluated, y_train, history.latency_array(),
                                                taken, pool, masks, pool_predicted, config.incumbents,
                                                config.explore, config.swaps if config.predictor == "mlp" else 0)
            if not len(cand):
                break
            x_cand = encode(cand)
            mean, std = _mean_std(predictor, x_cand)
            scale = calibration(residuals) if config.predictor == "mlp" else 1.0
            std = scale * std
            n_pick = min(batch, history.remaining - final)
            if asynchronous:  # a round's batch, or more if that would not lift the queue above its low-water mark
                low = _low_water(history, refit_s, batch)
                n_pick = min(history.remaining - final, max(batch, low + 1 - history.pending))
            if config.predictor == "gp":
                x_pending = encode(history.pending_genomes())
                picks = pick_gp_batch(predictor, x_train, z_train, x_cand, cand_masks, best, n_pick, x_pending,
                                      start)
                predictor.fit(x_train, z_train)  # back to the real evaluations only
            else:
                picks = thompson_picks(mean, std, cand_masks, n_pick, rng, start=start)
            turn += len(picks)
            refit_s = time.perf_counter() - fit_start
            used_before = history.used + history.pending
            pred = problem.sign() * transform.inverse(mean[picks])
            pred_std = transform.inverse_std(mean[picks], std[picks])
            for i, key in zip(picks, space.keys(cand[picks]) if picks else []):
                waiting[key] = (transform, mean[i], std[i] / scale)
            if asynchronous:  # wait down to the low-water mark (or, having picked nothing, for any result)
                if picks:
                    history.submit(cand[picks], f"round {rnd}", pred, pred_std)
                rows = history.collect(low if picks else max(0, history.pending - 1))
            else:
                rows = history.evaluate_batch(cand[picks], f"round {rnd}", pred, pred_std) if picks else []
            if history.used + history.pending == used_before and not rows:  # the same data would pick nothing
                result.stopped = (f"round {rnd} added no evaluation (the predictor gave no finite score to any of "
                                  f"{len(cand)} unevaluated candidates); the search ends at "
                                  f"{history.used} of {history.budget} evaluations")
                result.rounds.append({"round": rnd, "stopped": result.stopped})
                emit("phase", {"name": "stopped", "note": result.stopped})
                break
            scored = [r for r in rows if np.isfinite(r[f"predicted_{problem.objective}"])]
            predicted = [problem.sign() * r[f"predicted_{problem.objective}"] for r in scored]
            actual = [problem.sign() * r[problem.objective] for r in scored]
            for r in rows:
                if r["key"] in waiting:
                    tf, m, sd = waiting.pop(r["key"])
                    z = float(tf(np.asarray([problem.sign() * r[problem.objective]]))[0])
                    residuals.append((z - m) / sd if sd > 0 else np.nan)
            tau = kendall_tau(predicted, actual)
            predicted_all.extend(predicted)
            actual_all.extend(actual)
            info = {"round": rnd, "n_train": len(y_train), "candidates": len(cand), "batch": len(picks),
                    "batch_tau": tau, "uncertainty_scale": scale,
                    "heldout_tau": kendall_tau(predicted_all, actual_all),
                    "best": [problem.sign() * history.best_score_under(c) for c in constraints]}
            if asynchronous:
                info["finished"], info["running"] = len(rows), history.pending
            result.rounds.append(info)
            emit("fit", info)
        history.collect(0)
        result.heldout_tau = kendall_tau(predicted_all, actual_all)
        # 4. final fit and the evolutionary search for every constraint at once
        if config.evolution and history.used and result.stopped is None:
            x_train, y_train = encode(history.genome_array()), history.scores()
            transform = ObjectiveTransform().fit(y_train)
            predictor.fit(x_train, transform(y_train))
            emit("phase", {"name": "evolution", "note": f"{n_c} constraint(s)"})

            def score(g):
                return predictor.predict(encode(g))

            if problem.finite:
                evo = rank_all(problem.all_candidates(), score, problem.latency_ms, constraints, devices)
            else:
                seeds = np.concatenate([history.genome_array(), pool[:config.population // 2]])
                evo = evolve(space, score, problem.latency_ms, constraints, devices,
                             rng=np.random.default_rng(config.seed + 1), population=config.population,
                             generations=config.generations, init=seeds,
                             on_generation=lambda g, best: emit("generation", {"generation": g, "best": best}))
            result.evolution = evo
            chosen: list[tuple[dict, np.ndarray, float]] = []  # per constraint: its fresh winner, one batch
            for j, c in enumerate(constraints):
                entry = {"constraint": c.label}
                taken_keys = {space.keys(g[None, :])[0] for _, g, _ in chosen}
                fresh = [i for i, g in enumerate(evo.genomes[j]) if not history.is_evaluated(g)
                         and space.keys(g[None, :])[0] not in taken_keys]
                if len(evo.genomes[j]):
                    entry["predicted_best"] = float(problem.sign() * transform.inverse(evo.scores[j][:1])[0])
                    entry["predicted_best_evaluated_before"] = bool(history.is_evaluated(evo.genomes[j][0]))
                if fresh and history.remaining > len(chosen):
                    i = fresh[0]
                    predicted = float(problem.sign() * transform.inverse(evo.scores[j][i:i + 1])[0])
                    chosen.append((entry, evo.genomes[j][i], predicted))
                result.predicted_winners.append(entry)
            if chosen:
                rows = history.evaluate_batch(np.stack([g for _, g, _ in chosen]), "evolution",
                                              [p for _, _, p in chosen])
                for (entry, _, predicted), row in zip(chosen, rows):
                    entry.update({"eval": row["eval"], "predicted": predicted, "actual": row[problem.objective]})
    except BudgetExhausted:
        pass
    # held-out tau over everything at the end (k-fold)
    if history.used >= 8 and config.cv_folds > 1:
        x_all, y_all = encode(history.genome_array()), history.scores()
        result.cv_tau = cross_validated_tau(predictor.clone_unfitted, x_all, y_all, folds=config.cv_folds,
                                            seed=config.seed)
    emit("done", {"heldout_tau": result.heldout_tau, "cv_tau": result.cv_tau})
    return result


class ProxyFeatures:
    """A candidate's decisions (``space.encode``) followed by its free proxies (MACs, params, predicted latency,
    training steps; a table's proxy and latency columns), each scaled to [0, 1] over the pool (log where positive):
    the GP's analogue of NARS's proxy pretraining. With tens of evaluations a kernel over the decisions alone
    cannot tell that two candidates far apart in the decisions are alike in size, which candidates of the same
    cost often are in accuracy too; the proxies' own lengthscales let the fit decide how much that counts."""

    def __init__(self, problem: SearchProblem, reference: np.ndarray):
        self.problem = problem
        p = self._proxies(reference)
        self.log = (p > 0).all(axis=0)  # per column, fixed by the reference
        raw = self._raw(p)
        self.low, self.span = raw.min(axis=0), np.maximum(np.ptp(raw, axis=0), 1e-12)

    def _proxies(self, genomes: np.ndarray) -> np.ndarray:
        return np.asarray(self.problem.proxies(genomes), float).reshape(len(genomes), -1)

    def _raw(self, p: np.ndarray) -> np.ndarray:
        return np.where(self.log, np.log(np.maximum(p, 1e-300)), p)

    def __call__(self, genomes: np.ndarray) -> np.ndarray:
        genomes = np.atleast_2d(genomes)
        decisions = self.problem.space.encode(genomes)
        if not len(genomes):
            return np.zeros((0, decisions.shape[1] + len(self.low)))
        scaled = np.clip((self._raw(self._proxies(genomes)) - self.low) / self.span, -0.5, 1.5)
        return np.hstack([decisions, scaled])


def _low_water(history: History, refit_s: float, batch: int) -> int:
    """Evaluations still submitted when the proposer refits and submits its next batch: one per slot, plus enough
    waiting that the slots stay busy through the refit (the results the slots give during one refit, at the median
    evaluation time so far): at least half a slot's worth, at most a batch's (or a slot's worth, if more)."""
    slots = history.slots()
    seconds = [r["seconds"] for r in history.rows if np.isfinite(r["seconds"]) and not r["replayed"]]
    eval_s = float(np.median(seconds)) if seconds else float("inf")
    during_refit = int(np.ceil(slots * refit_s / eval_s)) if eval_s > 0 else slots
    return slots + min(max(slots, batch), max(1, slots // 2, during_refit))


def _mean_std(predictor, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A predictor's mean and uncertainty; a predictor with ``predict`` alone has none (its acquisition is
    greedy)."""
    if hasattr(predictor, "predict_mean_std"):
        return predictor.predict_mean_std(x)
    mean = np.asarray(predictor.predict(x), float)
    return mean, np.zeros(len(mean))
