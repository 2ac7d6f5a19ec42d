"""Dynamic-capacity configs: what the capacity search chooses, and the static plan a config compiles to.

A ``CapacityConfig`` is the user-facing choice: a keep ratio per pruning stage (DynamicViT) and a
capacity-predictor threshold (DiffMoE). A ``StaticPlan`` is what one trained model runs with that config:
the patch tokens kept after each stage and the tokens each expert of each MoE block processes. The threshold
becomes per-expert token counts by calibration (``nas.search.capacity.planning``), so that the exported ONNX graph
has static shapes and a latency the tables can predict.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from nas.errors import ArchError
from nas.search.capacity.space import CapacitySpace


class CapacityConfigError(ArchError):
    """A dynamic-capacity config is invalid for its space (keep ratio outside (0, 1], wrong stage count, ...)."""


@dataclass(frozen=True)
class CapacityConfig:
    keep_ratios: tuple[float, ...]  # one per pruning stage, of the patch tokens entering that stage
    threshold: float  # capacity predictor threshold: an expert takes the tokens whose probability exceeds it

    def to_dict(self) -> dict:
        return {"keep_ratios": list(self.keep_ratios), "threshold": self.threshold}

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "CapacityConfig":
        if not isinstance(d, dict):
            raise CapacityConfigError(f"{where}: a capacity config must be a JSON object")
        try:
            ratios = tuple(float(r) for r in d["keep_ratios"])
            threshold = float(d["threshold"])
        except KeyError as e:
            raise CapacityConfigError(f"{where}: missing key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise CapacityConfigError(f"{where}: not a capacity config ({e})") from None
        return cls(ratios, threshold)

    def label(self) -> str:
        return "keep=" + ",".join(f"{r:g}" for r in self.keep_ratios) + f" thr={self.threshold:g}"


def validate_config(space: CapacitySpace, config: CapacityConfig, where: str = "config") -> CapacityConfig:
    """Check a config against its space; raise ``CapacityConfigError`` naming the key and value."""
    if len(config.keep_ratios) != len(space.stages):
        raise CapacityConfigError(f"{where}: key 'keep_ratios' needs {len(space.stages)} values (one per pruning "
                                  f"stage of {space.name}), got {len(config.keep_ratios)}")
    for i, r in enumerate(config.keep_ratios):
        if not (0 < r <= 1) or math.isnan(r):
            raise CapacityConfigError(f"{where}: key 'keep_ratios[{i}]': keep ratio {r:g} is outside (0, 1]")
    if space.moe_blocks and not (0 < config.threshold < 1):
        raise CapacityConfigError(f"{where}: key 'threshold': {config.threshold:g} is outside (0, 1)")
    return config


def parse_keep_ratios(text: str, where: str = "--keep") -> tuple[float, ...]:
    """``"0.7,0.7,0.7"`` -> (0.7, 0.7, 0.7); one value is repeated for every stage by the caller."""
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise CapacityConfigError(f"{where}: {text!r} is not a comma-separated list of keep ratios") from None


def load_config_file(path: str | Path, space_name: str | None = None) -> CapacityConfig:
    """Read the ``config`` of a ``capacity.json`` (or a bare config object); reject one of another space."""
    p = Path(path)
    if not p.is_file():
        raise CapacityConfigError(f"config file not found: {p}")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CapacityConfigError(f"{p}: invalid JSON ({e})") from None
    if isinstance(d, dict) and "config" in d:
        if space_name is not None and d.get("space", space_name) != space_name:
            raise CapacityConfigError(f"{p}: config is for space {d['space']!r}, not {space_name!r}")
        d = d["config"]
    return CapacityConfig.from_dict(d, str(p))


@dataclass(frozen=True)
class StaticPlan:
    """A config compiled for one model: what the exported graph computes."""

    kept_patches: tuple[int, ...]  # patch tokens left after each pruning stage
    expert_tokens: tuple[int, ...]  # per MoE block, tokens each of its experts processes (0 skips the experts)

    def to_dict(self) -> dict:
        return {"kept_patches": list(self.kept_patches), "expert_tokens": list(self.expert_tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> "StaticPlan":
        return cls(tuple(int(n) for n in d["kept_patches"]), tuple(int(k) for k in d["expert_tokens"]))


def capacity_factor_plan(space: CapacitySpace, keep_ratios, capacity_factor: float = 1.0) -> StaticPlan:
    """A plan without calibration: every expert takes ``capacity_factor * T / experts`` tokens, rounded up to the
    space's token granularity (capped at ``T``), so that the plan's units are in the space's tables."""
    kept = space.kept_patches(keep_ratios)
    tokens = space.block_tokens(kept)
    experts, g = space.spec.moe.experts, space.spec.moe.token_granularity
    return StaticPlan(tuple(kept), tuple(min(tokens[b], g * math.ceil(capacity_factor * tokens[b] / experts / g))
                                         for b in space.moe_blocks))


def full_plan(space: CapacitySpace) -> StaticPlan:
    """No pruning, and every expert sees every token: the most compute a model of the space can spend."""
    return capacity_factor_plan(space, [1.0] * len(space.stages), float(space.spec.moe.experts))
