"""Channel rounding: the MobileNet rule every space and block uses, and the channels inside an inverted residual."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nas.arch.ops import OpSpec


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor`` without dropping more than 10% (MobileNet rule)."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def mid_channels(spec: "OpSpec", c_in: int) -> int:
    """Channels inside an inverted-residual block (after expansion)."""
    return make_divisible(c_in * spec.expansion, 8) if spec.expansion > 1 else c_in
