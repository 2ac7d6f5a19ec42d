"""The architecture distribution of a differentiable search: one logit vector per decision.

Decisions are the op of every layer, the channel count of every stage (all layers of a stage share it, as in the
space) and the input resolution. A decision the search does not make (one candidate, or channels / resolution not
searched) has a single option, so every search sees the same three lists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nas.arch.space import Arch, Space
from nas.search.gumbel import DecisionSample, gumbel_perturb, one_hot_decision, sample_decision


@dataclass
class ArchSample:
    """Weights (and which candidates run) for every decision of one forward pass."""

    ops: list[DecisionSample]
    channels: list[DecisionSample]
    resolution: DecisionSample


@dataclass
class ArchProbs:
    ops: list[torch.Tensor]
    channels: list[torch.Tensor]
    resolution: torch.Tensor


class ArchDistribution(nn.Module):
    """Logits of every decision; ``probs``, Gumbel ``sample``, ``argmax_arch`` and the history columns."""

    def __init__(self, space: Space, search_channels: bool = True, search_resolution: bool = True):
        super().__init__()
        self.space = space
        self.op_options = [list(layer.candidates) for layer in space.layers]
        self.channels_searched = search_channels and space.searches_channels
        self.resolution_searched = search_resolution and space.searches_resolution
        self.channel_options = [list(s.channel_options) if self.channels_searched else [s.channel_options[-1]]
                                for s in space.stages]
        self.resolution_options = list(space.resolution_options) if self.resolution_searched else \
            [space.resolution_options[-1] if space.searches_resolution else space.resolution]
        sizes = [len(o) for o in (*self.op_options, *self.channel_options, self.resolution_options)]
        self.sizes = sizes
        self.n_ops, self.n_stages = len(self.op_options), len(self.channel_options)
        # one padded logit matrix (decision x option) so that a sample is a handful of tensor ops
        self.logits = nn.Parameter(torch.zeros(len(sizes), max(sizes)))
        invalid = torch.arange(max(sizes))[None, :] >= torch.tensor(sizes)[:, None]
        self.register_buffer("padding", torch.where(invalid, float("-inf"), 0.0), persistent=False)

    def rows(self, matrix: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Split a (decision x option) matrix into the op, channel and resolution vectors."""
        vectors = [matrix[d, :k] for d, k in enumerate(self.sizes)]
        return vectors[:self.n_ops], vectors[self.n_ops:self.n_ops + self.n_stages], vectors[-1]

    def logit_vectors(self) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        return self.rows(self.logits)

    # ---- probabilities and samples ---------------------------------------------------------------------------
    def probs(self) -> ArchProbs:
        return ArchProbs(*self.rows(torch.softmax(self.logits + self.padding, -1)))

    def sample(self, tau: float, op_paths: int | None = None, channel_paths: int | None = None,
               resolution_paths: int | None = None) -> ArchSample:
        """Gumbel sample of every decision. ``*_paths``: None = soft weights (every option contributes);
        1 = hard straight-through (one option runs); k = the top-k perturbed options, renormalised."""
        paths = [op_paths] * self.n_ops + [channel_paths] * self.n_stages + [resolution_paths]
        if any((p or 1) > 1 for p in paths):  # top-k paths: one decision at a time
            ops, channels, res = self.logit_vectors()
            return ArchSample([sample_decision(t, tau, op_paths) for t in ops],
                              [sample_decision(t, tau, channel_paths) for t in channels],
                              sample_decision(res, tau, resolution_paths))
        perturbed = gumbel_perturb(self.logits + self.padding)
        soft = torch.softmax(perturbed / tau, -1)
        index = perturbed.detach().argmax(-1)
        run_one = torch.tensor([p == 1 or k == 1 for p, k in zip(paths, self.sizes)], device=self.logits.device)
        hard = torch.zeros_like(soft).scatter_(1, index[:, None], 1.0)
        weights = torch.where(run_one[:, None], hard - soft.detach() + soft, soft)
        picked, one = index.tolist(), run_one.tolist()
        ops, channels, res = self.rows(weights)
        decisions = [DecisionSample(w, [picked[d]] if one[d] else None) for d, w in enumerate([*ops, *channels, res])]
        return ArchSample(decisions[:self.n_ops], decisions[self.n_ops:self.n_ops + self.n_stages], decisions[-1])

    def one_hot(self, arch: Arch) -> ArchSample:
        """The sample that selects exactly ``arch`` (hard weights, one path)."""
        ops, channels, res = self.indices(arch)
        return ArchSample([one_hot_decision(len(o), i) for o, i in zip(self.op_options, ops)],
                          [one_hot_decision(len(o), i) for o, i in zip(self.channel_options, channels)],
                          one_hot_decision(len(self.resolution_options), res))

    # ---- archs ------------------------------------------------------------------------------------------------
    def indices(self, arch: Arch) -> tuple[list[int], list[int], int]:
        arch = self.space._normalise(self.space.validate(arch))
        ops = [o.index(op) for o, op in zip(self.op_options, arch.ops)]
        chosen = arch.channels or [s.channel_options[-1] for s in self.space.stages]
        try:
            channels = [o.index(c) for o, c in zip(self.channel_options, chosen)]
            res = self.resolution_options.index(arch.resolution or self.space.resolution)
        except ValueError:
            raise ValueError(f"arch {arch.to_dict()} makes a choice this search does not make") from None
        return ops, channels, res

    def arch_from_indices(self, ops, channels, res) -> Arch:
        space = self.space
        chosen = [o[i] for o, i in zip(self.channel_options, channels)] if space.searches_channels else None
        resolution = self.resolution_options[res] if space.searches_resolution else None
        return space.make_arch([o[i] for o, i in zip(self.op_options, ops)], chosen, resolution)

    def argmax_indices(self) -> tuple[list[int], list[int], int]:
        with torch.no_grad():
            index = (self.logits + self.padding).argmax(-1).tolist()
        return index[:self.n_ops], index[self.n_ops:self.n_ops + self.n_stages], index[-1]

    def argmax_arch(self) -> Arch:
        return self.arch_from_indices(*self.argmax_indices())

    def log_probs(self) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
        with torch.no_grad():
            lp = torch.log_softmax(self.logits + self.padding, -1).cpu().numpy().astype(np.float64)
        ops, channels, res = self.rows(lp)
        return list(ops), list(channels), res

    def relative_entropy(self) -> torch.Tensor:
        """Mean over the decisions with more than one option of entropy / log(options): 1 for uniform choices, 0 for
        decided ones; differentiable in the logits."""
        lp = torch.log_softmax(self.logits + self.padding, -1)
        ent = -(lp.exp() * lp.nan_to_num(neginf=0.0)).sum(-1)
        sizes = torch.tensor(self.sizes, device=ent.device, dtype=ent.dtype)
        many = sizes > 1
        return (ent[many] / sizes[many].log()).mean() if bool(many.any()) else ent.sum() * 0

    def entropy(self) -> float:
        """Mean entropy (nats) over the decisions with more than one option."""
        with torch.no_grad():
            lp = torch.log_softmax(self.logits + self.padding, -1)
            ent = -(lp.exp() * lp.nan_to_num(neginf=0.0)).sum(-1)
        many = torch.tensor([k > 1 for k in self.sizes], device=ent.device)
        return float(ent[many].mean()) if bool(many.any()) else 0.0

    def decidedness(self) -> dict[str, dict]:
        """How decided the distribution is, per kind of decision (``ops``, ``channels``, ``resolution``; kinds with
        no decision of several options are left out): the mean entropy of a decision in nats against a uniform
        choice's (``log k`` for ``k`` options, averaged), and the argmax's probability (mean, lowest, and the share of
        decisions where it holds more than half), beside a uniform choice's ``1 / k``. A winner whose decisions sit
        near the uniform figures is little more than a random pick under the latency loss."""
        with torch.no_grad():
            p = self.probs()
        out = {}
        for kind, vectors in (("ops", p.ops), ("channels", p.channels), ("resolution", [p.resolution])):
            many = [v.double().cpu() for v in vectors if len(v) > 1]
            if not many:
                continue
            entropy = [float(-(v * v.clamp_min(1e-300).log()).sum()) for v in many]
            top = [float(v.max()) for v in many]
            out[kind] = {"decisions": len(many), "mean_entropy_nats": float(np.mean(entropy)),
                         "uniform_entropy_nats": float(np.mean([math.log(len(v)) for v in many])),
                         "mean_argmax_probability": float(np.mean(top)), "min_argmax_probability": min(top),
                         "uniform_argmax_probability": float(np.mean([1.0 / len(v) for v in many])),
                         "share_over_half": float(np.mean([t > 0.5 for t in top]))}
        return out

    # ---- history ----------------------------------------------------------------------------------------------
    def probability_row(self) -> dict[str, float]:
        """``p_L{layer}_{op}``, ``p_S{stage}_c{channels}``, ``p_res{r}`` for every decision with options, and per
        kind of decision the mean entropy (``entropy_{kind}``) and argmax probability (``argmax_p_{kind}``)."""
        with torch.no_grad():
            p = self.probs()
        row: dict[str, float] = {}
        for kind, figures in self.decidedness().items():
            row[f"entropy_{kind}"] = figures["mean_entropy_nats"]
            row[f"argmax_p_{kind}"] = figures["mean_argmax_probability"]
        for layer, (options, probs) in enumerate(zip(self.op_options, p.ops)):
            if len(options) > 1:
                row.update({f"p_L{layer}_{op}": float(v) for op, v in zip(options, probs)})
        for stage, (options, probs) in enumerate(zip(self.channel_options, p.channels)):
            if len(options) > 1:
                row.update({f"p_S{stage}_c{c}": float(v) for c, v in zip(options, probs)})
        if len(self.resolution_options) > 1:
            row.update({f"p_res{r}": float(v) for r, v in zip(self.resolution_options, p.resolution)})
        return row
