"""Exact questions about a space's latency terms, answered by dynamic programming over the stage chain.

The terms couple decisions only along a chain (the resolution is global; a stage's channels reach the next stage's
first layer), so for each resolution the min / max latency is a chain DP, and the most probable arch whose latency
lies in a band is a DP over (channels, latency bin).
"""

from __future__ import annotations

import numpy as np

from nas.search.dnas.latency_terms import LatencyTerms


def _at_res(terms: LatencyTerms, ri: int):
    """The terms sliced at resolution index ``ri``: (stem cost, [(layer, stage, first, cost array)], head, cls)."""
    stem = head = cls = None
    layers = []
    for t in terms.terms:
        cost = t.cost_ms[..., ri]
        if t.name == "stem":
            stem = float(cost)
        elif t.name == "head":
            head = cost
        elif t.name == "classifier":
            cls = float(cost)
        else:  # kind: "cross" (a later stage's first layer: op x A x B), "tied" (op x B, input = output or stem)
            layer, stage = t.dims[0][1], t.dims[-2][1]
            if len(t.dims) == 4:
                layers.append((layer, stage, "cross", cost))
            else:  # the stem feeds stage 0's first layer: one input option
                first = layer == terms.dist.space.stages[stage].layers[0]
                layers.append((layer, stage, "from_stem" if first else "tied", cost))
    return stem, layers, head, cls


def attainable_range_ms(terms: LatencyTerms) -> tuple[float, float]:
    """The fastest and the slowest arch's predicted latency (exact)."""
    lows, highs = [], []
    for ri in range(len(terms.dist.resolution_options)):
        for reduce, out in ((np.min, lows), (np.max, highs)):
            stem, layers, head, cls = _at_res(terms, ri)
            value = np.array([stem])  # over the previous stage's channel options (stem: one)
            for _, _, kind, cost in layers:
                best = reduce(cost, axis=0)  # over ops: (A, B) for "cross", else (B,)
                if kind == "cross":
                    value = reduce(value[:, None] + best, axis=0)
                elif kind == "tied":
                    value = value + best
                else:
                    value = value[0] + best
            out.append(float(reduce(value + head)) + cls)
    return terms.base_ms + min(lows), terms.base_ms + max(highs)


def most_probable_in_band(terms: LatencyTerms, lo_ms: float, hi_ms: float, bins: int = 4000):
    """Decision indices (ops, channels, res) of the most probable arch with ``lo_ms <= latency <= hi_ms``, or None.

    Latencies are rounded to ``bins`` bins over [0, hi]; the result is checked exactly and the band narrowed by the
    rounding margin if the rounded answer falls outside it.
    """
    lp_ops, lp_ch, lp_res = terms.dist.log_probs()
    margin = 0.0
    for _ in range(3):
        found = _band_dp(terms, lp_ops, lp_ch, lp_res, lo_ms + margin, hi_ms - margin, hi_ms, bins)
        if found is None:
            return None
        ms = terms.arch_ms(*found)
        if lo_ms <= ms <= hi_ms:
            return found
        margin += (len(terms.terms) + 1) * hi_ms / bins / 2
    return None


def _shift(values: np.ndarray, by: int) -> np.ndarray:
    """``out[..., k] = values[..., k - by]`` (``-inf`` where k < by)."""
    out = np.full_like(values, -np.inf)
    if by < values.shape[-1]:
        out[..., by:] = values[..., :values.shape[-1] - by]
    return out


def _band_dp(terms, lp_ops, lp_ch, lp_res, lo_ms, hi_ms, scale_ms, bins):
    # a corrected block cost can be slightly negative: shift every term by its minimum so that partial sums only
    # grow (every arch takes one entry of every term, so the band shifts by the same total)
    offsets = {t.name: min(0.0, float(t.cost_ms.min())) for t in terms.terms}
    offset = sum(offsets.values())
    lo_ms, hi_ms, scale_ms = lo_ms - offset, hi_ms - offset, scale_ms - offset
    delta = scale_ms / bins
    n = bins + 1
    to_bin = lambda ms: int(round(ms / delta))  # noqa: E731
    best = None  # (logp, ops, channels, res)
    for ri in range(len(lp_res)):
        stem, layers, head, cls = _at_res(terms, ri)
        layers = [(layer, stage, kind, cost - offsets[f"L{layer}"]) for layer, stage, kind, cost in layers]
        head = head - offsets["head"]
        stem, cls = stem - offsets["stem"], cls - offsets["classifier"]
        value = np.full((1, n), -np.inf)
        start = to_bin(terms.base_ms + stem + cls)
        if start >= n:
            continue
        value[0, start] = 0.0
        pointers = []  # per layer: (op[b, k], a[b, k])
        for layer, stage, kind, cost in layers:
            lp = lp_ops[layer]
            costs = np.vectorize(to_bin)(cost)
            if kind != "tied":  # input options differ from output options
                c3 = costs if kind == "cross" else costs[:, None, :]  # (ops, A, B)
                n_a, n_b = c3.shape[1], c3.shape[2]
                new = np.full((n_b, n), -np.inf)
                arg_op = np.zeros((n_b, n), np.int64)
                arg_a = np.zeros((n_b, n), np.int64)
                for b in range(n_b):
                    for o in range(len(lp)):
                        for a in range(n_a):
                            cand = _shift(value[a], c3[o, a, b]) + lp[o]
                            better = cand > new[b]
                            new[b][better] = cand[better]
                            arg_op[b][better] = o
                            arg_a[b][better] = a
                new += lp_ch[stage][:, None]
            else:
                n_b = costs.shape[1]
                new = np.full((n_b, n), -np.inf)
                arg_op = np.zeros((n_b, n), np.int64)
                arg_a = np.tile(np.arange(n_b)[:, None], (1, n))
                for b in range(n_b):
                    for o in range(len(lp)):
                        cand = _shift(value[b], costs[o, b]) + lp[o]
                        better = cand > new[b]
                        new[b][better] = cand[better]
                        arg_op[b][better] = o
            pointers.append((layer, stage, arg_op, arg_a))
            value = new
        head_bins = np.vectorize(to_bin)(head)
        final = np.stack([_shift(value[b], head_bins[b]) for b in range(value.shape[0])])
        ks = np.arange(n) * delta
        in_band = (ks >= lo_ms - 1e-12) & (ks <= hi_ms + 1e-12)
        scores = np.where(in_band[None, :], final, -np.inf) + lp_res[ri]
        b, k = np.unravel_index(np.argmax(scores), scores.shape)
        if not np.isfinite(scores[b, k]) or (best is not None and scores[b, k] <= best[0]):
            continue
        k -= head_bins[b]
        ops = [0] * len(lp_ops)
        channels = [0] * len(lp_ch)
        for layer, stage, arg_op, arg_a in reversed(pointers):
            o, a = int(arg_op[b, k]), int(arg_a[b, k])
            ops[layer], channels[stage] = o, int(b)
            c = _layer_cost_bins(layers, layer, o, a, b, to_bin)
            k -= c
            b = a
        best = (float(scores.max()), ops, channels, ri)
    return None if best is None else (best[1], best[2], best[3])


def _layer_cost_bins(layers, layer, o, a, b, to_bin) -> int:
    for idx, _, kind, cost in layers:
        if idx == layer:
            return to_bin(cost[o, a, b] if kind == "cross" else cost[o, b])
    raise KeyError(layer)
