"""Fake quantization with a straight-through estimator (STE), matching ONNX Runtime's static int8 scheme.

- Weights: per output channel, symmetric, ``bits``-bit signed grid ``[-(2^(b-1)-1), 2^(b-1)-1] * scale`` with
  ``scale = max|w_c| / (2^(b-1)-1)`` (ONNX Runtime's symmetric per-channel int8 uses the same grid at b = 8).
- Activations: per tensor, asymmetric, ``bits``-bit unsigned grid over a range ``[lo, hi]`` that always holds 0,
  with ``scale = (hi - lo) / (2^b - 1)`` and an integer zero point (ONNX Runtime's uint8 scheme at b = 8).

Rounding passes gradients straight through; values clipped by the activation range get no gradient.
``bits >= 32`` means float: the tensor is returned unchanged.

What the exported model computes beyond these grids, and the fixed (shipped) layers emulate:
- a sub-8-bit activation grid is held in uint8, so values above the calibrated range saturate at 255, not 2^b - 1
  (``stored_bits=8``);
- a layer's bias (with its BatchNorm folded in) is stored as int32 on the scale ``input scale x weight scale``
  (``int32_bias_error``): coarse when the weight grid is coarse, so it is part of the model, not noise.
"""

from __future__ import annotations

import torch
from torch import nn

FLOAT_BITS = 32


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def weight_qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel symmetric scale, shaped to broadcast against ``w``."""
    dims = tuple(range(1, w.dim()))
    return w.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-8) / weight_qmax(bits)


def fake_quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Round ``w`` to its per-channel ``bits``-bit grid (STE)."""
    if bits >= FLOAT_BITS:
        return w
    if bits < 2:
        raise ValueError(f"weight bits must be at least 2, got {bits}")
    scale = weight_scale(w, bits)
    q = weight_qmax(bits)
    return torch.clamp(round_ste(w / scale), -q, q) * scale


def activation_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Scale and zero point of an asymmetric ``bits``-bit unsigned grid over ``[lo, hi]`` (range widened to hold 0).

    The same arithmetic as ``onnxruntime.quantization.quant_utils.compute_scale_zp`` for uint8.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    levels = 2 ** bits - 1
    scale = (hi - lo) / levels if hi > lo else 1.0
    zero_point = int(round(-lo / scale))
    return float(scale), max(0, min(levels, zero_point))


def fake_quantize_activation(x: torch.Tensor, lo: float, hi: float, bits: int,
                             stored_bits: int | None = None) -> torch.Tensor:
    """Quantize ``x`` per tensor to a ``bits``-bit unsigned grid over ``[lo, hi]`` and back (STE inside the range).

    ``stored_bits``: the integer type the grid is held in (8: ONNX Runtime's uint8), which sets where values above
    the range saturate; by default the grid's own ``bits``.
    """
    if bits >= FLOAT_BITS:
        return x
    scale, zero_point = activation_qparams(lo, hi, bits)
    levels = 2 ** max(bits, stored_bits or bits) - 1
    q = torch.clamp(round_ste(x / scale) + zero_point, 0, levels)
    return (q - zero_point) * scale


def int32_bias_error(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``round(bias / scale) * scale - bias``: what storing ``bias`` as int32 on per-channel ``scale`` adds
    (ONNX Runtime's ``quantize_bias_static_impl``, computed in float64). Zero where the scale is zero."""
    b, s = bias.detach().double(), scale.detach().double()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    err = torch.round(b / safe) * safe - b
    return torch.where(s > 0, err, torch.zeros_like(err)).to(bias.dtype)


class RangeObserver(nn.Module):
    """Per-tensor min/max of the activations a layer sees.

    In training it follows an exponential moving average of each batch's min and max. ``calibrating`` switches to
    the global min and max over every batch seen (what ONNX Runtime's MinMax calibration computes), for a
    calibration pass before evaluation and export.
    """

    def __init__(self, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.calibrating = False

    def reset(self) -> None:
        self.lo.zero_()
        self.hi.zero_()
        self.initialised.fill_(False)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().min(), x.detach().max()
        if not bool(self.initialised):
            self.lo.copy_(lo)
            self.hi.copy_(hi)
            self.initialised.fill_(True)
        elif self.calibrating:
            self.lo.copy_(torch.minimum(self.lo, lo))
            self.hi.copy_(torch.maximum(self.hi, hi))
        else:
            self.lo.lerp_(lo, self.momentum)
            self.hi.lerp_(hi, self.momentum)

    def range(self) -> tuple[float, float]:
        return float(self.lo), float(self.hi)
