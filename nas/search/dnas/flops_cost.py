"""The hardware-unaware cost of the ``--cost flops`` ablation: latency as a straight line in FLOPs.

A user without a device table counts FLOPs. To run the same differentiable search that way (same loss, same target in
ms, same decoding), the FLOPs are turned into ms by one line fitted on the device's calibration models (the whole
models timed when its table was calibrated, ``calibration.csv``): ``ms = intercept_ms + ms_per_mac * MACs``
(least squares, slope not negative). A block's cost is ``ms_per_mac`` times its MACs, counted by
``torch.utils.flop_counter`` on the block built at its shape (as the profiler and ``hwnas space show`` count them);
``intercept_ms`` takes the place of the table's per-call base. What the line cannot know is what the table measures:
that a depthwise 5x5 costs more than its MACs say, that a skip or a narrow layer is nearly free or not, the per-block
overheads of a small model.

``FlopsLatencyModel`` is a ``LatencyModel`` whose block costs come from the line, so the expected latency, the
attainable range, the decoding and ``predict`` all follow from it unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterable

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from nas.arch.opkey import OpKey
from nas.errors import LatencyTableError
from nas.latency.calibrate import read_calibration
from nas.latency.model import LatencyModel
from nas.latency.profile import block_item, key_is_identity, single_thread_torch

COSTS = ("latency", "flops")  # --cost: the device's table, or the FLOPs line (the ablation)


def key_macs(key: OpKey) -> int:
    """Multiply-accumulates of one block at batch 1 (``torch.utils.flop_counter``; identities cost 0)."""
    if key_is_identity(key):
        return 0
    item = block_item(key)
    module = item.build().eval()
    with single_thread_torch(), torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*(torch.zeros(*shape) for shape in item.input_shapes))
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class FlopsFit:
    """``ms = intercept_ms + ms_per_mac * MACs``, fitted on ``models`` calibration models (``r2`` of the fit)."""

    intercept_ms: float
    ms_per_mac: float
    models: int
    r2: float

    def to_dict(self) -> dict:
        return {**asdict(self), "ms_per_mmac": self.ms_per_mac * 1e6}


def fit_flops_line(macs: np.ndarray, ms: np.ndarray) -> FlopsFit:
    """The least-squares line through (MACs, ms) (two distinct MAC counts at least) with a slope that is not
    negative (a flat line where it would be)."""
    macs, ms = np.asarray(macs, dtype=np.float64), np.asarray(ms, dtype=np.float64)
    slope, intercept = np.polyfit(macs, ms, 1)
    if slope < 0:
        slope, intercept = 0.0, float(ms.mean())
    residual = ms - (intercept + slope * macs)
    spread = float(((ms - ms.mean()) ** 2).sum())
    r2 = 1.0 - float((residual ** 2).sum()) / spread if spread > 0 else 1.0
    return FlopsFit(float(intercept), float(slope), len(ms), r2)


class FlopsLatencyModel(LatencyModel):
    """A device's ``LatencyModel`` with its table replaced by the FLOPs line (the device, its manifest and its
    calibration stay: they are what the line is fitted to and what the winner is measured on). The correction's
    terms that read the table's blocks (layout reorders, weights) are off: the line is the whole cost."""

    def __init__(self, lm: LatencyModel, fit: FlopsFit):
        super().__init__(lm.table, replace(lm.correction, per_reorder_ms=0.0, per_weight_mb_ms=0.0), lm.overhead,
                         lm.allow_fallback)
        self.fit = fit
        self._macs: dict[str, int] = {}

    @classmethod
    def fit_on_calibration(cls, lm: LatencyModel) -> "FlopsLatencyModel":
        """Fit the line on every calibration model of ``lm``'s device; LatencyTableError if it has too few."""
        rows = read_calibration(lm.table.folder)
        model = cls(lm, FlopsFit(0.0, 0.0, 0, 0.0))
        macs = np.array([sum(model.macs(k) for k in r["keys"]) for r in rows])
        if len(np.unique(macs)) < 2:
            raise LatencyTableError(
                f"--cost flops fits ms to FLOPs on the calibration models of device {lm.device_id!r}, and it has "
                f"{len(rows)} of different MACs (at least two are needed); calibrate it (rerun the search with "
                f"--profile, or `hwnas latency profile` for its space)")
        model.fit = fit_flops_line(macs, np.array([r["measured_ms"] for r in rows]))
        return model

    def macs(self, key: OpKey) -> int:
        """The block's MACs: recorded in its table row when profiled (the same counter), else counted."""
        name = str(key)
        if name not in self._macs:
            row = self.table.get(key)
            self._macs[name] = int(row["macs"]) if row and row.get("macs") not in (None, "") else key_macs(key)
        return self._macs[name]

    @property
    def base_ms(self) -> float:
        return self.fit.intercept_ms

    def is_estimated(self, key: OpKey) -> bool:
        return False  # every key has MACs

    def block_cost_ms(self, key: OpKey) -> float:
        return self.fit.ms_per_mac * self.macs(key)

    def block_costs_ms(self, keys: Iterable[OpKey]) -> np.ndarray:
        return np.asarray([self.block_cost_ms(k) for k in keys], dtype=np.float64)

    def describe(self) -> dict:
        return {"cost": "flops", **self.fit.to_dict(), "device": self.device_id}
