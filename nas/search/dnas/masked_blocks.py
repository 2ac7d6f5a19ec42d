"""Masked, shared-weight versions of the block vocabulary for DMaskingNAS.

A searchable layer is one ``SuperLayer``: its ``ir_*`` candidates share one ``SuperIR`` built from the vocabulary's
own parts (``ConvBNReLU`` pw / dw / pwl, as in ``InvertedResidual``) at the layer's largest kernel, expansion and
input / output channels, and ``skip`` is its own path. Ops, channel options and resolution options are masks
(``nas.search.dnas.masks``). ``child_block`` copies the weights a choice uses into the vocabulary's block of that exact
shape, so that a child of the supernet is ``nas.models.builder.build_model(space, arch)``.

Grouped 1x1 convs (``_gG`` ops) run as one dense conv whose weight is masked block-diagonally for each
(input, output) channel option: the groups of a ``c``-channel option are its first ``c`` channels split evenly.
Why shared weights: separately initialised candidates sampled one per step (or mixed at low temperature) did not
train at all in a short search here, while the masked mixture of shared weights trains like one network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nas.arch.channels import mid_channels
from nas.arch.ops import OPS, parse_op
from nas.errors import SearchError
from nas.models.blocks import ConvBNReLU, PoolClassifier, make_block
from nas.models.conv import conv2d
from nas.search.dnas.masks import ResolutionState, batch_norm, channel_mask, prefix_masks
from nas.search.gumbel import DecisionSample


class LayerShape:
    """A layer's channel options: input (``in_options``), output (``out_options``); tied = input is output."""

    def __init__(self, in_options: list[int], out_options: list[int], tied: bool, stride: int,
                 level_in: int, level_out: int):
        self.in_options, self.out_options, self.tied = list(in_options), list(out_options), tied
        self.stride, self.level_in, self.level_out = stride, level_in, level_out

    def pair_weights(self, v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Joint weight of every (input option, output option) pair: (A, B)."""
        if self.tied:
            return torch.diag(u)
        return v[:, None] * u[None, :]

    def identity_pairs(self) -> torch.Tensor:
        """(A, B) 1 where that pair makes a shape-preserving block (stride 1, equal channels)."""
        if self.stride != 1:
            return torch.zeros(len(self.in_options), len(self.out_options))
        return (torch.tensor(self.in_options)[:, None] == torch.tensor(self.out_options)[None, :]).float()


def _conv(block: ConvBNReLU) -> nn.Conv2d:
    return block[0]


def _bn(block: ConvBNReLU, y: torch.Tensor, omega, scale: torch.Tensor | None) -> torch.Tensor:
    return batch_norm(y, block[1], omega, scale.reshape(-1) if scale is not None else None, relu=len(block) > 2)


def _run_conv(block: ConvBNReLU, x: torch.Tensor, res: ResolutionState | None, level_in: int,
              level_out: int) -> torch.Tensor:
    conv = _conv(block)
    if res is not None and (conv.kernel_size[0] > 1 or conv.stride[0] > 1):
        return res.spatial_conv(x, conv.weight, conv.bias, conv.stride[0], conv.padding[0], conv.groups,
                                level_in, level_out)
    return conv(x)


def _fit_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] > channels:
        return x[:, :channels]
    return F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1]))


@torch.no_grad()
def copy_conv_bn(src: ConvBNReLU, dst: ConvBNReLU, out_c: int, in_c: int | None = None,
                 weight: torch.Tensor | None = None) -> None:
    """Copy the first ``out_c`` output (and ``in_c`` input) channels of ``src`` into ``dst``."""
    s_conv, d_conv = _conv(src), _conv(dst)
    w = s_conv.weight if weight is None else weight
    d_conv.weight.copy_(w[:out_c] if in_c is None else w[:out_c, :in_c])
    s_bn, d_bn = src[1], dst[1]
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(d_bn, name).copy_(getattr(s_bn, name)[:out_c])
    d_bn.num_batches_tracked.copy_(s_bn.num_batches_tracked)


class SuperIR(nn.Module):
    """Every inverted-residual candidate of a layer as one block, built at the largest kernel, expansion and
    channels: op ``ir_kK_eE[_gG]`` is the centre ``K x K`` of the depthwise kernel, the first ``mid(E, c_in)``
    expanded channels (no expansion conv when ``E == 1``: the depthwise conv then reads the input itself), and a
    block-diagonal mask of the projection for ``G`` groups.

    ``forward_one`` runs one op on its slice of the weights (its own cost); ``forward_mix`` runs a Gumbel-weighted
    sum of the ops' masks in one pass (the largest op's cost). Channel options are masks either way.
    """

    def __init__(self, ops: list[str], shape: LayerShape):
        super().__init__()
        self.shape = shape
        self.specs = [parse_op(op) for op in ops]
        a_max, b_max = max(shape.in_options), max(shape.out_options)
        for spec in self.specs:
            if spec.groups > 1 and spec.expansion > 1:
                raise SearchError(f"op {spec.name}: shared-weight search supports grouped ops without expansion "
                                  f"only (e.g. ir_k3_e1_g2)")
            for c in (*shape.in_options, *shape.out_options):
                if c % spec.groups:
                    raise SearchError(f"op {spec.name}: {c} channels are not divisible into {spec.groups} groups")
        self.kernel = max(spec.kernel for spec in self.specs)
        mids = [[mid_channels(spec, a) for a in shape.in_options] for spec in self.specs]  # op x input option
        self.op_mid = [m[-1] for m in mids]  # at the largest input
        mid_max = max(max(m) for m in mids)
        self.pw = ConvBNReLU(a_max, mid_max, 1) if any(s.expansion > 1 for s in self.specs) else None
        self.dw = ConvBNReLU(mid_max, mid_max, self.kernel, shape.stride, groups=mid_max)
        self.pwl = ConvBNReLU(mid_max, b_max, 1, relu=False)
        if shape.stride == 1 and shape.tied:  # always residual: starts as the identity (see InvertedResidual)
            nn.init.zeros_(self.pwl[1].weight)
        k = self.kernel
        kernels = torch.zeros(len(ops), k, k)
        for o, spec in enumerate(self.specs):
            lo = (k - spec.kernel) // 2
            kernels[o, lo:lo + spec.kernel, lo:lo + spec.kernel] = 1.0
        self.register_buffer("kernel_masks", kernels.reshape(len(ops), k * k), persistent=False)
        mid_masks = torch.stack([prefix_masks(m, mid_max) for m in mids])  # op x input option x channel
        self.register_buffer("mid_masks", mid_masks, persistent=False)
        # input option x (op, channel): ``v @ mid_by_input`` gives every op's mid mask at once (one matmul)
        self.register_buffer("mid_by_input", mid_masks.permute(1, 0, 2).reshape(len(shape.in_options), -1),
                             persistent=False)
        expands = torch.tensor([float(s.expansion > 1) for s in self.specs])
        self.register_buffer("expands", expands, persistent=False)
        self.has_passthrough = bool((expands == 0).any())  # ops without expansion: the dw conv reads the input
        group_of = torch.tensor([s.groups for s in self.specs])
        self.register_buffer("dense_ops", (group_of == 1).float(), persistent=False)
        for g in {s.groups for s in self.specs if s.groups > 1}:
            self.register_buffer(f"ops_with_groups{g}", (group_of == g).float(), persistent=False)
        self.register_buffer("out_prefix", prefix_masks(shape.out_options), persistent=False)
        self.register_buffer("residual_pairs", shape.identity_pairs(), persistent=False)
        self.group_counts = sorted({s.groups for s in self.specs if s.groups > 1})
        for g in self.group_counts:  # group q of a c-channel option: channels [q c / g, (q + 1) c / g)
            outs, ins = _group_members(shape.out_options, g, b_max), _group_members(shape.in_options, g, mid_max)
            # laid out for matmuls: (b_max, g, B), (g * A, mid) and (B, g * b_max), (A, g * mid)
            self.register_buffer(f"out_groups{g}", outs.permute(2, 0, 1).contiguous(), persistent=False)
            self.register_buffer(f"in_groups{g}", ins.reshape(-1, mid_max), persistent=False)
            self.register_buffer(f"out_groups_by_option{g}", outs.permute(1, 0, 2).reshape(outs.shape[1], -1),
                                 persistent=False)
            self.register_buffer(f"in_groups_by_option{g}", ins.permute(1, 0, 2).reshape(ins.shape[1], -1),
                                 persistent=False)

    def _group_mask(self, g: int, v: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``sum over option pairs (a, b) of P(a, b) * block_diagonal(a, b)``, (b_max, mid_max), without
        materialising a mask per pair: a sum over groups of outer products of group memberships."""
        if self.shape.tied:  # sum over (q, a) of u[a] outs[q, a, o] ins[q, a, i]
            outs = getattr(self, f"out_groups{g}")  # (b_max, g, A)
            return (outs * u).reshape(outs.shape[0], -1) @ getattr(self, f"in_groups{g}")
        outs = (u @ getattr(self, f"out_groups_by_option{g}")).view(g, -1)  # (g, b_max)
        ins = (v @ getattr(self, f"in_groups_by_option{g}")).view(g, -1)  # (g, mid)
        return outs.t() @ ins

    def _residual(self, y, x, v, u, scale, extra=None):
        """Add the residual (shape-preserving option pairs), plus ``extra * x`` (a skip path folded in)."""
        sh = self.shape
        if sh.stride != 1:
            return y
        coef = None if sh.tied else (sh.pair_weights(v, u) * self.residual_pairs).sum()
        coef = coef if scale is None else (scale if coef is None else coef * scale)
        if extra is not None:
            coef = extra + (1.0 if coef is None else coef)
        x = _fit_channels(x, y.shape[1])
        return y + x if coef is None else torch.addcmul(y, x, coef.reshape(1, 1, 1, 1))

    def _omegas(self, res):
        sh = self.shape
        return (res.omega(sh.level_in), res.omega(sh.level_out)) if res is not None else (None, None)

    def forward_one(self, o: int, x: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
                    res: ResolutionState | None, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Op ``o`` alone, on its slice of the weights; ``scale`` (its Gumbel weight) multiplies the output."""
        spec, sh, m = self.specs[o], self.shape, self.op_mid[o]
        om_in, om_out = self._omegas(res)
        mid_mask = (v @ self.mid_masks[o])[:m]
        if spec.expansion > 1:
            conv = _conv(self.pw)
            y = F.conv2d(x, conv.weight[:m])
            y = batch_norm(y, self.pw[1], om_in, mid_mask, relu=True, channels=m)
        else:
            y = x
        conv, lo = _conv(self.dw), (self.kernel - spec.kernel) // 2
        weight = conv.weight[:m, :, lo:lo + spec.kernel, lo:lo + spec.kernel]
        y = _spatial(y, weight, sh.stride, spec.kernel // 2, m, res, sh.level_in, sh.level_out)
        y = batch_norm(y, self.dw[1], om_out, mid_mask, relu=True, channels=m)
        conv = _conv(self.pwl)
        weight = conv.weight[:, :m]
        if spec.groups > 1:
            weight = weight * self._group_mask(spec.groups, v, u)[:, :m, None, None]
        out_mask = channel_mask(u, self.out_prefix).reshape(-1)
        y = batch_norm(F.conv2d(y, weight), self.pwl[1], om_out,
                       out_mask if scale is None else out_mask * scale)
        return self._residual(y, x, v, u, scale)

    def forward_mix(self, q: torch.Tensor, x: torch.Tensor, v: torch.Tensor, u: torch.Tensor,
                    res: ResolutionState | None, scale: torch.Tensor | None = None,
                    identity_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The ops mixed by weights ``q`` (summing to 1) through their masks, in one pass of the largest op.

        ``identity_weight``: a skip candidate that is an identity here, added to the residual in the same pass.
        """
        sh = self.shape
        om_in, om_out = self._omegas(res)
        mid_max = self.dw[0].weight.shape[0]
        y = x
        mids = (v @ self.mid_by_input).view(len(q), mid_max)  # every op's mid-channel mask under v
        if self.pw is not None:
            expand_mask = (q * self.expands) @ mids
            y = batch_norm(_conv(self.pw)(x), self.pw[1], om_in, expand_mask, relu=True)
            if self.has_passthrough:  # ops without expansion feed the input itself to the depthwise conv
                y = torch.addcmul(y, _fit_channels(x, mid_max), (q * (1 - self.expands)).sum().reshape(1, 1, 1, 1))
        conv = _conv(self.dw)
        weight = conv.weight * (q @ self.kernel_masks).view(self.kernel, self.kernel)
        y = _spatial(y, weight, sh.stride, self.kernel // 2, mid_max, res, sh.level_in, sh.level_out)
        y = batch_norm(y, self.dw[1], om_out, q @ mids, relu=True)
        conv = _conv(self.pwl)
        weight = conv.weight
        if self.group_counts:  # dense ops see the whole projection, grouped ones its block diagonal
            mix = (q * self.dense_ops).sum()
            for g in self.group_counts:
                mix = mix + (q * getattr(self, f"ops_with_groups{g}")).sum() * self._group_mask(g, v, u)
            weight = weight * mix[:, :, None, None]
        out_mask = channel_mask(u, self.out_prefix).reshape(-1)
        y = batch_norm(F.conv2d(y, weight), self.pwl[1], om_out,
                       out_mask if scale is None else out_mask * scale)
        return self._residual(y, x, v, u, scale, identity_weight)

    def child_block(self, o: int, a: int, b: int) -> nn.Module:
        spec = self.specs[o]
        block = make_block(spec.name, a, b, self.shape.stride)
        mid = mid_channels(spec, a)
        if spec.expansion > 1:
            copy_conv_bn(self.pw, block.pw, mid, a)
        lo = (self.kernel - spec.kernel) // 2
        copy_conv_bn(self.dw, block.dw, mid, weight=_conv(self.dw).weight[:, :, lo:lo + spec.kernel,
                                                                          lo:lo + spec.kernel])
        if spec.groups > 1:
            g = spec.groups
            w = _conv(self.pwl).weight
            parts = [w[q * b // g:(q + 1) * b // g, q * a // g:(q + 1) * a // g] for q in range(g)]
            copy_conv_bn(self.pwl, block.pwl, b, weight=torch.cat(parts))
        else:
            copy_conv_bn(self.pwl, block.pwl, b, mid)
        return block


def _group_members(options: list[int], g: int, width: int) -> torch.Tensor:
    """(g, options, width): 1 where a channel belongs to group q of that option."""
    members = torch.zeros(g, len(options), width)
    for k, c in enumerate(options):
        for q in range(g):
            members[q, k, q * c // g:(q + 1) * c // g] = 1.0
    return members


def _spatial(x, weight, stride, padding, groups, res: ResolutionState | None, level_in, level_out):
    if res is not None and (weight.shape[-1] > 1 or stride > 1):
        return res.spatial_conv(x, weight, None, stride, padding, groups, level_in, level_out)
    return conv2d(x, weight, None, stride, padding, 1, groups)


class MaskedSkip(nn.Module):
    """``skip``: identity where the option pair keeps the shape, else a masked 1x1 ConvBNReLU (as in the vocabulary)."""

    def __init__(self, shape: LayerShape):
        super().__init__()
        self.shape = shape
        pairs = shape.identity_pairs()
        self.always_identity = bool(pairs.all()) and shape.tied
        self.conv = None if self.always_identity else ConvBNReLU(max(shape.in_options), max(shape.out_options), 1,
                                                                 shape.stride)
        self.register_buffer("identity_pairs", pairs, persistent=False)
        self.register_buffer("out_prefix", prefix_masks(shape.out_options), persistent=False)

    def forward(self, x: torch.Tensor, v: torch.Tensor, u: torch.Tensor, res: ResolutionState | None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        one = torch.ones((), dtype=x.dtype) if scale is None else scale.reshape(())
        if self.always_identity:
            return x if scale is None else x * one
        sh = self.shape
        rho = (sh.pair_weights(v, u) * self.identity_pairs).sum()
        if float(rho.detach()) == 1.0:  # a hard sample of a shape-preserving pair: the conv path has weight 0
            return _fit_channels(x, max(sh.out_options)) * (rho * one)
        om_out = res.omega(sh.level_out) if res is not None else None
        y = _bn(self.conv, _run_conv(self.conv, x, res, sh.level_in, sh.level_out), om_out,
                channel_mask(u, self.out_prefix) * ((1 - rho) * one))
        if float(rho.detach()) != 0.0:
            y = torch.addcmul(y, _fit_channels(x, max(sh.out_options)), (rho * one).reshape(1, 1, 1, 1))
        return y

    def child_block(self, a: int, b: int) -> nn.Module:
        block = make_block("skip", a, b, self.shape.stride)
        if isinstance(block, ConvBNReLU):
            copy_conv_bn(self.conv, block, b, a)
        return block


class SuperLayer(nn.Module):
    """A searchable layer: its ``ir_*`` candidates as one ``SuperIR`` and ``skip`` as its own path.

    With an op sample that runs one candidate (hard Gumbel), only that candidate's slice runs; with a soft sample
    (``active is None``) the IR candidates are mixed through their masks in one pass and the skip path is added
    with its weight.
    """

    def __init__(self, ops: list[str], shape: LayerShape):
        super().__init__()
        paths = [parse_op(op).masked for op in ops]  # the masked variant each op's registration names
        for op, path in zip(ops, paths):
            if path is None:
                masked = ", ".join(p for p, d in OPS.items() if d.masked)
                raise SearchError(f"op {op!r} has no masked variant, so it cannot be a searchable layer's candidate "
                                  f"here ({masked} can)")
        self.ops = list(ops)
        self.ir_index = [i for i, path in enumerate(paths) if path == "ir"]
        self.skip_index = paths.index("skip") if "skip" in paths else None
        self.ir = SuperIR([ops[i] for i in self.ir_index], shape) if self.ir_index else None
        self.skip = MaskedSkip(shape) if self.skip_index is not None else None

    def _one(self, i: int, x, v, u, res, scale):
        if i == self.skip_index:
            return self.skip(x, v, u, res, scale)
        return self.ir.forward_one(self.ir_index.index(i), x, v, u, res, scale)

    def forward(self, x: torch.Tensor, sample: DecisionSample, v: torch.Tensor, u: torch.Tensor,
                res: ResolutionState | None) -> torch.Tensor:
        w = sample.weights
        if sample.active is not None:
            out = None
            for i in sample.active:
                y = self._one(i, x, v, u, res, w[i])
                out = y if out is None else out + y
            return out
        if self.ir is None:
            return self.skip(x, v, u, res, w[self.skip_index])
        q = w[self.ir_index]
        total = q.sum()
        if self.skip is not None and self.skip.always_identity:  # fold the identity into the residual
            return self.ir.forward_mix(q / total.clamp_min(1e-12), x, v, u, res, total, w[self.skip_index])
        y = self.ir.forward_mix(q / total.clamp_min(1e-12), x, v, u, res, total)
        if self.skip is not None:
            y = y + self.skip(x, v, u, res, w[self.skip_index])
        return y

    def child_block(self, i: int, a: int, b: int) -> nn.Module:
        if i == self.skip_index:
            return self.skip.child_block(a, b)
        return self.ir.child_block(self.ir_index.index(i), a, b)


class MaskedStem(nn.Module):
    """The stem ConvBNReLU; under a resolution search it runs on every option's resized input."""

    def __init__(self, op: str, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.block = make_block(op, c_in, c_out, stride)
        if not isinstance(self.block, ConvBNReLU):
            raise SearchError(f"stem op {op!r}: DMasking needs a conv stem")

    def forward(self, x: torch.Tensor, res: ResolutionState | None) -> torch.Tensor:
        if res is None:
            return self.block(x)
        level = 1 if _conv(self.block).stride[0] > 1 else 0
        return _bn(self.block, res.stem(_conv(self.block), x, level), res.omega(level), None)


class MaskedHead(nn.Module):
    """The 1x1 head conv (input masked by the last stage's channels) and the pooling classifier."""

    def __init__(self, op: str, c_in_max: int, c_head: int, classes: int, dropout: float, level: int):
        super().__init__()
        self.head = make_block(op, c_in_max, c_head, 1)
        if not isinstance(self.head, ConvBNReLU) or _conv(self.head).kernel_size[0] != 1:
            raise SearchError(f"head op {op!r}: DMasking needs a 1x1 conv head")
        self.classifier = PoolClassifier(c_head, classes, dropout)
        self.level = level

    def forward(self, x: torch.Tensor, res: ResolutionState | None) -> torch.Tensor:
        if res is None:
            return self.classifier(self.head(x))
        omega = res.omega(self.level)
        y = _bn(self.head, _conv(self.head)(x), omega, None)
        pooled = (y * omega).sum((2, 3))
        return self.classifier.fc(self.classifier.dropout(pooled))
