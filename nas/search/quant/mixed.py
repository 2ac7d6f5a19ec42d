"""The bit-width supernet (Wu et al. 2018, arXiv 1812.00090): every conv and linear layer chooses (weight bits,
activation bits) through a Gumbel-softmax over fake-quantized branches that share one weight tensor.

A branch is ``layer(Qa(x), Qw(W))`` plus what the exported int8 layer adds: its bias (BatchNorm folded in) rounded
to int32 on the scale ``input scale x weight scale``, and activation grids held in uint8 (``nas.search.quant.fake``), so
the model the search ranks and fine-tunes computes what ONNX Runtime computes. A fixed assignment in evaluation
runs its int8 layers in ONNX Runtime's integer arithmetic (``nas.search.quant.integer``): the accuracy reported for the
torch model is the shipped model's, rounding for rounding. Branches with the same activation bits are linear in
the weight, so they run as one conv with the probability-weighted sum of their quantized weights: a layer costs
one conv per distinct activation precision, not one per option.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nas.errors import SearchError
from nas.models.conv import conv2d
from nas.search.gumbel import soft_weights
from nas.search.quant.fake import (
    FLOAT_BITS,
    RangeObserver,
    activation_qparams,
    fake_quantize_activation,
    fake_quantize_weight,
    int32_bias_error,
    weight_scale,
)
from nas.search.quant.integer import folded_batchnorm, integer_output

STORED_BITS = 8  # ONNX Runtime holds every integer grid in (u)int8

QUANTIZABLE = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True, order=True)
class BitOption:
    """One precision choice of a layer. ``(32, 32)`` is float; otherwise both are integer bit-widths <= 8."""

    w_bits: int
    a_bits: int

    @property
    def is_float(self) -> bool:
        return self.w_bits >= FLOAT_BITS

    @property
    def runs_int8(self) -> bool:
        """ONNX Runtime executes this option as int8 (sub-8-bit grids are stored and run as int8)."""
        return not self.is_float

    @property
    def label(self) -> str:
        return "fp32" if self.is_float else f"w{self.w_bits}a{self.a_bits}"

    @classmethod
    def parse(cls, text: str) -> "BitOption":
        text = text.strip().lower()
        if text in ("fp32", "32", "w32a32"):
            return cls(FLOAT_BITS, FLOAT_BITS)
        try:
            w, a = text.removeprefix("w").split("a")
            return cls(int(w), int(a))
        except ValueError:
            raise SearchError(f"bit option {text!r}: use fp32 or wXaY (e.g. w4a8)") from None


def bit_options(weight_bits: list[int], act_bits: list[int]) -> list[BitOption]:
    """All (w, a) pairs of the given integer bit-widths, plus fp32 when 32 is among the weight bits.

    Float weights with integer activations (or the reverse) are not offered: ONNX Runtime has no such layer.
    """
    for label, values in (("weight", weight_bits), ("activation", act_bits)):
        bad = [b for b in values if b != FLOAT_BITS and not 2 <= b <= 8]
        if bad:
            raise SearchError(f"{label} bits {bad}: each must be 32 (float) or between 2 and 8")
    ints_w = sorted({b for b in weight_bits if b != FLOAT_BITS})
    ints_a = sorted({b for b in act_bits if b != FLOAT_BITS})
    options = [BitOption(w, a) for w in ints_w for a in ints_a]
    if FLOAT_BITS in weight_bits or FLOAT_BITS in act_bits:
        options.append(BitOption(FLOAT_BITS, FLOAT_BITS))
    if ints_w and not ints_a:
        raise SearchError("integer weight bits need integer activation bits too (e.g. --act-bits 8,32)")
    if len(options) < 1:
        raise SearchError("no bit options")
    return options


class MixedPrecisionLayer(nn.Module):
    """A conv or linear layer with a choice of precisions. Modes: search (Gumbel mixture), fixed option, float."""

    def __init__(self, layer: nn.Module, options: list[BitOption]):
        super().__init__()
        if not isinstance(layer, QUANTIZABLE):
            raise TypeError(f"not a quantizable layer: {type(layer).__name__}")
        self.layer = layer
        self.options = list(options)
        self.theta = nn.Parameter(torch.zeros(len(options)))
        self.observer = RangeObserver()
        self.out_observer = RangeObserver()  # the layer's output (after its BN / ReLU), see MixedPrecisionNet
        self.fixed: int | None = None  # index of the chosen option; None while searching
        self.in_bits: int | None = None  # fixed mode: the input tensor's bits (may be below the option's)
        self.out_bits: int | None = None  # fixed mode, int8 layers: the bits its output tensor is stored in
        self.float_mode = False  # float activations (calibration, like ONNX Runtime's float calibration model)
        self.tau = 1.0
        self.mixture: torch.Tensor | None = None  # Gumbel-softmax weights of the current step
        # The BatchNorm that ONNX export folds into this layer (set by MixedPrecisionNet); a list, so that it is not
        # registered as a second parent's submodule.
        self.folded_bn: list[nn.BatchNorm2d | nn.BatchNorm1d] = []

    def _run(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, w)
        return conv2d(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)

    def _bias(self, y: torch.Tensor) -> torch.Tensor:
        b = self.layer.bias
        if b is None:
            return y
        return y + (b if isinstance(self.layer, nn.Linear) else b.view(1, -1, 1, 1))

    def _branch_input(self, x: torch.Tensor, a_bits: int) -> torch.Tensor:
        lo, hi = self.observer.range()
        return fake_quantize_activation(x, lo, hi, a_bits, STORED_BITS)

    @torch.no_grad()
    def int32_bias_correction(self, option: BitOption, a_bits: int) -> torch.Tensor:
        """What the exported layer's int32 bias adds to this layer's output (per channel, before the BatchNorm).

        ONNX Runtime stores the folded bias ``s b + t`` on the scale ``input scale x |s| x weight scale`` per
        channel; the rounding error, mapped back through the BatchNorm, is ``error / s``.
        """
        if not option.runs_int8:
            return self.layer.weight.new_zeros(self.layer.weight.shape[0])
        s, t = folded_batchnorm(self.folded_bn[0] if self.folded_bn else None, self.layer.weight)
        b = self.layer.bias.detach() if self.layer.bias is not None else torch.zeros_like(s)
        in_scale = activation_qparams(*self.observer.range(), a_bits)[0]
        scale = in_scale * s.abs() * weight_scale(self.layer.weight, option.w_bits).flatten()
        err = int32_bias_error(s * b + t, scale)
        return torch.where(s != 0, err / torch.where(s != 0, s, torch.ones_like(s)), torch.zeros_like(err))

    def _shift(self, y: torch.Tensor, correction: torch.Tensor) -> torch.Tensor:
        return y + (correction if isinstance(self.layer, nn.Linear) else correction.view(1, -1, 1, 1))

    def sample_mixture(self) -> torch.Tensor:
        self.mixture = soft_weights(self.theta, self.tau)
        return self.mixture

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or self.observer.calibrating or not bool(self.observer.initialised):
            self.observer.observe(x)
        w = self.layer.weight
        if self.float_mode:  # float activations; weights on the chosen grid, as in the exported float graph
            w_bits = self.options[self.fixed].w_bits if self.fixed is not None else FLOAT_BITS
            return self._bias(self._run(x, fake_quantize_weight(w, w_bits)))
        if self.fixed is not None:
            opt = self.options[self.fixed]
            a_bits = self.in_bits if self.in_bits is not None else opt.a_bits
            if not self.training and opt.runs_int8 and self.out_bits is not None:  # evaluation: what ships
                return integer_output(self.layer, self.folded_bn[0] if self.folded_bn else None, x, opt.w_bits,
                                      self.observer.range(), a_bits, self.out_observer.range(), self.out_bits)
            y = self._bias(self._run(self._branch_input(x, a_bits), fake_quantize_weight(w, opt.w_bits)))
            return self._shift(y, self.int32_bias_correction(opt, a_bits))
        g = self.mixture if self.mixture is not None else F.softmax(self.theta, 0)
        out = 0
        for a_bits in sorted({o.a_bits for o in self.options}):
            wsum = sum(g[i] * fake_quantize_weight(w, o.w_bits) for i, o in enumerate(self.options)
                       if o.a_bits == a_bits)
            out = out + self._run(self._branch_input(x, a_bits), wsum)
        correction = sum(g[i].detach() * self.int32_bias_correction(o, o.a_bits) for i, o in enumerate(self.options))
        return self._shift(self._bias(out), correction)

    def quantize_output(self, y: torch.Tensor) -> torch.Tensor:
        """Observe the layer's output; in fixed int8 mode, store it on its grid as ONNX Runtime does."""
        if self.training or self.out_observer.calibrating or not bool(self.out_observer.initialised):
            self.out_observer.observe(y)
        if self.fixed is None or self.out_bits is None or self.float_mode:
            return y
        lo, hi = self.out_observer.range()
        return fake_quantize_activation(y, lo, hi, self.out_bits, STORED_BITS)

    def probabilities(self) -> torch.Tensor:
        return F.softmax(self.theta.detach(), 0)

    def rounded_weight(self, option: BitOption) -> torch.Tensor:
        """The weight on its ``option`` grid, as a plain tensor (what the exported model stores)."""
        with torch.no_grad():
            return fake_quantize_weight(self.layer.weight.detach().clone(), option.w_bits)


class MixedPrecisionNet(nn.Module):
    """Wraps every ``nn.Conv2d`` / ``nn.Linear`` of ``model`` in a MixedPrecisionLayer (in place), in forward order."""

    def __init__(self, model: nn.Module, options: list[BitOption]):
        super().__init__()
        order = forward_order(model)
        if not order:
            raise SearchError(f"{type(model).__name__} has no conv or linear layer to quantize")
        self.model = model
        self.input_shape = getattr(model, "input_shape", None)
        self.options = list(options)
        self.names = order
        self.taps = output_taps(model, order)
        for name, bn in zip(order, folded_batchnorms(model, order)):
            parent, _, attr = name.rpartition(".")
            owner = model.get_submodule(parent) if parent else model
            layer = MixedPrecisionLayer(getattr(owner, attr), options)
            layer.folded_bn = [bn] if bn is not None else []
            setattr(owner, attr, layer)
        self._hooks: list = []
        self._register_taps()

    def _register_taps(self) -> None:
        self._hooks = [self.model.get_submodule(tap).register_forward_hook(
            lambda mod, args, out, i=i: self.layers[i].quantize_output(out)) for i, tap in enumerate(self.taps)]

    def _remove_taps(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @property
    def layers(self) -> list[MixedPrecisionLayer]:
        return [self.model.get_submodule(n) for n in self.names]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and any(layer.fixed is None and not layer.float_mode for layer in self.layers):
            for layer in self.layers:
                layer.sample_mixture()
        else:
            for layer in self.layers:
                layer.mixture = None
        return self.model(x)

    # ---- parameters --------------------------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        return [layer.theta for layer in self.layers]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def set_temperature(self, tau: float) -> None:
        for layer in self.layers:
            layer.tau = tau

    def probabilities(self) -> list[torch.Tensor]:
        return [layer.probabilities() for layer in self.layers]

    # ---- assignments -------------------------------------------------------------------------------------------
    def argmax_assignment(self) -> list[BitOption]:
        return [layer.options[int(layer.theta.detach().argmax())] for layer in self.layers]

    def fix(self, assignment: list[BitOption] | None, in_bits: list[int | None] | None = None,
            out_bits: list[int | None] | None = None) -> None:
        """Run with one option per layer (``None``: back to searching).

        ``in_bits`` / ``out_bits`` (from ``nas.search.quant.graph.tensor_bits``) make the model quantize tensors as the
        exported ONNX model does: an int8 layer's output is stored on a grid, and a tensor shared by several layers
        takes the narrowest grid any int8 reader asks for.
        """
        if assignment is not None and len(assignment) != len(self.names):
            raise SearchError(f"assignment has {len(assignment)} layers; the model has {len(self.names)}")
        for i, layer in enumerate(self.layers):
            layer.in_bits = in_bits[i] if in_bits is not None and assignment is not None else None
            layer.out_bits = out_bits[i] if out_bits is not None and assignment is not None else None
            if assignment is None:
                layer.fixed = None
                continue
            if assignment[i] not in layer.options:
                raise SearchError(f"layer {self.names[i]}: {assignment[i].label} is not an option "
                                  f"({', '.join(o.label for o in layer.options)})")
            layer.fixed = layer.options.index(assignment[i])

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, batch_size: int = 64) -> None:
        """Set every activation range to the global min/max over ``x`` seen by the float model (as ONNX Runtime's
        MinMax calibration does), then return to the current assignment."""
        was_training = self.training
        self.eval()
        observers = [o for layer in self.layers for o in (layer.observer, layer.out_observer)]
        for layer in self.layers:
            layer.float_mode = True
        for o in observers:
            o.reset()
            o.calibrating = True
        try:
            for i in range(0, len(x), batch_size):
                self(x[i:i + batch_size])
        finally:
            for o in observers:
                o.calibrating = False
            for layer in self.layers:
                layer.float_mode = False
            self.train(was_training)

    def float_model(self, assignment: list[BitOption]) -> nn.Module:
        """A plain copy of the wrapped model whose weights sit on each layer's grid (float32 storage), for export."""
        for layer in self.layers:
            layer.mixture = None  # the last training step's Gumbel weights hold an autograd graph
        self._remove_taps()
        try:
            plain = copy.deepcopy(self.model)
        finally:
            self._register_taps()
        for name, layer, option in zip(self.names, self.layers, assignment):
            parent, _, attr = name.rpartition(".")
            owner = plain.get_submodule(parent) if parent else plain
            inner = copy.deepcopy(layer.layer)
            with torch.no_grad():
                inner.weight.copy_(layer.rounded_weight(option))
            setattr(owner, attr, inner)
        plain.eval()
        return plain


def _followers(model: nn.Module, name: str) -> list[tuple[str, nn.Module]]:
    """The modules after layer ``name`` in its parent ``nn.Sequential``, with their full names (none if the parent is
    not a Sequential)."""
    parent, _, attr = name.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    if not isinstance(owner, nn.Sequential):
        return []
    keys = list(owner._modules)
    return [(f"{parent}.{k}" if parent else k, owner._modules[k]) for k in keys[keys.index(attr) + 1:]]


def folded_batchnorms(model: nn.Module, names: list[str]) -> list[nn.Module | None]:
    """For each layer, the BatchNorm that directly follows it in its ``nn.Sequential`` (ONNX export folds it into
    the layer's weight and bias), or None."""
    found = []
    for name in names:
        after = _followers(model, name)[:1]
        found.append(after[0][1] if after and isinstance(after[0][1], (nn.BatchNorm2d, nn.BatchNorm1d)) else None)
    return found


def output_taps(model: nn.Module, names: list[str]) -> list[str]:
    """For each layer, the module whose output is the layer's output tensor in the exported graph: the last of the
    BatchNorm / ReLU modules that directly follow it in its ``nn.Sequential`` (BN folds into the conv on export),
    or the layer itself."""
    taps = []
    for name in names:
        tap = name
        for follower, module in _followers(model, name):
            if not isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU)):
                break
            tap = follower
        taps.append(tap)
    return taps


def forward_order(model: nn.Module) -> list[str]:
    """Names of the conv and linear modules of ``model`` in the order a forward pass calls them."""
    named = {id(m): n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)}
    shape = getattr(model, "input_shape", None)
    if shape is None or not named:
        return list(named.values())
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: order.append(named[id(mod)]))
             for m in model.modules() if id(m) in named]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    seen: list[str] = []
    for n in order:
        if n not in seen:
            seen.append(n)
    return seen
