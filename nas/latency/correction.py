"""The per-device correction from summed block timings to whole-model latency, stored as ``correction.json``.

A block timed alone pays one session call (fixed cost plus bytes in and out); the table keeps that estimate
per row (``overhead_ms``), and the correction starts from the block's net time ``p50_ms - overhead_ms``.
Inside a whole model the blocks run back to back, caches are shared and the call is paid once, so

    whole_ms = base_ms + sum_blocks (scale[f] * net_ms + per_block_ms[f] + per_weight_mb_ms * weight_mb)
               + per_reorder_ms * extra_reorders

where ``f`` is the block's latency family, registered with its op (``nas.arch.ops.FAMILIES``: ``conv`` for the block
vocabulary, ``token`` for transformer units and single quantised layers), fitted by least squares on the relative
error of whole models measured on the device during profiling (the calibration set). A family without enough
calibration models shares the device-wide fit. The form stays additive over keys, so a supernet's expected latency
is exact and differentiable, but for ``extra_reorders``: the layout reorders a model runs beyond those its blocks
were timed with, which follow the blocks' order (``nas.latency.layout``; 0 where the device reads no layouts).

``weight_mb`` is the block's weights in MB (``block_weight_mb``: params x bits / 8). A block timed alone, call after
call, finds its weights in the core's cache; inside a model they come back from further away, after the other
blocks' weights and activations passed through, so each MB of weights costs the same extra time in every block (on
the 2-vCPU VM 0.01-0.07 ms per MB, 15-100 GB/s: a bandwidth, not compute). Tiny models, whose blocks
take microseconds, are ordered by it: fbnet_v2 at 32 px, width 0.25, Kendall tau 0.93-0.95 with it against 0.90-0.91
without (``benchmarks/bench_trust.py --settings tinyv2``, three fresh tables); fbnet the same way 0.75 against 0.62
on 60 models in one run, 0.00-0.01 apart in three others; at 224 px no change. The reorder and weight terms are
fitted where the calibration models' values differ and there are points to spare (16 models by default), and dropped
where their fitted weight is negative (noise: neither saves time). The mixed-precision costs
(``LatencyModel.precision_costs``) keep the weight term in the fp32 model and out of the per-layer int8 deltas:
fitted on fp32 models, the fp32 weight would credit an int8 layer with a saving it did not make (0.78 with it there
against 0.84 without, one measurement); the saving an int8 layer's 4x smaller weights do make inside a model gets its
own weight instead, fitted on mixed models (``PrecisionTerms.per_saved_weight_mb_ms``).

``precision`` weighs the terms of a mixed-precision model (``PrecisionTerms``): inside one model, dozens of small
QuantizeLinear / DequantizeLinear nodes and int8 kernels behave differently from the same ops timed alone, so
the int8 compute delta, the transition time, the number of transitions and the weight MB the int8 layers save get
weights fitted on whole mixed models measured on the device (``mixed_calibration.csv``, see
``nas.latency.calibrate``). The last is the weight term's counterpart: a layer timed alone finds its weights in
cache, inside a model they stream from memory, and at int8 a quarter of them do (ONNX Runtime's node profiler on one
fbnet arch at 224 px: its 1984x1000 classifier takes 0.43 ms at fp32 and 0.16 ms at int8 inside the model, 0.18 and
0.07 ms timed alone).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from nas.arch.opkey import OpKey
from nas.arch.ops import FAMILIES, parse_op
from nas.errors import LatencyTableError
from nas.files import read_json_record, write_json
from nas.latency.features import analytic_cost

CORRECTION_FILE = "correction.json"


def key_family(key: OpKey) -> str:
    """The latency family registered with the key's op; ArchError listing the known ops if it has none."""
    return parse_op(key.op).family


MIN_NET_FRACTION = 0.2  # a block's net time is never taken below this share of its measured p50


def net_block_ms(row: dict) -> float:
    """A table row's time without the session-call overhead it paid alone."""
    return max(row["p50_ms"] - row["overhead_ms"], MIN_NET_FRACTION * row["p50_ms"])


def block_weight_mb(key: OpKey, row: dict | None = None) -> float:
    """A block's weights in MB: its row's params (the op's analytic count where the row has none) at the key's
    bits each."""
    params = row.get("params") if row else None
    return (params or analytic_cost(key)["params"]) * key.bits / 8 / 1e6


@dataclass
class PrecisionTerms:
    """``ms = fp32_ms + compute * int8 compute delta + transition * transition ms + per_transition_ms * count
    - per_saved_weight_mb_ms * weight MB saved``.

    The defaults (1, 1, 0, 0) take the table's per-layer and transition rows as they are."""

    compute: float = 1.0
    transition: float = 1.0
    per_transition_ms: float = 0.0
    per_saved_weight_mb_ms: float = 0.0  # per MB of weights the int8 layers do not read (fp32 bytes - int8 bytes)
    fitted_on: int = 0  # mixed-precision calibration models used; 0 = not fitted

    @property
    def coef(self) -> tuple[float, float, float, float]:
        """The weights, signed as the terms enter ``model_ms`` (a saved MB takes time away)."""
        return (float(self.compute), float(self.transition), float(self.per_transition_ms),
                -float(self.per_saved_weight_mb_ms))

    def model_ms(self, fp32_ms, compute_delta_ms, transition_ms, transitions, weight_saved_mb=0.0):
        """The mixed model's latency from its terms (floats or tensors, differentiable)."""
        a, b, c, d = self.coef
        return fp32_ms + a * compute_delta_ms + b * transition_ms + c * transitions + d * weight_saved_mb


@dataclass
class Correction:
    base_ms: float = 0.0
    scale: float = 1.0  # device-wide, for families without their own fit
    per_block_ms: float = 0.0
    fitted_on: int = 0  # calibration models used; 0 = not fitted (only the call overhead is removed)
    fit_mape: float | None = None  # mean abs % error on the calibration set after the fit
    raw_mape: float | None = None  # the same for the naive sum of p50s
    family_scale: dict = field(default_factory=dict)  # {"conv": 1.1, "token": 0.9} where fitted separately
    family_per_block_ms: dict = field(default_factory=dict)
    precision: PrecisionTerms = field(default_factory=PrecisionTerms)
    per_reorder_ms: float = 0.0  # per layout reorder beyond the blocks' own (nas.latency.layout); 0 = not fitted
    per_weight_mb_ms: float = 0.0  # per MB of a block's weights (read from beyond the cache in a model); 0 = not fitted
    rescale: float = 1.0  # drift folded in by `hwnas latency check --recalibrate` (nas.latency.drift); 1 = as fitted
    history: list = field(default_factory=list)  # the corrections a rescale replaced, oldest first

    def scale_for(self, family: str) -> float:
        return float(self.family_scale.get(family, self.scale))

    def per_block_for(self, family: str) -> float:
        return float(self.family_per_block_ms.get(family, self.per_block_ms))

    def block_ms(self, net_ms: float, family: str = "conv") -> float:
        """A block's corrected cost without its weight term (``LatencyModel.block_cost_ms`` adds it)."""
        return self.scale_for(family) * net_ms + self.per_block_for(family)

    def model_ms(self, point: "CalibrationPoint") -> float:
        return self.base_ms + self.per_reorder_ms * point.reorders + self.per_weight_mb_ms * point.weight_mb + sum(
            self.scale_for(f) * point.net_ms[f] + self.per_block_for(f) * point.blocks.get(f, 0) for f in point.net_ms)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / CORRECTION_FILE
        write_json(path, asdict(self))
        return path

    @classmethod
    def load(cls, folder: Path) -> "Correction | None":
        path = Path(folder) / CORRECTION_FILE
        return read_json_record(path, cls._from_dict, lambda why: LatencyTableError(
            f"{path}: corrupt correction file ({why}); delete it and rerun `hwnas latency profile` to refit"))

    @classmethod
    def _from_dict(cls, d: dict) -> "Correction":
        """A saved correction, every field checked for its type (a wrong one raises TypeError or ValueError)."""
        known = set(cls.__dataclass_fields__)
        c = cls(**{k: v for k, v in d.items() if k in known})
        c.precision = PrecisionTerms(**c.precision) if isinstance(c.precision, dict) else PrecisionTerms()
        c.precision.coef
        float(c.base_ms), float(c.scale), float(c.per_block_ms), float(c.per_reorder_ms), float(c.per_weight_mb_ms),
        float(c.rescale)
        list(c.history)
        {str(k): float(v) for k, v in {**c.family_scale, **c.family_per_block_ms}.items()}
        return c


@dataclass
class CalibrationPoint:
    """One whole model: per-family net sums and block counts, the naive p50 sum, and the measurement."""

    net_ms: dict[str, float]
    blocks: dict[str, int]
    raw_ms: float
    measured_ms: float
    reorders: float = 0.0  # extra layout reorders (``nas.latency.layout.extra_reorders``)
    weight_mb: float = 0.0  # the blocks' weights (``block_weight_mb``), summed


OPTIONAL_TERMS = ("reorders", "weight_mb")  # CalibrationPoint fields fitted where they can be (module doc)


def _lstsq(points: list[CalibrationPoint], families: list[str], with_blocks: bool, optional: list[str]) -> np.ndarray:
    y = np.array([p.measured_ms for p in points])
    cols = [np.ones(len(points))] + [np.array([p.net_ms.get(f, 0.0) for p in points]) for f in families]
    if with_blocks:
        cols += [np.array([p.blocks.get(f, 0) for p in points], dtype=np.float64) for f in families]
    cols += [np.array([getattr(p, term) for p in points], dtype=np.float64) for term in optional]
    a = np.stack(cols, axis=1) / y[:, None]  # relative error: every model counts the same, whatever its size
    coef, *_ = np.linalg.lstsq(a, np.ones(len(points)), rcond=None)
    return coef


def _fit(points: list[CalibrationPoint], families: list[str]) -> tuple[float, dict, dict, dict] | None:
    """(base, scales, per-block terms, the optional terms' weights by name) or None when the fit is degenerate.
    An optional term is fitted where the models' values differ and there are points to spare; a negative weight
    (noise: neither a reorder nor a weight saves time) drops it and the rest are refitted. (Tried: keeping a term
    only where it lowers the leave-one-out error on the calibration models; on 16 random calibration models, tested
    on 64-104 others of fbnet at 32 and 224 px and fbnet_v2 at 32 px, it ranked them 0.003-0.013 worse.)"""
    n_params = 1 + 2 * len(families)
    ranges = [np.ptp([p.blocks.get(f, 0) for p in points]) for f in families]
    with_blocks = len(points) >= n_params + 2 and all(r > 0 for r in ranges)
    optional = [t for t in OPTIONAL_TERMS if np.ptp([getattr(p, t) for p in points]) > 0]
    optional = optional[:max(len(points) - n_params - 2, 0)]
    coef = _lstsq(points, families, with_blocks, optional)
    while optional and min(coef[len(coef) - len(optional):]) < 0:
        weights = coef[len(coef) - len(optional):]
        optional = [t for t, w in zip(optional, weights) if w >= 0]
        coef = _lstsq(points, families, with_blocks, optional)
    terms = dict.fromkeys(OPTIONAL_TERMS, 0.0)
    terms.update(zip(optional, map(float, coef[len(coef) - len(optional):])))
    coef = coef[:len(coef) - len(optional)]
    scales = dict(zip(families, map(float, coef[1:1 + len(families)])))
    per_block = dict(zip(families, map(float, coef[1 + len(families):]))) if with_blocks \
        else dict.fromkeys(families, 0.0)
    if not all(0.2 < s < 5.0 for s in scales.values()):
        return None
    return float(coef[0]), scales, per_block, terms


def fit_correction(points: list[CalibrationPoint], default_base_ms: float) -> Correction:
    """Fit the correction on calibration models; families measured in fewer than 3 models share one scale."""
    if len(points) < 2:
        return Correction(base_ms=default_base_ms, fitted_on=len(points))
    y = np.array([p.measured_ms for p in points])
    present = [f for f in FAMILIES if sum(p.net_ms.get(f, 0.0) > 0 for p in points) >= 3]
    shared = _fit([CalibrationPoint({"all": sum(p.net_ms.values())}, {"all": sum(p.blocks.values())},
                                    p.raw_ms, p.measured_ms, p.reorders, p.weight_mb) for p in points], ["all"])
    if shared is None:
        return Correction(base_ms=default_base_ms, fitted_on=len(points),
                          raw_mape=float(np.mean(np.abs(np.array([p.raw_ms for p in points]) - y) / y) * 100))
    corr = Correction(shared[0], shared[1]["all"], shared[2]["all"], len(points))
    terms = shared[3]
    if len(present) > 1:
        own = _fit(points, present)
        if own is not None:
            corr.base_ms, corr.family_scale, corr.family_per_block_ms, terms = own
    corr.per_reorder_ms, corr.per_weight_mb_ms = terms["reorders"], terms["weight_mb"]
    fitted = np.array([corr.model_ms(p) for p in points])
    corr.fit_mape = float(np.mean(np.abs(fitted - y) / y) * 100)
    corr.raw_mape = float(np.mean(np.abs(np.array([p.raw_ms for p in points]) - y) / y) * 100)
    return corr
