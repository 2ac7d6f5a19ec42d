"""NARS (FBNetV3) and GP-BO (ChamNet): constrained iterative optimisation with a predictor.

1. Draw a Sobol pool (``scipy.stats.qmc``) and keep the candidates that meet a latency constraint, by the free
   latency model (the LatencyModel for model spaces, the latency columns for tables).
2. Evaluate an initial space-filling sample of it (round robin over the constraints).
3. Repeat until the budget is spent: fit the predictor on every evaluation so far, then evaluate the candidates
   it likes best under each constraint: the top predicted (FBNetV3's MLP, ``predictor="mlp"``), or the best
   expected improvement over the best feasible so far (ChamNet's GP, ``predictor="gp"``; a batch is chosen with
   the constant liar, so that it keeps several workers busy with distinct candidates). The predictions made
   before each batch is evaluated give the held-out Kendall tau of every fit.
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
from nas.search.predict.gp import GPPredictor, expected_improvement
from nas.search.predict.predictors import ArchRecipePredictor, cross_validated_tau, kendall_tau

EventCallback = Callable[[str, dict], None]


@dataclass
class NarsConfig:
    budget: int
    seed: int = 0
    predictor: str = "mlp"  # "mlp" (FBNetV3) | "gp" (ChamNet GP + expected improvement)
    init: int | None = None  # initial Sobol evaluations; default budget // 4 (at least 4, at least 1 per constraint)
    batch: int | None = None  # evaluations per round; default budget // 10 (mlp) or budget // 20 (gp)
    pool: int = 4096  # Sobol pool size (model spaces; a table's pool is all its rows)
    pretrain: bool = True  # MLP proxy pretraining on the pool (MACs, params, predicted latency)
    evolution: bool = True
    population: int = 2048
    generations: int = 40
    final: int | None = None  # evaluations kept for the evolution winners; default one per constraint
    cv_folds: int = 5  # 0: skip the k-fold tau at the end
    predictor_kwargs: dict = field(default_factory=dict)  # e.g. {"epochs": 200} for the MLP


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
        return GPPredictor(seed=seed, **kwargs)
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
    x_pool = space.encode(pool)
    emit("pool", {"size": result.pool_size, "feasible": result.pool_feasible})

    predictor = make_predictor(config.predictor, config.seed, **config.predictor_kwargs)
    if config.predictor == "mlp" and config.pretrain and problem.proxy_names:
        emit("phase", {"name": "pretrain", "note": f"proxies {', '.join(problem.proxy_names)}"})
        full = problem.pool(config.pool, config.seed)
        predictor.pretrain(space.encode(full), problem.proxies(full))
        result.pretrain_loss = predictor.pretrain_loss

    n_c = len(constraints)
    final = config.final if config.final is not None else (n_c if config.evolution else 0)
    final = min(final, max(0, config.budget - n_c))
    init = config.init if config.init is not None else max(4, config.budget // 4)
    init = max(min(init, config.budget - final), min(n_c, config.budget))
    default_batch = config.budget // (20 if config.predictor == "gp" else 10)
    batch = max(1, config.batch if config.batch is not None else default_batch)

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
        rnd, turn, refit_s = 0, 0, 0.0
        while history.remaining > final:
            rnd += 1
            asynchronous = history.pending > 0 or history.slots() > 1  # workers elsewhere may join at any time
            start, fit_start = turn if asynchronous else 0, time.perf_counter()
            x_train, y_train = space.encode(history.genome_array()), history.scores()
            predictor.fit(x_train, y_train)
            taken = history.taken_keys()
            fresh = np.asarray([k not in taken for k in space.keys(pool)])
            if not fresh.any():
                break
            mean, std = _predict(predictor, x_pool[fresh])
            cand, cand_masks = pool[fresh], masks[:, fresh]
            n_pick = min(batch, history.remaining - final)
            if asynchronous:  # a round's batch, or more if that would not lift the queue above its low-water mark
                low = _low_water(history, refit_s, batch)
                n_pick = min(history.remaining - final, max(batch, low + 1 - history.pending))
            best = [history.best_score_under(c) for c in constraints]
            if config.predictor == "gp":
                x_pending = space.encode(history.pending_genomes())
                picks = _pick_gp_batch(predictor, x_train, y_train, x_pool[fresh], cand_masks, best, n_pick,
                                       x_pending, start)
                predictor.fit(x_train, y_train)  # back to the real evaluations only
            else:
                picks = _pick("mlp", mean, std, cand_masks, best, y_train, n_pick, start=start)
            turn += len(picks)
            refit_s = time.perf_counter() - fit_start
            used_before = history.used + history.pending
            pred, pred_std = problem.sign() * mean[picks], std[picks] if std is not None else None
            if asynchronous:  # wait down to the low-water mark (or, having picked nothing, for any result)
                if picks:
                    history.submit(cand[picks], f"round {rnd}", pred, pred_std)
                rows = history.collect(low if picks else max(0, history.pending - 1))
            else:
                rows = history.evaluate_batch(cand[picks], f"round {rnd}", pred, pred_std) if picks else []
            if history.used + history.pending == used_before and not rows:  # the same data would pick nothing
                result.stopped = (f"round {rnd} added no evaluation (the predictor gave no finite score to any of "
                                  f"{int(fresh.sum())} unevaluated candidates); the search ends at "
                                  f"{history.used} of {history.budget} evaluations")
                result.rounds.append({"round": rnd, "stopped": result.stopped})
                emit("phase", {"name": "stopped", "note": result.stopped})
                break
            scored = [r for r in rows if np.isfinite(r[f"predicted_{problem.objective}"])]
            predicted = [problem.sign() * r[f"predicted_{problem.objective}"] for r in scored]
            actual = [problem.sign() * r[problem.objective] for r in scored]
            tau = kendall_tau(predicted, actual)
            predicted_all.extend(predicted)
            actual_all.extend(actual)
            info = {"round": rnd, "n_train": len(y_train), "batch": len(picks), "batch_tau": tau,
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
            x_train, y_train = space.encode(history.genome_array()), history.scores()
            predictor.fit(x_train, y_train)
            emit("phase", {"name": "evolution", "note": f"{n_c} constraint(s)"})

            def score(g):
                return predictor.predict(space.encode(g))

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
                    entry["predicted_best"] = float(problem.sign() * evo.scores[j][0])
                    entry["predicted_best_evaluated_before"] = bool(history.is_evaluated(evo.genomes[j][0]))
                if fresh and history.remaining > len(chosen):
                    i = fresh[0]
                    chosen.append((entry, evo.genomes[j][i], float(problem.sign() * evo.scores[j][i])))
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
        x_all, y_all = space.encode(history.genome_array()), history.scores()
        result.cv_tau = cross_validated_tau(predictor.clone_unfitted, x_all, y_all, folds=config.cv_folds,
                                            seed=config.seed)
    emit("done", {"heldout_tau": result.heldout_tau, "cv_tau": result.cv_tau})
    return result


def _low_water(history: History, refit_s: float, batch: int) -> int:
    """Evaluations still submitted when the proposer refits and submits its next batch: one per slot, plus enough
    waiting that the slots stay busy through the refit (the results the slots give during one refit, at the median
    evaluation time so far): at least half a slot's worth, at most a batch's (or a slot's worth, if more)."""
    slots = history.slots()
    seconds = [r["seconds"] for r in history.rows if np.isfinite(r["seconds"]) and not r["replayed"]]
    eval_s = float(np.median(seconds)) if seconds else float("inf")
    during_refit = int(np.ceil(slots * refit_s / eval_s)) if eval_s > 0 else slots
    return slots + min(max(slots, batch), max(1, slots // 2, during_refit))


def _predict(predictor, x):
    if isinstance(predictor, GPPredictor):
        return predictor.predict_mean_std(x)
    return predictor.predict(x), None


def _pick_gp_batch(predictor: GPPredictor, x_train: np.ndarray, y_train: np.ndarray, x_cand: np.ndarray,
                   masks: np.ndarray, best: list[float], n: int, x_pending: np.ndarray | None = None,
                   start: int = 0) -> list[int]:
    """``n`` distinct candidates for ``n`` workers at once (constant liar): after each pick, the GP is refitted
    with that candidate believed to score the worst seen so far, so that the next pick looks elsewhere. Candidates
    still being evaluated (``x_pending``) are believed to score that too. ``start``: the constraint to pick for
    first (round robin)."""
    chosen: list[int] = []
    lie = float(np.min(y_train))
    x_aug, y_aug = x_train, y_train
    if x_pending is not None and len(x_pending):
        x_aug = np.concatenate([x_train, x_pending])
        y_aug = np.append(y_train, np.full(len(x_pending), lie))
        predictor.fit(x_aug, y_aug)
    for step in range(n):
        mean, std = predictor.predict_mean_std(x_cand)
        order = np.roll(np.arange(len(masks)), -(start + step))  # round robin over the constraints
        picks = _pick("gp", mean, std, masks[order], [best[j] for j in order], y_aug, 1, exclude=chosen)
        if not picks:
            break
        chosen.append(picks[0])
        if step + 1 < n:
            x_aug = np.concatenate([x_aug, x_cand[picks[0]][None, :]])
            y_aug = np.append(y_aug, lie)
            predictor.fit(x_aug, y_aug)
    return chosen


def _pick(kind: str, mean: np.ndarray, std: np.ndarray | None, masks: np.ndarray, best: list[float],
          y_train: np.ndarray, n: int, exclude: list[int] = (), start: int = 0) -> list[int]:
    """``n`` distinct candidates, round robin over the constraints from constraint ``start``, each the top
    acquisition among those meeting the constraint: the predicted score (MLP) or expected improvement (GP)."""
    acq = []
    for j in range(len(masks)):
        if kind == "gp":
            incumbent = best[j] if np.isfinite(best[j]) else float(np.min(y_train))
            a = expected_improvement(mean, std, incumbent)
        else:
            a = mean.copy()
        acq.append(np.where(masks[j], a, -np.inf))
    chosen: list[int] = []
    used = np.zeros(len(mean), dtype=bool)
    used[list(exclude)] = True
    j, misses = start % len(masks), 0
    while len(chosen) < n and misses < len(masks):
        a = np.where(used, -np.inf, acq[j])
        i = int(np.argmax(a))
        if np.isfinite(a[i]):
            chosen.append(i)
            used[i] = True
            misses = 0
        else:
            misses += 1
        j = (j + 1) % len(masks)
    return chosen
