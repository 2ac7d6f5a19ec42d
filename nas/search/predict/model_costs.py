"""Free proxies of a joint model space, for whole populations: MACs, params and predicted latency per device.

These cost nothing next to training: MACs and params come from ``count_macs``/``count_params`` of each block
shape once, predicted latency from each device's ``LatencyModel`` (its ``cost_table`` and ``total_ms``). After
that a population's figures are array gathers (``nas.search.predict.block_costs``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from nas.search.predict.block_costs import BlockCostTable, block_macs, block_params
from nas.search.predict.joint_space import JointSpace

if TYPE_CHECKING:  # the latency package is another helper's; imported lazily so that this module loads alone
    from nas.latency.model import LatencyModel


def load_latency_models(devices: list[str], tables_dir=None) -> dict[str, "LatencyModel"]:
    """``LatencyModel.load`` for each device id (LatencyTableError names a missing device or table)."""
    from nas.latency.model import LatencyModel
    return {d: LatencyModel.load(d, tables_dir=tables_dir) for d in devices}


class ModelSpaceCosts:
    """Vectorised MACs, params and predicted latency (one column per device) of genomes of a joint space."""

    def __init__(self, joint: JointSpace, latency_models: dict[str, "LatencyModel"], bits: int = 32):
        self.joint = joint
        self.devices = list(latency_models)
        self.latency_models = latency_models
        self.bits = bits
        self._macs = BlockCostTable(joint, block_macs)
        self._params = BlockCostTable(joint, block_params)
        self._latency = {d: BlockCostTable.latency(joint, lm, bits) for d, lm in latency_models.items()}

    def macs(self, genomes: np.ndarray) -> np.ndarray:
        return self._macs.total(genomes)

    def params(self, genomes: np.ndarray) -> np.ndarray:
        return self._params.total(genomes)

    def latency_ms(self, genomes: np.ndarray) -> np.ndarray:
        """n x len(devices) predicted latency in ms."""
        genomes = np.atleast_2d(genomes)
        if not self.devices:
            return np.zeros((len(genomes), 0))
        return np.stack([self.latency_models[d].total_ms(costs.per_block(genomes),
                                                         layout.per_block(genomes).astype(np.int64))
                         for d, (costs, layout) in self._latency.items()], axis=1)

    @property
    def proxy_names(self) -> list[str]:
        return ["macs", "params", *(f"latency_ms[{d}]" for d in self.devices)]

    def proxies(self, genomes: np.ndarray) -> np.ndarray:
        """n x (2 + devices): MACs, params, predicted latency per device (the MLP's pretraining targets)."""
        genomes = np.atleast_2d(genomes)
        return np.column_stack([self.macs(genomes), self.params(genomes), self.latency_ms(genomes)])

    def estimated_keys(self, genome: np.ndarray) -> dict[str, list[str]]:
        """Per device, the op keys of this arch that the LatencyModel's fallback estimated (not measured)."""
        arch = self.joint.arch(genome)
        out = {}
        for d, lm in self.latency_models.items():
            keys = lm.arch_keys(self.joint.space, arch, bits=self.bits)
            out[d] = [str(k) for k in keys if lm.is_estimated(k)]
        return out
