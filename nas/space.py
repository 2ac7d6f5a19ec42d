"""Search spaces as YAML data, and architectures as plain JSON-serialisable choices.

A space file declares a macro-architecture: a stem, stages of layers with candidate ops (or a fixed list of
mobile-vision style block rows ``[op, channels, stride, repeat]``), a head, and optional channel and
resolution options. ``load_space`` validates it and applies the user's resolution, width multiplier and
class count. ``Space.resolve(arch)`` turns an arch into the concrete list of blocks that both the model
builder and the latency model consume; ``Space.block_positions()`` is the chain of block positions that
everything costing an arch walks (``nas.positions``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nas.blocks import make_divisible
from nas.errors import ArchError, HwnasError, SpaceError
from nas.ops import parse_op
from nas.positions import BlockPosition, BlockSpec, block_positions, resolve_blocks


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


@dataclass(frozen=True)
class Arch:
    """One choice per decision of a space. ``channels`` is per stage, ``resolution`` the input size."""

    space: str
    ops: tuple[str, ...]
    channels: tuple[int, ...] | None = None
    resolution: int | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"space": self.space, "ops": list(self.ops)}
        if self.channels is not None:
            d["channels"] = list(self.channels)
        if self.resolution is not None:
            d["resolution"] = self.resolution
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "arch") -> "Arch":
        try:
            return cls(
                space=str(d["space"]),
                ops=tuple(str(o) for o in d["ops"]),
                channels=tuple(int(c) for c in d["channels"]) if d.get("channels") is not None else None,
                resolution=int(d["resolution"]) if d.get("resolution") is not None else None,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArchError(f"{where}: not an arch object ({type(e).__name__}: {e})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, where: str = "arch") -> "Arch":
        try:
            return cls.from_dict(json.loads(text), where)
        except json.JSONDecodeError as e:
            raise ArchError(f"{where}: invalid JSON ({e})") from None


@dataclass
class LayerSlot:
    index: int
    stage: int
    stride: int
    candidates: list[str]


@dataclass
class StageSlot:
    index: int
    layers: list[int]
    channel_options: list[int]  # absolute channel counts after width scaling; the last is the largest


@dataclass
class Space:
    spec: SpaceSpec
    resolution: int
    width_multiplier: float
    classes: int
    in_channels: int
    layers: list[LayerSlot] = field(default_factory=list)
    stages: list[StageSlot] = field(default_factory=list)
    resolution_options: list[int] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def is_fixed(self) -> bool:
        return all(len(layer.candidates) == 1 for layer in self.layers) and not self.searches_channels \
            and not self.searches_resolution

    @property
    def searches_channels(self) -> bool:
        return any(len(s.channel_options) > 1 for s in self.stages)

    @property
    def searches_resolution(self) -> bool:
        return self.resolution_options is not None and len(self.resolution_options) > 1

    def space_args(self) -> dict:
        return {"resolution": self.resolution, "width_multiplier": self.width_multiplier,
                "classes": self.classes, "in_channels": self.in_channels}

    def _scale(self, channels: int) -> int:
        return make_divisible(channels * self.width_multiplier, 8)

    @property
    def stem_channels(self) -> int:
        return self._scale(self.spec.stem[1])

    @property
    def head_channels(self) -> int:
        return self._scale(self.spec.head[1])

    # ---- archs -------------------------------------------------------------------------------------------
    def validate(self, arch: Arch) -> Arch:
        """Return ``arch`` if it fits this space; raise ArchError naming the first mismatch."""
        if arch.space != self.name:
            raise ArchError(f"arch is for space {arch.space!r}, not {self.name!r}")
        if len(arch.ops) != len(self.layers):
            raise ArchError(f"arch has {len(arch.ops)} ops; space {self.name!r} has {len(self.layers)} layers")
        for layer, op in zip(self.layers, arch.ops):
            parse_op(op)
            if op not in layer.candidates:
                raise ArchError(f"layer {layer.index}: op {op!r} is not a candidate ({', '.join(layer.candidates)})")
        if arch.channels is not None:
            if len(arch.channels) != len(self.stages):
                raise ArchError(f"arch has {len(arch.channels)} stage channels; space has {len(self.stages)} stages")
            for stage, c in zip(self.stages, arch.channels):
                if c not in stage.channel_options:
                    raise ArchError(f"stage {stage.index}: {c} channels is not an option {stage.channel_options}")
        if arch.resolution is not None:
            allowed = self.resolution_options or [self.resolution]
            if arch.resolution not in allowed:
                raise ArchError(f"resolution {arch.resolution} is not an option {allowed}")
        return arch

    def make_arch(self, ops, channels=None, resolution=None) -> Arch:
        return self.validate(Arch(self.name, tuple(ops), tuple(channels) if channels is not None else None,
                                  resolution))

    def _normalise(self, arch: Arch) -> Arch:
        """Fill omitted channel / resolution choices with the space defaults (largest)."""
        channels = arch.channels or (tuple(s.channel_options[-1] for s in self.stages)
                                     if self.searches_channels else None)
        resolution = arch.resolution or (self.resolution_options[-1] if self.searches_resolution else None)
        return Arch(arch.space, arch.ops, channels, resolution)

    def sample(self, rng: np.random.Generator) -> Arch:
        ops = [layer.candidates[rng.integers(len(layer.candidates))] for layer in self.layers]
        channels = [s.channel_options[rng.integers(len(s.channel_options))] for s in self.stages] \
            if self.searches_channels else None
        resolution = int(self.resolution_options[rng.integers(len(self.resolution_options))]) \
            if self.searches_resolution else None
        return Arch(self.name, tuple(ops), tuple(int(c) for c in channels) if channels else None, resolution)

    def mutate(self, arch: Arch, rng: np.random.Generator, prob: float = 0.1) -> Arch:
        """Resample each decision with probability ``prob`` (at least one decision changes when possible)."""
        fresh = self.sample(rng)
        a = self._normalise(arch)
        genes_a, genes_f = self._genes(a), self._genes(fresh)
        mask = rng.random(len(genes_a)) < prob
        if not mask.any():
            mask[rng.integers(len(genes_a))] = True
        return self._from_genes([f if m else g for g, f, m in zip(genes_a, genes_f, mask)])

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        ga, gb = self._genes(self._normalise(a)), self._genes(self._normalise(b))
        pick = rng.random(len(ga)) < 0.5
        return self._from_genes([x if p else y for x, y, p in zip(ga, gb, pick)])

    def _genes(self, arch: Arch) -> list:
        return list(arch.ops) + list(arch.channels or []) + ([arch.resolution] if arch.resolution else [])

    def _from_genes(self, genes: list) -> Arch:
        n = len(self.layers)
        ops = tuple(genes[:n])
        channels = tuple(int(c) for c in genes[n:n + len(self.stages)]) if self.searches_channels else None
        resolution = int(genes[-1]) if self.searches_resolution else None
        return Arch(self.name, ops, channels, resolution)

    def fixed_arch(self) -> Arch:
        """The single arch of a fixed model, or the largest arch of a searchable space."""
        biggest = [max(layer.candidates, key=_op_size) for layer in self.layers]
        return self._normalise(Arch(self.name, tuple(biggest)))

    def encode(self, arch: Arch) -> np.ndarray:
        """Feature vector for predictors: one-hot op per searchable layer, scaled channel/resolution indices."""
        arch = self._normalise(arch)
        feats: list[float] = []
        for layer, op in zip(self.layers, arch.ops):
            if len(layer.candidates) > 1:
                feats.extend(1.0 if op == c else 0.0 for c in layer.candidates)
        if self.searches_channels:
            for stage, c in zip(self.stages, arch.channels):
                n = len(stage.channel_options)
                feats.append(stage.channel_options.index(c) / max(n - 1, 1))
        if self.searches_resolution:
            n = len(self.resolution_options)
            feats.append(self.resolution_options.index(arch.resolution) / max(n - 1, 1))
        return np.asarray(feats, dtype=np.float32)

    # ---- resolving -----------------------------------------------------------------------------------------
    def resolve(self, arch: Arch) -> list[BlockSpec]:
        """The concrete blocks of ``arch``: stem, one per layer, head, classifier."""
        return resolve_blocks(self, self._normalise(self.validate(arch)))

    def block_positions(self, channel_options: list[list[int]] | None = None,
                        resolutions: list[int] | None = None) -> list[BlockPosition]:
        """Every block position of the space's models, with the decisions each depends on (``nas.positions``)."""
        return block_positions(self, channel_options, resolutions)


def _op_size(op: str) -> tuple:
    s = parse_op(op)
    return (s.kind != "skip", s.expansion, s.kernel, -s.groups)


# ---- loading ---------------------------------------------------------------------------------------------------
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


def load_space(name_or_path: str, *, resolution: int | None = None, width_multiplier: float | None = None,
               classes: int | None = None, in_channels: int | None = None) -> Space:
    """Load and validate a space, applying the user's input resolution, width multiplier and class count."""
    spec, path = load_space_spec(name_or_path)
    for label, value in (("resolution", resolution), ("width multiplier", width_multiplier),
                         ("classes", classes), ("input channels", in_channels)):
        if value is not None and value <= 0:
            raise SpaceError(f"{label} must be positive, got {value}")
    space = Space(spec, resolution or spec.resolution, width_multiplier or spec.width_multiplier,
                  classes or spec.classes, in_channels or spec.in_channels)
    if space.resolution < 8:
        raise SpaceError(f"resolution {space.resolution} is too small (at least 8)")
    mults = sorted(set(spec.channel_options or [1.0]))
    if spec.blocks is not None:  # fixed model: each row is its own stage
        rows = [(b[1], b[3], b[2], [b[0]]) for b in spec.blocks]
    else:
        rows = [(s.channels, s.repeat, s.stride, s.candidates or spec.candidates) for s in spec.stages]
    for si, (channels, repeat, stride, candidates) in enumerate(rows):
        options = sorted({space._scale(channels * m) for m in mults})
        stage = StageSlot(si, [], options)
        for r in range(repeat):
            idx = len(space.layers)
            space.layers.append(LayerSlot(idx, si, stride if r == 0 else 1, list(candidates)))
            stage.layers.append(idx)
        space.stages.append(stage)
    if spec.resolution_options:
        scale = space.resolution / spec.resolution
        space.resolution_options = sorted({max(8, round(r * scale)) for r in spec.resolution_options})
    return space


def load_arch(text_or_path: str) -> tuple[Arch, dict]:
    """Read an arch JSON file; returns the arch and any ``space_args`` stored beside it."""
    p = Path(text_or_path)
    if not p.is_file():
        raise ArchError(f"arch file not found: {p}")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # not JSON, or not text at all
        raise ArchError(f"{p}: invalid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ArchError(f"{p}: an arch must be a JSON object")
    space_args = d.get("space_args") or {}
    numbers = isinstance(space_args, dict) and all(v is None or type(v) in (int, float) for v in space_args.values())
    if not numbers or not set(space_args) <= {"resolution", "width_multiplier", "classes", "in_channels"}:
        raise ArchError(f"{p}: 'space_args' must map resolution, width_multiplier, classes, in_channels to numbers")
    return Arch.from_dict(d, str(p)), space_args


def resolve_model_ref(ref: str, **space_args) -> tuple[Space, Arch]:
    """Turn ``NAME`` (a fixed model or a space, largest arch) or ``ARCH.json`` into (space, arch).

    Explicit ``space_args`` (not None) override those stored in the arch file.
    """
    given = {k: v for k, v in space_args.items() if v is not None}
    if ref.endswith(".json"):
        arch, stored = load_arch(ref)
        space = load_space(arch.space, **{**stored, **given})
        return space, space.validate(arch)
    try:
        space = load_space(ref, **given)
    except SpaceError as e:
        raise HwnasError(str(e)) from None
    return space, space.fixed_arch()


def arch_document(space: Space, arch: Arch) -> dict:
    """The JSON document written for an arch: the decisions plus the space arguments it was built with."""
    return {**space._normalise(arch).to_dict(), "space_args": space.space_args()}
