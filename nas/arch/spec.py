"""The YAML schema of a search space (``SpaceSpec``), and reading a space file: a built-in name or a path, with
errors that name the file, line and key."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nas.arch.ops import parse_op
from nas.errors import ArchError, SpaceError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageSpec(_Strict):
    channels: int = Field(gt=0)
    repeat: int = Field(gt=0)
    stride: int = Field(ge=1, le=2)
    candidates: list[str] | None = None  # overrides the space-wide candidates


class SpaceSpec(_Strict):
    """The YAML schema of a search space."""

    name: str
    description: str = ""
    resolution: int = Field(224, gt=0)
    in_channels: int = Field(3, gt=0)
    classes: int = Field(1000, gt=1)
    width_multiplier: float = Field(1.0, gt=0)
    stem: tuple[str, int, int]  # [op, channels, stride]
    stages: list[StageSpec] | None = None
    blocks: list[tuple[str, int, int, int]] | None = None  # fixed models: [op, channels, stride, repeat]
    candidates: list[str] | None = None
    head: tuple[str, int]  # [op, channels]
    dropout: float = Field(0.2, ge=0, lt=1)
    channel_options: list[float] | None = None  # multipliers of each stage's channels
    resolution_options: list[int] | None = None  # input resolutions, stated at `resolution`
    recipe_space: dict[str, Any] | None = None  # ranges for architecture-recipe search

    @field_validator("candidates", "channel_options", "resolution_options")
    @classmethod
    def _non_empty(cls, v):
        if v is not None and not v:
            raise ValueError("must not be empty")
        return v


def builtin_spaces() -> dict[str, str]:
    """Built-in space names and their kinds (``conv`` for FBNet-style spaces)."""
    found = {}
    for p in resources.files("search_spaces").iterdir():
        if p.name.endswith(".yaml"):
            raw = yaml.safe_load(p.read_text()) or {}
            found[p.name[:-5]] = raw.get("kind", "conv") if isinstance(raw, dict) else "invalid"
    return dict(sorted(found.items()))


def _space_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise SpaceError(f"space file not found: {p}")
        return p
    builtin = resources.files("search_spaces") / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise SpaceError(f"unknown space {name_or_path!r} (built in: {', '.join(builtin_spaces())})")
    return Path(str(builtin))


def read_space_yaml(name_or_path: str) -> tuple[dict, Path]:
    """A space's YAML (a built-in name or a path) as a mapping, with errors naming the file and line."""
    path = _space_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:  # not YAML, or not text at all
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpaceError(f"{where}: malformed YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise SpaceError(f"{path}: a space must be a YAML mapping")
    return raw, path


def load_space_spec(name_or_path: str) -> tuple[SpaceSpec, Path]:
    raw, path = read_space_yaml(name_or_path)
    kind = raw.pop("kind", "conv")
    if kind != "conv":
        raise SpaceError(f"{path}: {raw.get('name', path.stem)!r} is a {kind!r} space, not a convolutional "
                         f"(FBNet-style) one; the commands for {kind!r} spaces take it")
    try:
        spec = SpaceSpec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(x) for x in err["loc"]) or "(top level)"
        raise SpaceError(f"{path}: key {key!r}: {err['msg']}") from None
    if (spec.stages is None) == (spec.blocks is None):
        raise SpaceError(f"{path}: give exactly one of 'stages' (searchable) or 'blocks' (fixed model)")
    if spec.stages is not None and spec.candidates is None and any(s.candidates is None for s in spec.stages):
        raise SpaceError(f"{path}: key 'candidates': required when a stage does not list its own")
    try:
        for op in [spec.stem[0], spec.head[0], *(spec.candidates or []), *(b[0] for b in spec.blocks or []),
                   *(c for s in spec.stages or [] for c in s.candidates or [])]:
            parse_op(op)
    except ArchError as e:
        raise SpaceError(f"{path}: {e}") from None
    return spec, path
