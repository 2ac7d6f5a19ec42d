"""Exact questions about a space's latency terms, answered by dynamic programming over the stage chain.

The terms couple decisions only along a chain (the resolution is global; a stage's channels reach the next stage's
first layer; the layout term follows the trunk's memory layout, NCHWc or NCHW, from block to block, see
``nas.latency.layout``), so for each resolution the min / max latency is a chain DP over (channels, layout), and the
most probable arch whose latency lies in a band is a DP over (channels, layout, latency bin).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nas.latency.layout import reorder_steps
from nas.search.dnas.latency_terms import LatencyTerms

LAYOUTS = (0, 1)  # the trunk arrives in NCHW (0) or NCHWc (1)


@dataclass
class _Position:
    """One block position of the chain at one resolution, as ``(ops, A, B)`` arrays: A indexes the channel option
    the position reads (the previous stage's), B the one it writes; ``allowed[a, b]`` says which pairs exist."""
    layer: int | None  # the op decision's index (None: no choice, ``ops`` is 1)
    stage: int | None  # the channel decision it writes (None: the stem, the head, the classifier)
    first: bool  # the first position writing ``stage``: its channel log-probability is counted here
    cost: np.ndarray  # (ops, A, B) block costs, ms
    steps: np.ndarray  # (4, ops, A, B) ``reorder_steps``: extra reorders from NCHWc / NCHW, layout after
    allowed: np.ndarray  # (A, B) bool

    def ms(self, layout: int, per_reorder_ms: float) -> np.ndarray:
        """(ops, A, B) costs when the trunk arrives in ``layout``, the layout term's share included."""
        return self.cost + per_reorder_ms * self.steps[0 if layout else 1]

    def after(self, layout: int) -> np.ndarray:
        """(ops, A, B) the trunk's layout after the position."""
        return self.steps[2 if layout else 3].round().astype(np.int64)


def _chains(terms: LatencyTerms) -> list[list[_Position]]:
    """Per resolution index, the positions in model order (``terms.terms`` is: stem, layers, head, classifier)."""
    steps = [reorder_steps(t.layout) for t in terms.terms]
    return [_chain(terms, [s[..., ri] for s in steps], ri) for ri in range(len(terms.dist.resolution_options))]


def _chain(terms: LatencyTerms, steps_at: list[np.ndarray], ri: int) -> list[_Position]:
    stages = terms.dist.space.stages
    chain = []
    for t, steps in zip(terms.terms, steps_at):
        cost = t.cost_ms[..., ri]
        if t.name in ("stem", "classifier"):  # dims: resolution only
            chain.append(_Position(None, None, False, cost.reshape(1, 1, 1), steps.reshape(4, 1, 1, 1),
                                   np.ones((1, 1), bool)))
        elif t.name == "head":  # dims: the last stage's channels, resolution
            chain.append(_Position(None, None, False, cost.reshape(1, -1, 1), steps.reshape(4, 1, -1, 1),
                                   np.ones((cost.shape[0], 1), bool)))
        elif len(t.dims) == 4:  # a stage's first layer: op x its input (the previous stage's) x its output options
            layer, stage = t.dims[0][1], t.dims[-2][1]
            chain.append(_Position(layer, stage, True, cost, steps, np.ones(cost.shape[1:], bool)))
        else:  # op x B: stage 0's first layer (input: the stem, one option) or a layer that keeps its stage's width
            layer, stage = t.dims[0][1], t.dims[-2][1]
            if layer == stages[stage].layers[0]:
                chain.append(_Position(layer, stage, True, cost[:, None, :], steps[:, :, None, :],
                                       np.ones((1, cost.shape[1]), bool)))
            else:
                eye = np.eye(cost.shape[1], dtype=bool)
                chain.append(_Position(layer, stage, False, cost[:, None, :] * eye, steps[:, :, None, :] * eye, eye))
    return chain


def attainable_range_ms(terms: LatencyTerms) -> tuple[float, float]:
    """The fastest and the slowest arch's predicted latency (exact, the layout term included)."""
    r = terms.lm.correction.per_reorder_ms
    lows, highs = [], []
    for chain in _chains(terms):
        for reduce, worst, out in ((np.min, np.inf, lows), (np.max, -np.inf, highs)):
            value = np.array([[0.0, worst]])  # (channel option, layout): the input arrives in NCHW
            for pos in chain:
                new = np.full((pos.cost.shape[2], 2), worst)
                for s in LAYOUTS:
                    ms, after = pos.ms(s, r), pos.after(s)
                    for a, b in zip(*np.nonzero(pos.allowed)):
                        for o in range(pos.cost.shape[0]):
                            cand = value[a, s] + ms[o, a, b]
                            new[b, after[o, a, b]] = reduce([new[b, after[o, a, b]], cand])
                value = new
            out.append(float(reduce(value + r * np.array(LAYOUTS)[None, :])))
    return terms.base_ms + min(lows), terms.base_ms + max(highs)


def most_probable_in_band(terms: LatencyTerms, lo_ms: float, hi_ms: float, bins: int = 4000):
    """Decision indices (ops, channels, res) of the most probable arch with ``lo_ms <= latency <= hi_ms``, or None.

    Latencies are binned (``bins`` from the sum of the positions' most negative costs up to ``hi_ms``), so the DP is
    exact up to rounding; the band is shrunk by the rounding margin if the rounded answer falls outside it.
    """
    lp_ops, lp_ch, lp_res = terms.dist.log_probs()
    chains = _chains(terms)
    margin = 0.0
    for _ in range(3):
        found, delta = _band_dp(terms, chains, lp_ops, lp_ch, lp_res, lo_ms + margin, hi_ms - margin, hi_ms, bins)
        if found is None:
            return None
        ms = terms.arch_ms(*found)
        if lo_ms <= ms <= hi_ms:
            return found
        margin += (len(terms.terms) + 2) * delta / 2  # each position's rounding, and the last layout's
    return None


def _shift(values: np.ndarray, by: int) -> np.ndarray:
    """``out[..., k] = values[..., k - by]`` (``-inf`` where k < by)."""
    out = np.full_like(values, -np.inf)
    if by < values.shape[-1]:
        out[..., by:] = values[..., :values.shape[-1] - by]
    return out


def _band_dp(terms, chains, lp_ops, lp_ch, lp_res, lo_ms, hi_ms, scale_ms, bins):
    """(the most probable arch in the band or None, the widest bin used in ms)."""
    r = terms.lm.correction.per_reorder_ms
    n = bins + 1
    best, widest = None, 0.0  # (logp, ops, channels, res)
    for ri, chain in enumerate(chains):
        # a position's cost can be negative (a corrected block, the layout term): shift each by its minimum so that
        # partial sums only grow (every arch takes one entry of every position, so the band shifts by the same total)
        costs = [[pos.ms(s, r) for s in LAYOUTS] for pos in chain]
        offsets = [min(0.0, min(float(c[:, pos.allowed].min()) for c in pair)) for pos, pair in zip(chain, costs)]
        offset = terms.base_ms + sum(offsets)
        if scale_ms <= offset:
            continue
        delta = (scale_ms - offset) / bins  # bins over [offset, scale_ms]
        widest = max(widest, delta)
        bins_of = [[np.rint((c - off) / delta).astype(np.int64) for c in pair] for pair, off in zip(costs, offsets)]
        value = np.full((1, 2, n), -np.inf)  # (channel option, layout, latency bin)
        value[0, 0, 0] = 0.0
        pointers = []  # per position: (op, a, layout before) of the best way into (b, layout, bin)
        for pos, cost_bins in zip(chain, bins_of):
            n_ops, _, n_b = pos.cost.shape
            lp = lp_ops[pos.layer] if pos.layer is not None else np.zeros(1)
            new = np.full((n_b, 2, n), -np.inf)
            arg = np.zeros((3, n_b, 2, n), np.int64)
            for s in LAYOUTS:
                after = pos.after(s)
                for a, b in zip(*np.nonzero(pos.allowed)):
                    gain = lp_ch[pos.stage][b] if pos.first else 0.0
                    for o in range(n_ops):
                        t = after[o, a, b]
                        cand = _shift(value[a, s], cost_bins[s][o, a, b]) + lp[o] + gain
                        better = cand > new[b, t]
                        new[b, t][better] = cand[better]
                        arg[:, b, t][:, better] = np.array([o, a, s])[:, None]
            pointers.append(arg)
            value = new
        final = np.stack([_shift(value[0, s], int(round(r * s / delta))) for s in LAYOUTS])  # (layout, bin)
        ks = np.arange(n) * delta + offset
        in_band = (ks >= lo_ms - 1e-12) & (ks <= hi_ms + 1e-12)
        scores = np.where(in_band[None, :], final, -np.inf) + lp_res[ri]
        s, k = np.unravel_index(np.argmax(scores), scores.shape)
        if not np.isfinite(scores[s, k]) or (best is not None and scores[s, k] <= best[0]):
            continue
        score = float(scores[s, k])
        k -= int(round(r * s / delta))
        ops, channels, b = [0] * len(lp_ops), [0] * len(lp_ch), 0
        for pos, arg, cost_bins in zip(reversed(chain), reversed(pointers), reversed(bins_of)):
            o, a, before = (int(v) for v in arg[:, b, s, k])
            if pos.layer is not None:
                ops[pos.layer], channels[pos.stage] = o, b
            k -= int(cost_bins[before][o, a, b])
            b, s = a, before
        best = (score, ops, channels, ri)
    return (None if best is None else (best[1], best[2], best[3])), widest
