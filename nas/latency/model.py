"""LatencyModel: a device's table, its fitted correction and a fallback regressor, as one predictor.

    ms(arch) = base_ms + sum over the arch's keys of block_cost_ms(key) + per_reorder_ms * extra_reorders(arch)

``block_cost_ms`` is the corrected table entry (``correction.scale * (p50_ms - overhead_ms) +
correction.per_block_ms + correction.per_weight_mb_ms * weight_mb``, see ``nas.latency.correction``), 0 for identity
blocks, or, for a key the table lacks, a scikit-learn regressor's
estimate fitted on the table's rows (flagged in ``Prediction.estimated``; with ``allow_fallback=False`` a
missing key raises ``LatencyTableError`` naming it). The last term counts the layout reorders ONNX Runtime runs in
the whole model beyond those its blocks were timed with, from the blocks' layouts in model order
(``nas.latency.layout``: the one term that is not a sum over blocks; 0 on devices without layouts).
``total_ms`` is the one place where ``base_ms`` and that term are added to block costs: one arch's
(``predict_keys``), a population's (an n x blocks array, with its n x blocks layout codes) or a supernet's
expectation (a tensor, with the expected reorders). ``cost_table`` turns a space's block positions
(``nas.arch.positions``) into cost arrays and layout codes, one axis per decision, which DNAS's expected latency and
the predictor searches' population costs are views of. Every search calls this; none re-implements it.
``precision_costs`` does the same for a quantisable model's layers at fp32 and int8 and the precision transitions
between them (``nas.latency.precision``: the mixed-precision cost and its one formula; the layers' costs without the
weight term, which only the fp32 model's prediction carries).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np
import torch

from nas.arch.opkey import OpKey
from nas.arch.positions import BlockPosition
from nas.arch.space import Arch, Space
from nas.errors import LatencyTableError
from nas.latency.correction import Correction, block_weight_mb, key_family, net_block_ms
from nas.latency.features import key_features
from nas.latency.layout import ExpectedReorders, extra_reorders, layout_codes, read_layouts
from nas.latency.overhead import CallOverhead
from nas.latency.precision import PrecisionCostTable, PrecisionGraph
from nas.latency.profile import key_is_identity
from nas.latency.table import LatencyTable

if TYPE_CHECKING:
    from nas.latency.device import Device


@dataclass
class Prediction:
    ms: float
    estimated: list[OpKey] = field(default_factory=list)  # keys answered by the fallback regressor
    warnings: list[str] = field(default_factory=list)
    layout_ms: float = 0.0  # the layout term inside ``ms`` (nas.latency.layout): reorders beyond the blocks' own

    @property
    def is_estimated(self) -> bool:
        return bool(self.estimated)


class FallbackRegressor:
    """Predicts log(net block ms) from key features (ridge on log-features, trees on its residuals)."""

    def __init__(self, keys: list[OpKey], rows: list[dict | None], net_ms: list[float]):
        from sklearn.ensemble import ExtraTreesRegressor
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x = np.stack([key_features(k, r) for k, r in zip(keys, rows)])
        y = np.log(np.maximum(net_ms, 1e-4))
        self.linear = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 2, 12))).fit(x, y)
        self.trees = ExtraTreesRegressor(n_estimators=200, min_samples_leaf=2, random_state=0).fit(
            x, y - self.linear.predict(x))
        self.rows = len(keys)

    @classmethod
    def for_table(cls, table: LatencyTable, net_ms: dict[str, float]) -> "FallbackRegressor":
        keys = [k for k in table.keys() if not k.op.startswith("_")]
        if len(keys) < 3:
            raise LatencyTableError(f"device {table.device_id!r}: {len(keys)} measured rows are too few to fit "
                                    f"the fallback regressor (profile the space first)")
        return cls(keys, [table.get(k) for k in keys], [net_ms[str(k)] for k in keys])

    def predict_ms(self, keys: list[OpKey]) -> np.ndarray:
        """Estimated net ms of each key (one batched prediction)."""
        x = np.stack([key_features(k) for k in keys])
        return np.exp(self.linear.predict(x) + self.trees.predict(x))


@dataclass
class PositionCosts:
    """One block position's costs on a device: arrays with one axis per decision (``position.dims``)."""

    position: BlockPosition
    keys: np.ndarray = field(repr=False)  # the OpKey of every entry (object array)
    cost_ms: np.ndarray  # float64, same shape
    layout: np.ndarray = field(repr=False, default=None)  # int64 layout codes (nas.latency.layout), same shape


class LatencyModel:
    def __init__(self, table: LatencyTable, correction: Correction | None = None,
                 overhead: CallOverhead | None = None, allow_fallback: bool = True):
        self.table = table
        self.allow_fallback = allow_fallback
        self.warnings: list[str] = []
        if w := table.manifest.version_warning():
            self.warnings.append(w)
        self._use(correction, overhead)

    def _use(self, correction: Correction | None, overhead: CallOverhead | None) -> None:
        self.overhead = overhead
        self.correction = correction or Correction(base_ms=overhead.fixed_ms if overhead else 0.0)
        self._net_ms = {k: net_block_ms(r) for k, r in self.table.rows.items()}
        self.layouts = read_layouts(self.table.folder)
        self._fallback: FallbackRegressor | None = None
        self._estimates: dict[str, float] = {}

    @classmethod
    def load(cls, device_id: str, tables_dir: str | Path | None = None, allow_fallback: bool = True
             ) -> "LatencyModel":
        """Load a device's table, correction and call overhead; LatencyTableError if missing or corrupt."""
        table = LatencyTable.open(device_id, tables_dir)
        return cls(table, Correction.load(table.folder), CallOverhead.load(table.folder), allow_fallback)

    def refresh(self) -> None:
        """Take in what was measured into the device's folder since loading (a search that profiles the blocks
        its table lacks): the new rows, the refitted correction and the call overhead."""
        self.table.refresh()
        self._use(Correction.load(self.table.folder), CallOverhead.load(self.table.folder))

    @property
    def device_id(self) -> str:
        return self.table.device_id

    @property
    def device(self) -> "Device":
        """The measurement set-up of this table: every ``measured_ms`` compared with its predictions uses it."""
        from nas.latency.device import Device

        return Device.from_manifest(self.table.manifest)

    @property
    def base_ms(self) -> float:
        return self.correction.base_ms

    # ---- per key ---------------------------------------------------------------------------------------------
    def is_estimated(self, key: OpKey) -> bool:
        return not key_is_identity(key) and str(key) not in self.table

    def net_ms(self, key: OpKey) -> float:
        """The block's own time without the session-call overhead (measured, or the fallback's estimate)."""
        name = str(key)
        if name in self._net_ms:
            return self._net_ms[name]
        self._estimate([key])
        return self._estimates[name]

    def _estimate(self, keys: list[OpKey]) -> None:
        """Fill the fallback's estimates of the keys the table lacks, in one batch."""
        missing = list({str(k): k for k in keys if str(k) not in self._net_ms and str(k) not in self._estimates}
                       .values())
        if not missing:
            return
        if not self.allow_fallback:
            raise LatencyTableError(f"device {self.device_id!r} has no measurement for key {missing[0]} and the "
                                    f"fallback is disabled; profile it (`hwnas latency profile`)")
        if self._fallback is None:
            self._fallback = FallbackRegressor.for_table(self.table, self._net_ms)
        self._estimates.update(zip(map(str, missing), map(float, self._fallback.predict_ms(missing))))

    def block_cost_ms(self, key: OpKey) -> float:
        """Corrected additive contribution of one block; 0.0 for identity blocks."""
        if key_is_identity(key):
            return 0.0
        return self.correction.block_ms(self.net_ms(key), key_family(key)) + self.weight_ms(key)

    def weight_ms(self, key: OpKey) -> float:
        """The weight term inside ``block_cost_ms`` (``nas.latency.correction``; 0 where none was fitted)."""
        if key_is_identity(key) or not self.correction.per_weight_mb_ms:
            return 0.0
        return self.correction.per_weight_mb_ms * block_weight_mb(key, self.table.get(key))

    def block_costs_ms(self, keys: Iterable[OpKey]) -> np.ndarray:
        """``block_cost_ms`` of many keys (missing ones estimated in one batch)."""
        keys = list(keys)
        self._estimate([k for k in keys if not key_is_identity(k)])
        return np.asarray([self.block_cost_ms(k) for k in keys], dtype=np.float64)

    def layout_codes(self, keys: Iterable[OpKey]) -> np.ndarray:
        """The keys' layout codes in model order (``nas.latency.layout.layout_codes``)."""
        return layout_codes(list(keys), self.layouts)

    # ---- whole models -----------------------------------------------------------------------------------------
    def total_ms(self, block_ms, layout=None):
        """Whole-model latency from block costs: ``base_ms`` + their sum over the last axis + the layout term.

        ``block_ms``: one arch's costs (a sequence or a 1-D array) with ``layout`` its codes, a population's (n x
        blocks arrays), or a supernet's expected block costs (a tensor, differentiable) with ``layout`` its expected
        extra reorders (a tensor). ``layout`` None: no layout term."""
        if isinstance(block_ms, (list, tuple)):
            block_ms = np.asarray(block_ms, dtype=np.float64)
        total = block_ms.sum(-1) + self.base_ms
        if layout is None or not self.correction.per_reorder_ms:
            return total
        if isinstance(layout, torch.Tensor):
            return total + self.correction.per_reorder_ms * layout
        reorders = extra_reorders(layout)
        return total + self.correction.per_reorder_ms * (reorders if np.ndim(layout) > 1 else float(reorders[0]))

    def predict_keys(self, keys: Iterable[OpKey]) -> Prediction:
        keys = list(keys)
        costs, codes = self.block_costs_ms(keys), self.layout_codes(keys)
        total = self.total_ms(costs, codes)
        estimated = [k for k in keys if self.is_estimated(k)]
        warnings = list(self.warnings)
        if estimated:
            warnings.append(f"{len(estimated)} of {len(keys)} blocks are estimated by the fallback regressor "
                            f"(not in the table of device {self.device_id!r})")
        return Prediction(float(total), estimated, warnings, float(total - self.total_ms(costs)))

    @staticmethod
    def arch_keys(space: Space, arch: Arch, bits: int = 32) -> list[OpKey]:
        return [OpKey.from_block(b, bits) for b in space.resolve(arch)]

    def predict(self, space: Space, arch: Arch, bits: int = 32) -> float:
        return self.predict_keys(self.arch_keys(space, arch, bits)).ms

    # ---- block positions (supernets, populations) ---------------------------------------------------------------
    def cost_table(self, positions: list[BlockPosition], bits: int = 32) -> list[PositionCosts]:
        """Every block position's cost over the options of its decisions, at ``bits``."""
        keys = [np.empty(p.shape, dtype=object) for p in positions]
        for position, array in zip(positions, keys):
            for index, block in position.blocks():
                array[index] = OpKey.from_block(block, bits)
        flat = [k for array in keys for k in array.flat]
        costs, codes = self.block_costs_ms(flat), self.layout_codes(flat)
        out, start = [], 0
        for position, array in zip(positions, keys):
            end = start + array.size
            out.append(PositionCosts(position, array, costs[start:end].reshape(array.shape),
                                     codes[start:end].reshape(array.shape)))
            start = end
        return out

    def cost_tensor(self, keys: Iterable[OpKey], dtype=torch.float32) -> torch.Tensor:
        """Costs of one layer's candidates as a tensor, to pair with its choice probabilities."""
        return torch.tensor(self.block_costs_ms(keys), dtype=dtype)

    def expected_ms(self, probs: list[torch.Tensor], costs: list[torch.Tensor],
                    reorders: ExpectedReorders | None = None) -> torch.Tensor:
        """Differentiable expected latency: ``base_ms + sum_i (probs[i] * costs[i]).sum()`` + the layout term's
        expectation (``reorders``: the positions' ``ExpectedReorders``, in model order; None: no layout term)."""
        if len(probs) != len(costs):
            raise ValueError(f"expected_ms: {len(probs)} probability tensors but {len(costs)} cost tensors")
        terms = [(p * c.to(p.device, p.dtype)).sum() for p, c in zip(probs, costs)]
        reorders = reorders(probs) if reorders is not None and self.correction.per_reorder_ms else None
        return self.total_ms(torch.stack(terms) if terms else torch.zeros(0), reorders)

    # ---- mixed precision ---------------------------------------------------------------------------------------------
    def precision_costs(self, model_keys: Iterable[OpKey], graph: PrecisionGraph) -> PrecisionCostTable:
        """A quantisable model's precision cost table: the fp32 model's prediction (its blocks, ``model_keys``), each
        layer's cost at fp32 and int8 and each edge's transition cost (``graph``), weighted by this device's fitted
        ``correction.precision`` (``nas.latency.precision``)."""
        model = self.predict_keys(model_keys)
        keys = graph.keys()
        cost = dict(zip(map(str, keys), self.block_costs_ms(keys) - [self.weight_ms(k) for k in keys]))
        estimated = list(dict.fromkeys(model.estimated + [k for k in keys if self.is_estimated(k)]))
        return PrecisionCostTable(graph, model.ms, np.array([cost[str(layer.fp32)] for layer in graph.layers]),
                                  np.array([cost[str(layer.int8)] for layer in graph.layers]),
                                  np.array([cost[str(e.transition)] if e.transition is not None else 0.0
                                            for e in graph.edges]), self.correction.precision, estimated)

    def describe(self) -> dict:
        return {"device": self.device_id, "rows": len(self.table), "base_ms": self.base_ms,
                "scale": self.correction.scale, "per_block_ms": self.correction.per_block_ms,
                "per_reorder_ms": self.correction.per_reorder_ms, "blocks_with_layout": len(self.layouts),
                "calibration_models": self.correction.fitted_on, "precision": asdict(self.correction.precision),
                "warnings": self.warnings}
