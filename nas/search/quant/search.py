"""Bit-width DNAS (Wu et al. 2018): weights train on the train split, the per-layer choice logits on the
validation split, Gumbel-softmax temperature annealed, with the paper's ``CE * alpha * (log COST) ** beta`` in the
form the DNAS search uses (``nas.search.latency_loss``): ``CE * (1 + alpha * log(COST / COST_min)) ** beta``, where COST
is the expected cost under the choice probabilities and COST_min its lower bound, so ``alpha`` is the trade-off.

With a target, ``alpha`` is steered after every architecture step (``nas.search.latency_loss.TargetController``) so that
the expected cost approaches the target. If the final argmax assignment still misses it, layers are lowered one at a
time, each time the change that loses least log-probability per unit of cost saved, until it fits.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from nas.data.dataset import Dataset
from nas.data.splits import Split
from nas.errors import SearchError
from nas.search.gumbel import TemperatureSchedule
from nas.search.latency_loss import TargetController, latency_factor
from nas.search.quant.costs import Cost
from nas.search.quant.mixed import BitOption, MixedPrecisionNet
from nas.train.engine import Engine, OptimizerStep, StepLoss
from nas.train.evaluation import fit_input, split_accuracy

FP32_OPTION = BitOption(32, 32)


@dataclass
class SearchConfig:
    epochs: int = 8
    warmup_epochs: int = 1  # weights only, choices sampled uniformly at the start temperature
    batch_size: int = 64
    weight_lr: float = 1e-3
    arch_lr: float = 0.05
    arch_weight_decay: float = 5e-4
    tau_start: float = 5.0
    tau_end: float = 0.5
    alpha: float = 1.0
    beta: float = 0.6
    target_gain: float = 0.3  # alpha <- alpha * (E[COST] / target) ** gain after each architecture step
    init_float_prob: float | None = None  # initial probability of the fp32 option (None: uniform over options)
    target: float | None = None  # in the cost's unit (ms, MB, G bit-ops)
    seed: int = 0

    @property
    def temperature_schedule(self) -> TemperatureSchedule:
        """From ``tau_start`` at the first epoch to ``tau_end`` at the last."""
        return TemperatureSchedule.between(self.tau_start, self.tau_end, self.epochs)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    assignment: list[BitOption]
    probabilities: list[list[float]]
    history: list[dict] = field(default_factory=list)
    alpha: float = 0.0
    repaired_layers: list[str] = field(default_factory=list)


def assignment_accuracy(net: MixedPrecisionNet, assignment: list[BitOption], split: Split,
                        engine: Engine | None = None, batch_size: int = 64) -> float:
    """Accuracy of ``net`` fixed to ``assignment`` on a whole split (streamed); the net is left unfixed."""
    net.fix(assignment)
    try:
        return split_accuracy(net, split, engine, batch_size=batch_size)
    finally:
        net.fix(None)


class BitSearch:
    """One epoch of the bit-width search (an ``nas.train.engine.EpochTask``): weights on the train split, then (after
    the warm-up) the choice logits on the validation split with the cost-aware loss (the weights frozen)."""

    def __init__(self, net: MixedPrecisionNet, data: Dataset, cost: Cost, config: SearchConfig, engine: Engine):
        self.net = engine.place(net, channels_last=False)  # the layout the bit search always trained in
        self.data, self.cost, self.config, self.engine = data, cost, config, engine
        self.floor = cost.lower_bound()
        self.w_opt = torch.optim.AdamW(net.weight_parameters(), lr=config.weight_lr, weight_decay=1e-4)
        self.a_opt = torch.optim.Adam(net.arch_parameters(), lr=config.arch_lr, betas=(0.9, 0.999),
                                      weight_decay=config.arch_weight_decay)
        self.alpha = config.alpha
        self.controller = TargetController(config.target, self.alpha, config.target_gain) \
            if config.target is not None else None
        self.expected: torch.Tensor | None = None  # the last architecture step's expected cost
        self.weight_step = OptimizerStep(self._weight_loss, self.w_opt)
        self.arch_step = OptimizerStep(self._arch_loss, self.a_opt, frozen=list(net.weight_parameters()),
                                       after=self._steer if self.controller is not None else None)

    def state(self) -> dict:
        return {"net": self.net.state_dict(), "weight_optimizer": self.w_opt.state_dict(),
                "arch_optimizer": self.a_opt.state_dict(), "alpha": self.alpha}

    def load(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.w_opt.load_state_dict(state["weight_optimizer"])
        self.a_opt.load_state_dict(state["arch_optimizer"])
        self.alpha = float(state["alpha"])
        if self.controller is not None:
            self.controller.alpha = self.alpha

    def epoch(self, epoch: int) -> dict:
        config, net, cost, engine = self.config, self.net, self.cost, self.engine
        torch.manual_seed(config.seed * 10_007 + epoch)
        gen = torch.Generator().manual_seed(config.seed * 10_007 + epoch)
        tau = config.temperature_schedule.at(epoch)
        net.set_temperature(tau)
        net.fix(None)
        net.train()
        figures = engine.train_pass(self.data.train, config.batch_size, gen, [self.weight_step])
        row = {"epoch": epoch + 1, "temperature": tau, "train_loss": figures.get("train_loss", math.nan)}
        if epoch >= config.warmup_epochs:
            figures = engine.train_pass(self.data.val, config.batch_size, gen, [self.arch_step])
            row |= {"arch_ce": figures.get("arch_ce", math.nan), "cost_factor": figures.get("cost_factor", math.nan)}
        probs = [p.tolist() for p in net.probabilities()]
        argmax = net.argmax_assignment()
        row["expected_cost"] = float(cost.expected([torch.tensor(p) for p in probs]))
        row["argmax_cost"] = cost.of(argmax)
        row["argmax_val_accuracy"] = assignment_accuracy(net, argmax, self.data.val, engine, config.batch_size)
        row["argmax"] = " ".join(o.label for o in argmax)
        row["alpha"] = self.alpha
        row["probabilities"] = json.dumps([[round(v, 4) for v in p] for p in probs])
        return row

    def _weight_loss(self, x: torch.Tensor, y: torch.Tensor) -> StepLoss:
        loss = F.cross_entropy(self.net(fit_input(x, self.net)), y)
        return loss, {"train_loss": loss.item() * len(y)}

    def _arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> StepLoss:
        """Cross-entropy times the cost factor of the expected cost under the choice probabilities (at full
        precision)."""
        net, config = self.net, self.config
        ce = F.cross_entropy(net(fit_input(x, net)), y).float()
        with self.engine.full_precision():
            self.expected = self.cost.expected([F.softmax(t, 0).cpu() for t in net.arch_parameters()])
            factor = latency_factor(self.expected, self.floor, self.alpha, config.beta)
        return ce * factor.to(ce.device), {"arch_ce": ce.item() * len(y), "cost_factor": factor.item() * len(y)}

    def _steer(self) -> None:
        self.alpha = self.controller.update(float(self.expected.detach()))


def search_bits(net: MixedPrecisionNet, data: Dataset, cost: Cost, config: SearchConfig, *,
                engine: Engine | None = None, checkpoint: str | Path | None = None,
                on_epoch: Callable[[int, dict], None] | None = None) -> SearchResult:
    """Run the bit-width search through ``engine``; with ``checkpoint`` it saves after every epoch and resumes
    from it. The net comes back on the CPU."""
    if config.init_float_prob is not None:
        init_logits(net, config.init_float_prob)
    engine = engine or Engine()
    task = BitSearch(net, data, cost, config, engine)
    try:
        history = engine.run(task, config.epochs, checkpoint=checkpoint, on_epoch=on_epoch, what="search",
                             error=SearchError)
    finally:
        engine.release(net)
    assignment = net.argmax_assignment()
    probabilities = [p.tolist() for p in net.probabilities()]
    repaired: list[str] = []
    if config.target is not None and cost.of(assignment) > config.target:
        assignment, repaired = fit_to_target(net, cost, assignment, probabilities, config.target)
    return SearchResult(assignment, probabilities, history, task.alpha, repaired)


def init_logits(net: MixedPrecisionNet, float_prob: float) -> None:
    """Start every layer with probability ``float_prob`` on its fp32 option and the rest shared by the others.

    With transition costs the uniform start is a saddle: at p(int8) = 1/2 for every layer, a layer's expected
    transitions do not change with its own choice, so only its compute term acts, which sends pointwise layers to int8
    and depthwise ones to fp32, the most transitions there are. Starting from the float model (the pretrained one),
    a layer moves to int8 only where it pays, transitions included.
    """
    with torch.no_grad():
        for layer in net.layers:
            if FP32_OPTION not in layer.options or len(layer.options) < 2:
                continue
            others = (1 - float_prob) / (len(layer.options) - 1)
            probs = torch.tensor([float_prob if o == FP32_OPTION else others for o in layer.options])
            layer.theta.copy_(torch.log(probs))


def fit_to_target(net: MixedPrecisionNet, cost: Cost, assignment: list[BitOption], probabilities: list[list[float]],
                  target: float) -> tuple[list[BitOption], list[str]]:
    """Change the assignment, each time by the move that loses least log-probability per unit of cost saved, until it
    meets ``target``. A move sets one layer, a whole run of consecutive layers (forward order) that share an option,
    or every layer to another option: with transition costs, turning one layer of an int8 run to fp32 adds two
    transitions and may save nothing where turning the whole run saves much, and the uniform assignments, which
    have no transitions, stay reachable. SearchError if no assignment reachable this way meets ``target``."""
    def log_p(i: int, option: BitOption) -> float:
        return math.log(max(probabilities[i][net.layers[i].options.index(option)], 1e-12))

    current = list(assignment)
    value = cost.of(current)
    changed: list[str] = []
    while value > target:
        best = None
        for layers in _move_groups(current):
            for option in net.layers[layers[0]].options:
                if all(current[i] == option for i in layers):
                    continue
                if any(option not in net.layers[i].options for i in layers):
                    continue
                trial = list(current)
                for i in layers:
                    trial[i] = option
                saved = value - cost.of(trial)
                if saved <= 0:
                    continue
                score = sum(log_p(i, current[i]) - log_p(i, option) for i in layers) / saved
                if best is None or score < best[0]:
                    best = (score, layers, option, value - saved)
        if best is None:
            raise SearchError(f"target {target:.4g} {cost.unit} cannot be met: the cheapest assignment found costs "
                              f"{value:.4g} {cost.unit}")
        _, layers, option, value = best
        for i in layers:
            if current[i] != option:
                current[i] = option
                changed.append(net.names[i])
    return current, changed


def _move_groups(assignment: list[BitOption]) -> list[list[int]]:
    """Each layer alone, each run of two or more consecutive layers with the same option, and all layers."""
    n = len(assignment)
    groups = [[i] for i in range(n)]
    start = 0
    for i in range(1, n + 1):
        if i == n or assignment[i] != assignment[start]:
            if 1 < i - start < n:  # a run that is not the whole model (added below)
                groups.append(list(range(start, i)))
            start = i
    if n > 1:
        groups.append(list(range(n)))
    return groups
