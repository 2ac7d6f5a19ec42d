"""The ``vit_capacity`` space: its YAML schema, loading, and the token counts its configs can produce.

A ``vit_capacity`` space file starts with ``kind: vit_capacity``. It fixes the transformer (patch size, width,
depth, heads), where token pruning stages start, which blocks hold mixture-of-experts MLPs, and the options the
capacity search chooses from (a keep ratio per stage and a capacity-predictor threshold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nas.arch.spec import read_space_yaml
from nas.errors import RecipeError, SpaceError
from nas.files import json_digest
from nas.train.recipe import Recipe, parse_recipe

KIND = "vit_capacity"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_ratio(v: float, what: str) -> float:
    if not 0 < v <= 1:
        raise ValueError(f"{what} {v} is outside (0, 1]")
    return v


class PruningSpec(_Strict):
    before_blocks: list[int] = Field(default_factory=list)  # a token-scoring module before each starts a stage
    keep_ratio_options: list[float] = Field(default_factory=lambda: [1.0])
    predictor_hidden: int = Field(32, gt=0)  # the learned scorer's
    # how a stage ranks patches: ``learned`` (DynamicViT's prediction modules) or ``cls_attention`` (EViT: the class
    # token's attention in the next block; no parameters); see ``nas.search.capacity.blocks``
    scoring: Literal["learned", "cls_attention"] = "learned"

    @field_validator("keep_ratio_options")
    @classmethod
    def _ratios(cls, v):
        if not v:
            raise ValueError("must not be empty")
        return sorted({_check_ratio(float(r), "keep ratio") for r in v}, reverse=True)


class MoESpec(_Strict):
    blocks: list[int] = Field(default_factory=list)
    experts: int = Field(4, ge=1)
    expert_hidden: int = Field(128, gt=0)
    token_granularity: int = Field(4, ge=1)
    threshold_options: list[float] = Field(default_factory=lambda: [0.5])
    train_capacity: tuple[float, float] = (0.5, 1.5)
    predictor_hidden: int = Field(32, gt=0)

    @field_validator("threshold_options")
    @classmethod
    def _thresholds(cls, v):
        if not v:
            raise ValueError("must not be empty")
        for t in v:
            if not 0 < t < 1:
                raise ValueError(f"threshold {t} is outside (0, 1)")
        return sorted(set(float(t) for t in v))

    @field_validator("train_capacity")
    @classmethod
    def _capacity(cls, v):
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"needs 0 < low <= high, got {list(v)}")
        return v


class DynamicTrainingSpec(_Strict):
    full_only_epochs: int = Field(0, ge=0)  # first train the full config alone (progressive shrinking), then sample
    min_keep_ratio: float = Field(0.4, gt=0, le=1)
    full_config_prob: float = Field(0.25, ge=0, le=1)
    distill: bool = True
    predictor_loss_weight: float = Field(1.0, ge=0)
    grad_clip: float = Field(1.0, ge=0)  # max gradient norm (0: no clipping); sampled sub-configs make spikes


class CapacitySpaceSpec(_Strict):
    """The YAML schema of a ``vit_capacity`` space."""

    kind: str
    name: str
    description: str = ""
    resolution: int = Field(32, gt=0)
    in_channels: int = Field(3, gt=0)
    classes: int = Field(1000, gt=1)
    patch_size: int = Field(4, gt=0)
    stem_channels: int = Field(0, ge=0)  # a 3x3 conv stem before the patch projection (0: none)
    dim: int = Field(64, gt=0)
    depth: int = Field(6, gt=0)
    heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(2.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    moe: MoESpec = Field(default_factory=MoESpec)
    dynamic_training: DynamicTrainingSpec = Field(default_factory=DynamicTrainingSpec)
    recipe: dict = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self):
        if self.kind != KIND:
            raise ValueError(f"kind must be {KIND!r}, got {self.kind!r}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if self.resolution % self.patch_size:
            raise ValueError(f"resolution {self.resolution} is not a multiple of patch_size {self.patch_size}")
        for key, blocks in (("pruning.before_blocks", self.pruning.before_blocks), ("moe.blocks", self.moe.blocks)):
            bad = [b for b in blocks if not (0 <= b < self.depth)]
            if bad:
                raise ValueError(f"{key}: block {bad[0]} is outside 0..{self.depth - 1}")
            if len(set(blocks)) != len(blocks):
                raise ValueError(f"{key}: repeated block")
        if 0 in self.pruning.before_blocks:
            raise ValueError("pruning.before_blocks: block 0 cannot prune (tokens need one block of context)")
        return self


@dataclass(frozen=True)
class CapacitySpace:
    """A loaded ``vit_capacity`` space fitted to a dataset (input size, channels, classes)."""

    spec: CapacitySpaceSpec
    path: str
    in_channels: int
    classes: int

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def resolution(self) -> int:
        return self.spec.resolution

    @property
    def patches(self) -> int:
        return (self.spec.resolution // self.spec.patch_size) ** 2

    @property
    def tokens(self) -> int:
        """Tokens entering the first block: the patches plus the class token."""
        return self.patches + 1

    @property
    def stages(self) -> list[int]:
        return sorted(self.spec.pruning.before_blocks)

    @property
    def moe_blocks(self) -> list[int]:
        return sorted(self.spec.moe.blocks)

    @property
    def mlp_hidden(self) -> int:
        return max(1, round(self.spec.dim * self.spec.mlp_ratio))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.spec.resolution, self.spec.resolution)

    def recipe(self) -> Recipe:
        try:
            return parse_recipe(self.spec.recipe, f"{self.path}: recipe")
        except RecipeError as e:
            raise SpaceError(str(e)) from None

    def space_args(self) -> dict:
        return {"in_channels": self.in_channels, "classes": self.classes}

    def fingerprint(self) -> str:
        """A hash of everything that shapes the weights: a checkpoint only loads into a space with the same one."""
        s = self.spec
        shape = {"resolution": s.resolution, "patch_size": s.patch_size, "dim": s.dim, "depth": s.depth,
                 "heads": s.heads, "mlp_ratio": s.mlp_ratio, "stages": self.stages,
                 "predictor_hidden": s.pruning.predictor_hidden, "moe_blocks": self.moe_blocks,
                 "experts": s.moe.experts, "expert_hidden": s.moe.expert_hidden,
                 "moe_predictor_hidden": s.moe.predictor_hidden, **self.space_args()}
        if s.stem_channels:  # only when set, so that checkpoints of stem-less spaces keep their fingerprint
            shape["stem_channels"] = s.stem_channels
        if self.stages and s.pruning.scoring != "learned":  # likewise: learned-scorer checkpoints keep theirs
            shape["scoring"] = s.pruning.scoring
        return json_digest(shape)

    # ---- token arithmetic -------------------------------------------------------------------------------
    def kept_patches(self, keep_ratios) -> list[int]:
        """Patch tokens left after each pruning stage: ``ceil(rho * n)`` of the ``n`` entering it."""
        n, out = self.patches, []
        for rho in keep_ratios:
            n = max(1, math.ceil(rho * n - 1e-9))
            out.append(n)
        return out

    def block_tokens(self, kept_patches: list[int]) -> list[int]:
        """Tokens (class token included) that each block sees, given the patches kept per stage."""
        tokens, n, stage = [], self.patches, 0
        for b in range(self.spec.depth):
            if stage < len(self.stages) and b == self.stages[stage]:
                n = kept_patches[stage]
                stage += 1
            tokens.append(n + 1)
        return tokens

    def reachable_patch_counts(self) -> list[set[int]]:
        """Per stage, every patch count the keep-ratio options can produce."""
        out, current = [], {self.patches}
        for _ in self.stages:
            current = {max(1, math.ceil(r * n - 1e-9)) for n in current for r in self.spec.pruning.keep_ratio_options}
            out.append(set(current))
        return out

    def reachable_block_tokens(self) -> list[set[int]]:
        """Per block, every token count (class token included) the space can produce."""
        per_stage = self.reachable_patch_counts()
        result, current, stage = [], {self.patches}, 0
        for b in range(self.spec.depth):
            if stage < len(self.stages) and b == self.stages[stage]:
                current = per_stage[stage]
                stage += 1
            result.append({n + 1 for n in current})
        return result

    def expert_token_options(self, pool: int) -> list[int]:
        """Per-expert capacities at a layer of ``pool`` tokens: multiples of the granularity, capped at the pool."""
        g = self.spec.moe.token_granularity
        return sorted({min(pool, m) for m in range(g, pool + g, g)})

    def round_expert_tokens(self, mean_tokens: float, pool: int) -> int:
        """A measured mean per-expert load, rounded to the nearest multiple of the granularity (0 skips it)."""
        g = self.spec.moe.token_granularity
        return int(min(pool, g * round(mean_tokens / g)))


def load_capacity_space(name_or_path: str = KIND, *, in_channels: int | None = None,
                        classes: int | None = None) -> CapacitySpace:
    """Load and validate a ``vit_capacity`` space (a built-in name or a YAML path), fitted to the data."""
    raw, path = read_space_yaml(name_or_path)
    kind = raw.get("kind", "conv")
    if kind != KIND:
        raise SpaceError(f"{path}: {raw.get('name', path.stem)!r} is a {kind!r} space, not a {KIND!r} one "
                         f"(the capacity commands need 'kind: {KIND}')")
    try:
        spec = CapacitySpaceSpec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise SpaceError(f"{path}: key {key!r}: {msg}" if key else f"{path}: {msg}") from None
    for label, value in (("classes", classes), ("input channels", in_channels)):
        if value is not None and value <= 0:
            raise SpaceError(f"{label} must be positive, got {value}")
    space = CapacitySpace(spec, str(path), in_channels or spec.in_channels, classes or spec.classes)
    space.recipe()  # validate the recipe section now, naming the file
    return space


def dense_variant(space: CapacitySpace, *, depth: int | None = None, dim: int | None = None,
                  heads: int | None = None) -> CapacitySpace:
    """The same transformer without token pruning or experts (dense MLPs), optionally shallower or narrower:
    the baseline a dynamic model is compared with at equal latency."""
    s = space.spec
    depth, dim, heads = depth or s.depth, dim or s.dim, heads or s.heads
    if dim % heads:
        raise SpaceError(f"dense variant: dim {dim} is not divisible by heads {heads}")
    spec = s.model_copy(update={
        "name": f"{s.name}-dense-d{depth}-w{dim}", "depth": depth, "dim": dim, "heads": heads,
        "pruning": s.pruning.model_copy(update={"before_blocks": []}),
        "moe": s.moe.model_copy(update={"blocks": []}),
        "dynamic_training": s.dynamic_training.model_copy(update={"distill": False, "full_config_prob": 1.0}),
    })
    return CapacitySpace(spec, space.path, space.in_channels, space.classes)
