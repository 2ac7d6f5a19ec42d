"""Op keys: the identity of one measured unit, and the primary key of a latency table.

A key holds the op name (the block vocabulary's name, or a transformer op such as ``attn``), its normalised
shape arguments, the input resolution or token count, and the precision. Its string form is stable:
``ir_k3_e6|cin=16|cout=24|s=2|r=112|t=0|b=32|x=``, and ``OpKey.parse`` inverts it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nas.arch.positions import BlockSpec

_FIELDS = (("c_in", "cin"), ("c_out", "cout"), ("stride", "s"), ("resolution", "r"), ("tokens", "t"),
           ("bits", "b"), ("extra", "x"))


@dataclass(frozen=True, order=True)
class OpKey:
    op: str
    c_in: int
    c_out: int
    stride: int = 1
    resolution: int = 0  # input height = width for image ops; 0 for token ops
    tokens: int = 0  # token count for transformer ops; 0 for image ops
    bits: int = 32  # 32 = fp32, 8 = int8
    extra: str = ""  # other normalised args, "k=v;k=v" sorted (e.g. "dim=64;heads=4")

    def __str__(self) -> str:
        return "|".join([self.op] + [f"{short}={getattr(self, name)}" for name, short in _FIELDS])

    @classmethod
    def parse(cls, text: str) -> "OpKey":
        parts = text.split("|")
        if len(parts) != len(_FIELDS) + 1:
            raise ValueError(f"not an op key: {text!r}")
        values = {}
        for (name, short), part in zip(_FIELDS, parts[1:]):
            k, _, v = part.partition("=")
            if k != short:
                raise ValueError(f"not an op key: {text!r} (expected {short}=...)")
            values[name] = v if name == "extra" else int(v)
        return cls(parts[0], **values)

    @classmethod
    def from_block(cls, block: "BlockSpec", bits: int = 32) -> "OpKey":
        return cls(block.op, block.c_in, block.c_out, block.stride, block.resolution, 0, bits)

    def extra_args(self) -> dict[str, str]:
        """The ``extra`` string as a dict (``"dim=64;heads=4"`` -> ``{"dim": "64", "heads": "4"}``)."""
        return dict(part.split("=", 1) for part in self.extra.split(";") if "=" in part)

    def int_arg(self, name: str) -> int:
        """One integer of ``extra`` (``"heads=4"``: ``int_arg("heads") == 4``); KeyError when it is absent."""
        return int(self.extra_args()[name])

    def with_bits(self, bits: int) -> "OpKey":
        return OpKey(**{f.name: getattr(self, f.name) for f in fields(self)} | {"bits": bits})


def format_extra(**kwargs) -> str:
    """Normalised ``extra`` string: sorted ``k=v`` pairs joined by ``;``."""
    return ";".join(f"{k}={kwargs[k]}" for k in sorted(kwargs))
