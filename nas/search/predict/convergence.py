"""What a search spent: best-so-far curves, evaluations to reach the final best, and the random-search baseline.

A predictor-guided search exists to save evaluations, so every run says how many it took to reach its final best
(``evaluations_to_best``) and plots best-so-far against evaluations (``progress.png``) beside what random search
would have reached with the same number of evaluations:
- on a table, exactly: the expected maximum of ``k`` draws without replacement among the rows meeting the bound
  (their latency is free, so a random search would draw only those): ``expected_best_of_draws``;
- on a model space, where the candidates' scores are unknown, an estimate from the search's initial space-filling
  sample of feasible candidates (the expected maximum of ``k`` draws from its empirical distribution), marked as an
  estimate; without such a sample the curve is left out.
Scores are "higher is better" (negated objectives when minimising), as ``History.scores`` gives them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import gammaln

from nas.files import new_figure, save_figure


def best_so_far(scores: np.ndarray, feasible: np.ndarray) -> np.ndarray:
    """Running maximum of the feasible scores after each evaluation (-inf before the first feasible one)."""
    masked = np.where(np.asarray(feasible, bool), np.asarray(scores, float), -np.inf)
    return np.maximum.accumulate(masked) if len(masked) else masked


def evaluations_to_reach(curve: np.ndarray, target: float) -> int | None:
    """The number of evaluations after which ``curve`` (a best-so-far curve) first reaches ``target``; None if
    it never does."""
    hit = np.flatnonzero(np.asarray(curve, float) >= target - 1e-12)
    return int(hit[0]) + 1 if len(hit) else None


def _log_comb(n: np.ndarray | float, k: np.ndarray | float) -> np.ndarray:
    """log C(n, k), -inf where k > n."""
    n, k = np.asarray(n, float), np.asarray(k, float)
    ok = (k >= 0) & (k <= n)
    safe_n, safe_k = np.where(ok, n, 1.0), np.where(ok, k, 0.0)
    return np.where(ok, gammaln(safe_n + 1) - gammaln(safe_k + 1) - gammaln(safe_n - safe_k + 1), -np.inf)


def expected_best_of_draws(feasible_scores: np.ndarray, draws: int, infeasible: int = 0) -> np.ndarray:
    """Expected best feasible score of random search after 1..``draws`` draws without replacement from
    ``len(feasible_scores) + infeasible`` candidates (draws of infeasible ones are spent and useless), given that
    at least one feasible candidate was drawn. Exact: P(best <= v_(i)) = C(i + infeasible, k) / C(N, k) for the
    i-th smallest feasible score v_(i)."""
    v = np.sort(np.asarray(feasible_scores, float))
    n_ok, total = len(v), len(v) + int(infeasible)
    out = np.full(draws, np.nan)
    if n_ok == 0:
        return out
    i = np.arange(1, n_ok + 1)
    for k in range(1, min(draws, total) + 1):
        log_total = _log_comb(total, k)
        below = np.exp(_log_comb(i + infeasible, k) - log_total)  # P(max <= v_(i)), i = 1..n_ok
        none = float(np.exp(_log_comb(infeasible, k) - log_total))  # P(no feasible draw)
        p = np.diff(np.concatenate([[none], below]))
        out[k - 1] = float((p * v).sum() / max(1.0 - none, 1e-300))
    out[min(draws, total):] = v[-1]
    return out


def chance_of_any_draw(hits: int, candidates: int, draws: int) -> float:
    """P(at least one of ``hits`` given candidates is among ``draws`` draws without replacement from
    ``candidates``): 1 - C(candidates - hits, draws) / C(candidates, draws)."""
    if hits <= 0:
        return 0.0
    return float(1.0 - np.exp(_log_comb(candidates - hits, draws) - _log_comb(candidates, draws)))


def chance_best_draw_is_marked(feasible_scores: np.ndarray, marked: np.ndarray, draws: int,
                               infeasible: int = 0) -> float:
    """P(the best feasible draw of random search is one of the ``marked`` feasible candidates), ``draws`` draws
    without replacement from ``len(feasible_scores) + infeasible`` candidates: for each marked candidate, that it is
    drawn and none scoring higher is, C(N - 1 - higher, k - 1) / C(N, k)."""
    v = np.asarray(feasible_scores, float)
    total = len(v) + int(infeasible)
    k = min(int(draws), total)
    higher = len(v) - np.searchsorted(np.sort(v), v[np.asarray(marked, bool)], side="right")
    return float(np.exp(_log_comb(total - 1 - higher, k - 1) - _log_comb(total, k)).sum())


def expected_draws_to_hit(hits: int, candidates: int) -> float:
    """Expected position of the first of ``hits`` marked candidates in a random order of ``candidates``."""
    return (candidates + 1) / (hits + 1) if hits > 0 else float("inf")


def expected_best_from_sample(sample_scores: np.ndarray, draws: int) -> np.ndarray:
    """Estimate for spaces whose scores are unknown: expected maximum of 1..``draws`` draws from the empirical
    distribution of ``sample_scores`` (a space-filling sample of feasible candidates); it cannot exceed the
    sample's best, so it understates random search once ``draws`` nears the sample's size."""
    v = np.sort(np.asarray(sample_scores, float))
    n = len(v)
    if n == 0:
        return np.full(draws, np.nan)
    cdf = np.arange(n + 1) / n
    out = np.empty(draws)
    for k in range(1, draws + 1):
        out[k - 1] = float((np.diff(cdf ** k) * v).sum())
    return out


def plot_progress(path: str | Path, curves: dict[str, np.ndarray], baselines: dict[str, np.ndarray],
                  objective: str, sign: float = 1.0, title: str = "", note: str = "") -> Path:
    """Best-so-far against evaluations for each constraint (``curves``, scores), and the random-search
    expectation of the same constraint (``baselines``, dashed), in objective units (``sign`` undoes negation)."""
    from matplotlib import rcParams

    fig, ax = new_figure(figsize=(7, 4.5), dpi=120)
    colors = rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (label, curve) in enumerate(curves.items()):
        color = colors[j % len(colors)]
        x = np.arange(1, len(curve) + 1)
        y = np.where(np.isfinite(curve), sign * np.asarray(curve, float), np.nan)
        ax.step(x, y, where="post", color=color, lw=1.5, label=f"search, {label}")
        base = baselines.get(label)
        if base is not None and np.isfinite(base).any():
            ax.plot(np.arange(1, len(base) + 1), sign * np.asarray(base, float), color=color, ls="--", lw=1,
                    label=f"random search (expected), {label}")
    ax.set_xlabel("evaluations")
    ax.set_ylabel(f"best {objective} so far (meeting the bound)")
    ax.set_title(title, fontsize=9)
    if note:
        ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize=7, color="gray", va="bottom")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=120)


def search_progress(history, constraints) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray], str]:
    """For a finished search (``nas.search.blackbox.history.History``): per constraint label, what report.json says
    (``evaluations_to_best``, the best, random search's expected best with as many evaluations), the best-so-far
    curves and the random-search baselines for ``plot_progress``, and a note on how the baselines were made."""
    problem = history.problem
    scores, lat = history.scores(), history.latency_array()
    phases = [str(r["phase"]) for r in history.rows]
    summary, curves, baselines = {}, {}, {}
    note = ""
    if problem.finite:
        all_lat = problem.latency_ms(problem.all_candidates())
        all_scores = problem.known_scores()
        note = "random search: exact expectation over the table's rows meeting the bound"
    for c in constraints:
        ok = c.feasible(lat, problem.devices)
        curve = best_so_far(scores, ok)
        final = float(curve[-1]) if len(curve) else -np.inf
        entry = {"evaluations": history.used, "evaluations_to_best": evaluations_to_reach(curve, final)
                 if np.isfinite(final) else None}
        if problem.finite:
            feasible = all_scores[c.feasible(all_lat, problem.devices)]
            base = expected_best_of_draws(feasible, history.used)
            entry["random_search"] = "exact"
            entry["best_possible"] = float(problem.sign() * feasible.max()) if len(feasible) else None
        else:
            sample = scores[ok & np.asarray([p == "init" for p in phases], bool)]
            base = expected_best_from_sample(sample, history.used) if len(sample) >= 2 else None
            entry["random_search"] = f"estimated from {len(sample)} initial evaluations" if base is not None \
                else None
            note = ("random search: estimated from the initial space-filling evaluations meeting each bound"
                    if any(e.get("random_search") for e in [*summary.values(), entry])
                    else "random search: not shown (no initial space-filling sample to estimate it from)")
        entry["random_search_expected_best"] = float(problem.sign() * base[-1]) \
            if base is not None and len(base) and np.isfinite(base[-1]) else None
        entry["best"] = float(problem.sign() * final) if np.isfinite(final) else None
        summary[c.label], curves[c.label] = entry, curve
        if base is not None:
            baselines[c.label] = base
    return summary, curves, baselines, note
