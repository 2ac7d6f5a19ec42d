"""The op registry: one registration per op family tells every part of hwnas what it needs to know about an op.

In the style of mobile-vision's ``PRIMITIVES`` (``blocks_factory.py``), an op family is registered once, by a name
pattern, and that one ``register_op`` call gives

- its builder: ``build(spec, key, **options) -> nn.Module`` (the model builder, the profiler, DMasking children),
  a callable or a ``"package.module:function"`` reference, imported on the first build;
- its profiling input shapes: ``input_shapes(spec, key, **options)``, batch 1 included (what the profiler times);
- its key features: ``cost(spec, key) -> {"macs", "params", "traffic"[, "dw_macs", "pw_macs"]}`` for the fallback
  regressor (``nas.latency.features``); without one the measured row's MACs/params and a shape guess are used;
- its latency family (``FAMILIES``), the group of the device correction (``nas.latency.correction``);
- whether a key of it is an identity (costs nothing, never measured) and its masked (DMasking) variant, if any.

A pattern is the op name with integer fields ``{K}`` (kernel, odd), ``{E}`` (expansion) and ``{G}`` (groups),
and optional parts in brackets: ``ir_k{K}_e{E}[_g{G}]`` matches ``ir_k3_e6`` and ``ir_k5_e1_g2``. The op's kind is
the pattern's first word when it has fields (``ir``), else the whole name (``pool_fc``). ``options`` are
settings that are not in the key (``dropout`` of a classifier, ``pool`` of an expert unit); a registration ignores
the ones it does not use.

The built-in families are declared in ``nas.arch.builtin_ops`` (the ``OP_LIBRARIES``, imported on the first lookup)
with their builders by reference, so that parsing a space or an arch imports no torch: the torch modules load on
the first build. An unknown name raises ``ArchError`` listing the known patterns.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from nas import import_reference
from nas.errors import ArchError

if TYPE_CHECKING:
    from torch import nn

    from nas.arch.opkey import OpKey

FAMILIES = ("conv", "token")  # conv: the FBNet block vocabulary; token: transformer units, single quantised layers
MASKED_PATHS = ("ir", "skip")  # DMasking: one shared-weight SuperIR for a layer's ir ops; the masked skip path
OP_LIBRARIES = ("nas.arch.builtin_ops",)  # modules that register ops, imported on the first lookup
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")  # "package.module:function"
_PLACEHOLDERS = {"K": "kernel", "E": "expansion", "G": "groups"}

Shapes = tuple[tuple[int, ...], ...]


def image_input_shapes(spec: "OpSpec", key: "OpKey", **options) -> Shapes:
    """One image input at the key's channels and resolution: ``((1, c_in, r, r),)``."""
    return ((1, key.c_in, key.resolution, key.resolution),)


@dataclass(frozen=True)
class OpDef:
    """One registered op family (see the module docstring for each field)."""

    pattern: str
    family: str
    build: Callable[..., "nn.Module"] | str  # the builder, or "package.module:function" (see ``builder``)
    input_shapes: Callable[..., Shapes] = image_input_shapes
    cost: Callable[["OpSpec", "OpKey"], dict] | None = None
    identity: Callable[["OpSpec", "OpKey"], bool] | None = None
    masked: str | None = None
    kind: str = field(init=False)
    regex: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        kind = self.pattern.split("_")[0] if "{" in self.pattern else self.pattern  # "ir_k{K}_e{E}" -> "ir"
        text = re.escape(self.pattern).replace(r"\[", "(?:").replace(r"\]", ")?")
        text = re.sub(r"\\\{([KEG])\\\}", lambda m: f"(?P<{m.group(1)}>\\d+)", text)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "regex", re.compile(f"^{text}$"))

    def builder(self) -> Callable[..., "nn.Module"]:
        """The builder; a reference is imported on the first call (loading the module that defines it)."""
        return _import_builder(self.build) if isinstance(self.build, str) else self.build


@dataclass(frozen=True)
class OpSpec:
    """An op name parsed by its registered family: its kind and the kernel, expansion and groups it names."""

    name: str
    kind: str
    kernel: int = 1
    expansion: int = 1
    groups: int = 1
    definition: OpDef | None = field(default=None, compare=False, repr=False)

    @property
    def family(self) -> str:
        return self.definition.family

    @property
    def masked(self) -> str | None:
        return self.definition.masked

    def build(self, key: "OpKey", **options) -> "nn.Module":
        return self.definition.builder()(self, key, **options)

    def input_shapes(self, key: "OpKey", **options) -> Shapes:
        return self.definition.input_shapes(self, key, **options)

    def cost(self, key: "OpKey") -> dict | None:
        """Analytic MACs, params and bytes moved at batch 1, or None where the family has no formula."""
        return self.definition.cost(self, key) if self.definition.cost else None

    def is_identity(self, key: "OpKey") -> bool:
        return bool(self.definition.identity and self.definition.identity(self, key))


OPS: dict[str, OpDef] = {}  # pattern -> definition, in registration order
_parsed: dict[str, OpSpec] = {}
_libraries_loaded = False


def register_op(pattern: str, *, family: str, build: Callable[..., "nn.Module"] | str,
                input_shapes: Callable[..., Shapes] = image_input_shapes,
                cost: Callable[[OpSpec, "OpKey"], dict] | None = None,
                identity: Callable[[OpSpec, "OpKey"], bool] | None = None, masked: str | None = None) -> OpDef:
    """Register an op family by its name pattern; ValueError for a taken pattern, an unknown family or a builder
    that is neither callable nor a ``"package.module:function"`` reference."""
    if pattern in OPS:
        raise ValueError(f"op pattern {pattern!r} is already registered")
    if family not in FAMILIES:
        raise ValueError(f"op {pattern!r}: latency family must be one of {', '.join(FAMILIES)}, not {family!r}")
    if masked is not None and masked not in MASKED_PATHS:
        raise ValueError(f"op {pattern!r}: masked path must be one of {', '.join(MASKED_PATHS)}, not {masked!r}")
    if not (callable(build) or isinstance(build, str) and _REFERENCE.match(build)):
        raise ValueError(f"op {pattern!r}: build must be a callable or 'package.module:function', not {build!r}")
    definition = OpDef(pattern, family, build, input_shapes, cost, identity, masked)
    OPS[pattern] = definition
    _parsed.clear()
    return definition


def unregister_op(pattern: str) -> None:
    """Remove a registration (tests that register an op of their own)."""
    OPS.pop(pattern)
    _parsed.clear()


@functools.cache
def _import_builder(reference: str) -> Callable[..., "nn.Module"]:
    return import_reference(reference)


def _load_libraries() -> None:
    global _libraries_loaded
    if not _libraries_loaded:
        _libraries_loaded = True
        for module in OP_LIBRARIES:
            importlib.import_module(module)


def known_ops() -> list[str]:
    """Every registered pattern."""
    _load_libraries()
    return list(OPS)


def parse_op(name: str) -> OpSpec:
    """The op ``name`` parsed by the one family whose pattern matches it; ArchError listing the known ones."""
    if name in _parsed:
        return _parsed[name]
    _load_libraries()
    matches = [(d, m) for d in OPS.values() if (m := d.regex.match(name))]
    if not matches:
        raise ArchError(f"unknown op {name!r} (known: {', '.join(OPS)})")
    if len(matches) > 1:
        raise ValueError(f"op {name!r} matches patterns {', '.join(d.pattern for d, _ in matches)}")
    definition, m = matches[0]
    args = {_PLACEHOLDERS[k]: int(v) for k, v in m.groupdict().items() if v is not None}
    if args.get("kernel", 1) % 2 == 0 or args.get("expansion", 1) < 1 or args.get("groups", 1) < 1:
        raise ArchError(f"unknown op {name!r}: kernel must be odd, expansion and groups >= 1")
    spec = OpSpec(name, definition.kind, definition=definition, **args)
    _parsed[name] = spec
    return spec
