"""Training recipes as validated data (YAML or JSON), so that they can be searched like architectures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from nas.errors import RecipeError


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # lr: .inf is not a learning rate

    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    dropout: float | None = Field(None, ge=0, lt=1)  # None: the space's dropout
    ema: float = Field(0.0, ge=0, lt=1)  # EMA decay of the weights; 0 disables
    mixup: float = Field(0.0, ge=0)  # Beta(alpha, alpha) mixup; 0 disables
    augment: Literal["none", "light", "standard"] = "none"  # batch augmentation (nas.data.augment) while training
    seed: int = 0

    @model_validator(mode="after")
    def _warmup_ends(self) -> "Recipe":
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs}): the "
                             f"learning rate would never leave its warm-up")
        return self

    def updated(self, where: str = "recipe", **changes) -> "Recipe":
        """A copy with ``changes`` (``--epochs``, a seed), validated as a loaded recipe is (``model_copy`` is not).
        Fewer epochs than the warm-up shorten the warm-up to leave the last epoch to the schedule."""
        raw = {**self.model_dump(), **changes}
        if "epochs" in changes and isinstance(raw["epochs"], int) and raw["epochs"] >= 1:
            raw["warmup_epochs"] = min(raw["warmup_epochs"], raw["epochs"] - 1)
        return parse_recipe(raw, where)


def load_recipe(path: str | Path | None) -> Recipe:
    """Read a recipe file (YAML or JSON); None gives the default recipe."""
    if path is None:
        return Recipe()
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"recipe file not found: {p}")
    try:
        raw = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except json.JSONDecodeError as e:
        raise RecipeError(f"{p}:{e.lineno}: malformed recipe ({e.msg})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise RecipeError(f"{where}: malformed recipe ({getattr(e, 'problem', None) or 'invalid YAML'})") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{p}: not a text file (a recipe is YAML or JSON)") from None
    return parse_recipe(raw or {}, str(p))


def parse_recipe(raw: dict, where: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        if not key:  # a check of several keys (warm-up against epochs)
            raise RecipeError(f"{where}: {err['msg'].removeprefix('Value error, ')}") from None
        raise RecipeError(f"{where}: key {key!r}: {err['msg']}") from None
