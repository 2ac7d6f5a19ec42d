"""How NARS and GP-BO choose what to evaluate next: the candidates of a round and the acquisition over them.

Candidates (``round_candidates``): the neighbours of the best evaluated candidates under each constraint (every
candidate one decision away, as the mutations of BANANAS and NPENAS and the local search of White et al. 2021) and
a sample of the swaps around the best (two decisions at once), plus the pool candidates the predictor rates best
(a cheap screen of the whole pool: NARS rates by the predicted mean, so that regions far from the incumbents enter
when they are expected to be good; the GP by its own expected improvement, so that a far region it is unsure of
can enter too), all meeting a constraint by the free latency model (feasible-only candidates: the acquisition never
spends an evaluation over the bound). A small candidate set around the incumbents and the best rated is what keeps
the acquisition from spending its evaluations on the uncertain corners of a large pool.

Acquisition, per constraint in turn (round robin), among the candidates meeting it:
Both fit the objective through ``ObjectiveTransform`` (a power transform to near-normal).
- NARS (an ensemble of MLPs): independent Thompson sampling (BANANAS' ITS): one draw per candidate from a normal
  with the ensemble's mean and its spread scaled by ``calibration`` (the errors of the predictions made before
  earlier evaluations), the best draw chosen; each pick of a batch draws again, so a batch spreads out.
- GP-BO (ChamNet's GP): expected improvement over the best evaluated candidate meeting the constraint; a batch is
  chosen with the constant liar (the GP refitted believing each pick scores the worst seen).
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np

from nas.search.predict.gp import expected_improvement
from nas.search.blackbox.problem import Constraint, SearchProblem


def round_candidates(problem: SearchProblem, constraints: list[Constraint], evaluated: np.ndarray,
                     scores: np.ndarray, evaluated_latency: np.ndarray, taken: set[str], pool: np.ndarray,
                     pool_masks: np.ndarray, pool_predicted: np.ndarray, incumbents: int, explore: int,
                     swaps: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The round's candidates (genomes, not taken, each meeting some constraint) and their constraint masks
    (constraints x candidates): the neighbours of the ``incumbents`` best evaluated under each constraint, up to
    ``swaps`` candidates two decisions away from the best one (a sample, seeded by the evaluations so far: under a
    latency bound the feasible region is often connected only by such swaps, a costlier choice here paid for by a
    cheaper one there, which single moves from an incumbent at the bound cannot make), then under each constraint the
    ``explore`` pool candidates (``pool_masks``) the predictor rates best (``pool_predicted``: the predicted mean
    or the GP's expected improvement, -inf for taken ones)."""
    space, devices = problem.space, problem.devices
    parts = []
    for c in constraints:
        ok = np.flatnonzero(c.feasible(evaluated_latency, devices)) if len(evaluated) else np.zeros(0, int)
        best = ok[np.argsort(-scores[ok], kind="stable")[:incumbents]]
        if len(best):
            parts.append(problem.neighbours(evaluated[best]))
            if swaps:
                twice = problem.neighbours(problem.neighbours(evaluated[best[:1]]))
                if len(twice) > swaps:
                    keep = np.random.default_rng(len(evaluated)).choice(len(twice), swaps, replace=False)
                    twice = twice[np.sort(keep)]
                parts.append(twice)
    for mask in pool_masks:
        rated = np.where(mask, pool_predicted, -np.inf)
        top = np.argsort(-rated, kind="stable")[:explore]
        parts.append(pool[top[np.isfinite(rated[top])]])
    cand = np.concatenate(parts) if parts else np.zeros((0, space.dims))
    if not len(cand):
        return cand, np.zeros((len(constraints), 0), bool)
    cand = cand[space.unique(cand)]
    keep = np.asarray([k not in taken for k in space.keys(cand)], bool)
    cand = cand[keep]
    lat = problem.latency_ms(cand)
    masks = np.stack([c.feasible(lat, devices) for c in constraints]) if len(cand) else \
        np.zeros((len(constraints), 0), bool)
    ok = masks.any(axis=0)
    return cand[ok], masks[:, ok]


def calibration(residuals: list[float], least: int = 5) -> float:
    """The factor that makes an ensemble's spread match its errors: the root mean square of the standardised
    residuals (actual - predicted) / spread of the predictions made before evaluation; 1 until ``least`` exist."""
    r = np.asarray(residuals, float)
    r = r[np.isfinite(r)]
    if len(r) < least:
        return 1.0
    return float(np.clip(np.sqrt(np.mean(r ** 2)), 0.1, 100.0))


def thompson_picks(mean: np.ndarray, std: np.ndarray, masks: np.ndarray, n: int, rng: np.random.Generator,
                   start: int = 0) -> list[int]:
    """``n`` distinct candidates by independent Thompson sampling, round robin over the constraints from
    ``start``: each pick draws one value per candidate from N(mean, std^2) and takes the best draw among the
    candidates meeting that constraint."""
    usable = np.isfinite(mean)
    return round_robin_picks(n, len(mean), len(masks), start, lambda j: np.where(
        masks[j] & usable, mean + np.nan_to_num(std) * rng.standard_normal(len(mean)), -np.inf))


def pick_gp_batch(predictor, x_train: np.ndarray, y_train: np.ndarray, x_cand: np.ndarray, masks: np.ndarray,
                  best: list[float], n: int, x_pending: np.ndarray | None = None, start: int = 0) -> list[int]:
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
        picks = ei_picks(mean, std, masks[order], [best[j] for j in order], y_aug, 1, exclude=chosen)
        if not picks:
            break
        chosen.append(picks[0])
        if step + 1 < n:
            x_aug = np.concatenate([x_aug, x_cand[picks[0]][None, :]])
            y_aug = np.append(y_aug, lie)
            predictor.fit(x_aug, y_aug)
    return chosen


def ei_picks(mean: np.ndarray, std: np.ndarray, masks: np.ndarray, best: list[float], y_train: np.ndarray,
             n: int, exclude: list[int] = (), start: int = 0) -> list[int]:
    """``n`` distinct candidates, round robin over the constraints from constraint ``start``, each the top
    expected improvement over that constraint's best evaluated score among the candidates meeting it."""
    acq = []
    for j in range(len(masks)):
        incumbent = best[j] if np.isfinite(best[j]) else float(np.min(y_train))
        acq.append(np.where(masks[j], expected_improvement(mean, std, incumbent), -np.inf))
    used = np.zeros(len(mean), dtype=bool)
    used[list(exclude)] = True
    return round_robin_picks(n, len(mean), len(masks), start, lambda j: np.nan_to_num(acq[j], nan=-np.inf), used)


def round_robin_picks(n: int, size: int, constraints: int, start: int, values: Callable[[int], np.ndarray],
                      used: np.ndarray | None = None) -> list[int]:
    """``n`` distinct indices among ``size`` candidates, one constraint after another from ``start``: for
    constraint ``j`` the candidate not taken yet with the largest ``values(j)`` (-inf: not eligible, and ``values``
    is asked again at every turn, so a random acquisition draws anew); ends early when no constraint has an
    eligible candidate left."""
    chosen: list[int] = []
    used = np.zeros(size, dtype=bool) if used is None else used
    j, misses = start % max(constraints, 1), 0
    while len(chosen) < n and misses < constraints:
        a = np.where(used, -np.inf, values(j))
        i = int(np.argmax(a)) if len(a) else 0
        if len(a) and np.isfinite(a[i]):
            chosen.append(i)
            used[i] = True
            misses = 0
        else:
            misses += 1
        j = (j + 1) % constraints
    return chosen


class ObjectiveTransform:
    """The objective made near-normal before a predictor fits it (a Yeo-Johnson power transform fitted by maximum
    likelihood, then standardised: scikit-learn's ``PowerTransformer``, as HEBO does). Accuracies of a space
    often have a long tail of broken candidates (10% on CIFAR-10) that would otherwise set the scale of the fit and
    of its uncertainty; the transform is monotone, so rankings and the incumbent are unchanged."""

    def fit(self, y: np.ndarray) -> "ObjectiveTransform":
        from sklearn.preprocessing import PowerTransformer

        y = np.asarray(y, float).reshape(-1, 1)
        self._power = PowerTransformer(method="yeo-johnson") if len(y) >= 3 and np.ptp(y) > 0 else None
        if self._power is not None:
            try:
                self._power.fit(y)
                if not np.isfinite(self._power.transform(y)).all():
                    self._power = None
            except (ValueError, FloatingPointError):
                self._power = None
        self._mean, self._std = float(y.mean()), float(max(y.std(), 1e-12))
        self._low, self._high = -np.inf, np.inf  # predictions stay within one span of what was seen
        if y.size:
            span = float(np.ptp(y))
            self._low, self._high = float(y.min()) - span, float(y.max()) + span
        return self

    def __call__(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, float)
        if self._power is None or not y.size:
            return (y - self._mean) / self._std
        return self._power.transform(y.reshape(-1, 1)).ravel()

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Transformed values back in objective units. Past the edge of its domain a power transform has no
        inverse (a Yeo-Johnson lambda above 2 at the bottom, below 0 at the top): such values, and any beyond one
        span of the fitted objective from its ends, read as that bound, so that a predicted value is finite and the
        mapping stays monotone."""
        z = np.asarray(z, float)
        if self._power is None or not z.size:
            return z * self._std + self._mean
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn's own errstate and note on the NaNs handled here
            y = self._power.inverse_transform(z.reshape(-1, 1)).ravel()
        y = np.where(np.isnan(y), np.where(z > 0, self._high, self._low), y)
        return np.clip(y, self._low, self._high)

    def inverse_std(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        """A spread in transformed units as one in objective units, around ``mean`` (half the width of the
        mean +- std interval mapped back)."""
        return np.abs(self.inverse(mean + std) - self.inverse(mean - std)) / 2
