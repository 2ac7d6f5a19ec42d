"""Search spaces as YAML data, and architectures as plain JSON-serialisable choices.

A space file declares a macro-architecture: a stem, stages of layers with candidate ops (or a fixed list of
mobile-vision style block rows ``[op, channels, stride, repeat]``), a head, and optional channel and
resolution options. ``load_space`` validates it and applies the user's resolution, width multiplier and
class count. ``Space.resolve(arch)`` turns an arch into the concrete list of blocks that both the model
builder and the latency model consume; ``Space.block_positions()`` is the chain of block positions that
everything costing an arch walks (``nas.arch.positions``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nas.arch.channels import make_divisible
from nas.arch.ops import parse_op
from nas.arch.positions import BlockPosition, BlockSpec
from nas.arch.spec import SpaceSpec, load_space_spec
from nas.errors import ArchError, HwnasError, SpaceError
from nas.files import json_digest


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

    def fingerprint(self) -> str:
        """A hash of everything that shapes the space's models and decisions (stem, each layer's stride and
        candidates, each stage's channel options, the resolution options, the head, the space arguments): a search
        resumes only in a space with the same one (a changed option list would otherwise load into padded logits
        and read back shifted choices)."""
        shape = {"stem": self.spec.stem, "head": self.spec.head,
                 "layers": [[layer.stage, layer.stride, layer.candidates] for layer in self.layers],
                 "channel_options": [stage.channel_options for stage in self.stages],
                 "resolution_options": self.resolution_options, **self.space_args()}
        return json_digest(shape)

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
        return self._resolve_blocks(self._normalise(self.validate(arch)))

    @property
    def input_resolutions(self) -> list[int]:
        """The input-resolution options (one, the space's own, when resolution is not searched)."""
        return list(self.resolution_options) if self.searches_resolution else [self.resolution]

    def block_positions(self, channel_options: list[list[int]] | None = None,
                        resolutions: list[int] | None = None) -> list[BlockPosition]:
        """The chain of the space's models: stem, one position per layer, head, classifier, with the decisions each
        depends on (``nas.arch.positions``).

        ``channel_options`` (per stage) and ``resolutions`` narrow the options (default: all of the space's)."""
        stage_options = [tuple(o) for o in (channel_options or [s.channel_options for s in self.stages])]
        res = list(resolutions or self.input_resolutions)
        stem_op, _, stem_stride = self.spec.stem
        positions = [BlockPosition("stem", -1, (stem_op,), (self.in_channels,), -1, (self.stem_channels,), -1,
                                   stem_stride, tuple(res))]
        res = [math.ceil(r / stem_stride) for r in res]
        prev_stage = -1
        for layer in self.layers:
            cin_options = (self.stem_channels,) if prev_stage < 0 else stage_options[prev_stage]
            positions.append(BlockPosition("layer", layer.index, tuple(layer.candidates), cin_options, prev_stage,
                                           stage_options[layer.stage], layer.stage, layer.stride, tuple(res)))
            res = [math.ceil(r / layer.stride) for r in res]
            prev_stage = layer.stage
        last = stage_options[prev_stage] if prev_stage >= 0 else (self.stem_channels,)
        positions.append(BlockPosition("head", -1, (self.spec.head[0],), last, prev_stage, (self.head_channels,), -1,
                                       1, tuple(res)))
        positions.append(BlockPosition("classifier", -1, ("pool_fc",), (self.head_channels,), -1, (self.classes,), -1,
                                       1, tuple(res)))
        return positions

    def _resolve_blocks(self, arch: Arch) -> list[BlockSpec]:
        """The concrete blocks of a (validated, normalised) ``arch``: stem, one per layer, head, classifier."""
        res = arch.resolution or self.resolution
        blocks = [BlockSpec("stem", self.spec.stem[0], self.in_channels, self.stem_channels, self.spec.stem[2], res)]
        c_in, res = self.stem_channels, blocks[0].out_resolution
        for layer, op in zip(self.layers, arch.ops):
            stage = self.stages[layer.stage]
            c_out = arch.channels[layer.stage] if arch.channels else stage.channel_options[-1]
            blocks.append(BlockSpec("layer", op, c_in, c_out, layer.stride, res, layer.index))
            c_in, res = c_out, blocks[-1].out_resolution
        blocks.append(BlockSpec("head", self.spec.head[0], c_in, self.head_channels, 1, res))
        blocks.append(BlockSpec("classifier", "pool_fc", self.head_channels, self.classes, 1, res))
        return blocks


def _op_size(op: str) -> tuple:
    s = parse_op(op)
    return (s.kind != "skip", s.expansion, s.kernel, -s.groups)


# ---- loading ---------------------------------------------------------------------------------------------------
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
