"""The differentiable search loop shared by DNAS and DMasking.

Every epoch: a temperature from FBNet's schedule; the supernet weights train on the train split (CE, one Gumbel
sample per batch); after the warm-up, the architecture logits train on the validation split with the latency-aware
loss (weights frozen). The search supplies the two losses and their optimisers; the engine (``nas.train.engine``)
runs the passes, and saves the state after every epoch, so an interrupted search resumes where it was.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nas.data.dataset import Dataset
from nas.errors import SearchError
from nas.search.dnas.distribution import ArchDistribution
from nas.search.dnas.latency_terms import LatencyTerms
from nas.search.dnas.resolution_loss import ResolutionLosses
from nas.search.gumbel import DecisionSample, TemperatureSchedule, one_hot_decision
from nas.search.latency_loss import TargetController, latency_factor
from nas.train.engine import Engine, OptimizerStep, StepLoss
from nas.train.recipe import Recipe
from nas.train.training import lr_factor, make_optimizer

EpochCallback = Callable[[int, dict], None]


@dataclass
class SupernetSearchSettings:
    epochs: int = 20
    warmup_epochs: int | None = None  # default: a fifth of the epochs, at least 1
    arch_lr: float = 0.1
    arch_weight_decay: float = 5e-4
    initial_temperature: float = 5.0
    temperature_decay: float | None = None  # per epoch (FBNet's 0.956); None: the one reaching final_temperature
    final_temperature: float = 1.0
    entropy_weight: float = 4.0  # the arch loss is multiplied by (1 + w * mean relative entropy), w ramped up from 0
    alpha: float = 1.0
    beta: float = 0.6
    target_ms: float | None = None
    op_paths: int | None = None  # None: soft, every candidate contributes; k: only the k sampled ones run
    channel_paths: int | None = None  # None: Gumbel-weighted sum of the channel masks (FBNetV2)
    resolution_paths: int | None = 1  # 1: one sampled resolution per step; None: weighted sum of all

    @property
    def temperature_schedule(self) -> TemperatureSchedule:
        """FBNet's schedule ``initial * decay ** epoch``. The decay is by default the one that reaches
        ``final_temperature`` at the last epoch, so that a search anneals whatever its length (FBNet's 0.956 per
        epoch is for 90 epochs: over 10 it took 5.0 only to 3.3, and the choices stayed blurred)."""
        if self.temperature_decay is None:
            return TemperatureSchedule.between(self.initial_temperature, self.final_temperature, self.epochs)
        return TemperatureSchedule(self.initial_temperature, self.temperature_decay)

    @property
    def warmup(self) -> int:
        if self.warmup_epochs is not None:
            return min(self.warmup_epochs, self.epochs - 1)
        return max(1, self.epochs // 5) if self.epochs > 1 else 0

    def entropy_weight_at(self, epoch: int) -> float:
        """The entropy penalty's weight: 0 at the first architecture epoch, ``entropy_weight`` at the last."""
        arch_epochs = self.epochs - self.warmup
        if self.entropy_weight == 0 or arch_epochs <= 1:
            return self.entropy_weight
        return self.entropy_weight * (epoch - self.warmup) / (arch_epochs - 1)

    def to_dict(self) -> dict:
        return asdict(self)


class SupernetSearch:
    """One search epoch at a time (an ``nas.train.engine.EpochTask``); the engine places the supernet, the logits and
    the latency cost tensors on its device, feeds the batches and keeps the checkpoint."""

    def __init__(self, supernet: nn.Module, dist: ArchDistribution, terms: LatencyTerms, data: Dataset,
                 settings: SupernetSearchSettings, recipe: Recipe, min_ms: float, engine: Engine | None = None):
        self.engine = engine or Engine()
        self.supernet, self.dist, self.terms, self.data = self.engine.place(supernet), dist, terms, data
        dist.to(self.engine.device)
        terms.to(self.engine.device)
        self.settings, self.recipe, self.min_ms = settings, recipe, min_ms
        self.weight_opt = make_optimizer(supernet.parameters(), recipe)
        self.steps_per_epoch = math.ceil(len(data.train) / recipe.batch_size)
        schedule = recipe.model_copy(update={"epochs": settings.epochs})
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.weight_opt, lambda s: lr_factor(schedule, s, self.steps_per_epoch))
        self.arch_opt = torch.optim.Adam(dist.parameters(), lr=settings.arch_lr, betas=(0.9, 0.999),
                                         weight_decay=settings.arch_weight_decay)
        self.alpha = settings.alpha
        self.controller = TargetController(settings.target_ms, settings.alpha) if settings.target_ms else None
        one_resolution = len(dist.resolution_options) > 1 and settings.resolution_paths == 1
        self.resolution_losses = ResolutionLosses(len(dist.resolution_options)) if one_resolution else None
        self.shuffle = torch.Generator().manual_seed(recipe.seed)
        self.history: list[dict] = []
        self.tau = settings.initial_temperature  # this epoch's
        self.entropy_weight = 0.0  # this epoch's (``entropy_weight_at``)
        self.weight_step = OptimizerStep(self._weight_loss, self.weight_opt, self.scheduler)
        self.arch_step = OptimizerStep(self._arch_loss, self.arch_opt, frozen=list(supernet.parameters()),
                                       after=self._steer if self.controller is not None else None)

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"supernet": self.supernet.state_dict(), "dist": self.dist.state_dict(),
                "weight_opt": self.weight_opt.state_dict(), "arch_opt": self.arch_opt.state_dict(),
                "scheduler": self.scheduler.state_dict(), "alpha": self.alpha,
                "controller": json.dumps(self.controller.state() if self.controller else None),
                "resolution_losses": json.dumps(self.resolution_losses.state() if self.resolution_losses else None),
                "shuffle_rng": self.shuffle.get_state()}

    def load(self, state: dict) -> None:
        self.supernet.load_state_dict(state["supernet"])
        self.dist.load_state_dict(state["dist"])
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.alpha = float(state["alpha"])
        if self.controller is not None:
            self.controller.load(json.loads(state["controller"]))
        if self.resolution_losses is not None and "resolution_losses" in state:
            self.resolution_losses.load(json.loads(state["resolution_losses"]))
        self.history = json.loads(state["history"])  # the engine's copy of the rows
        self.shuffle.set_state(state["shuffle_rng"])

    # ---- the loop -----------------------------------------------------------------------------------------------
    def run(self, checkpoint: str | Path | None = None, on_epoch: EpochCallback | None = None) -> list[dict]:
        """Search, resuming from ``checkpoint``, on the engine's accelerator and threads."""
        torch.manual_seed(self.recipe.seed)
        try:
            self.engine.run(self, self.settings.epochs, checkpoint=checkpoint, on_epoch=on_epoch,
                            what="search", error=SearchError)
        finally:
            self.engine.release(self.supernet)
            for part in (self.dist, self.terms):
                part.to("cpu")
        return self.history

    def epoch(self, epoch: int) -> dict:
        s, engine, batch_size = self.settings, self.engine, self.recipe.batch_size
        start = time.perf_counter()
        self.tau = s.temperature_schedule.at(epoch)
        self.entropy_weight = s.entropy_weight_at(epoch)
        row = {"epoch": epoch + 1, "phase": "warmup" if epoch < s.warmup else "search", "temperature": self.tau}
        self.supernet.train()  # (batch statistics in every pass, the validation passes' included)
        weights = engine.train_pass(self.data.train, batch_size, self.shuffle, [self.weight_step])
        row.update({"train_loss": weights.get("train_loss", math.nan),
                    "train_accuracy": weights.get("train_accuracy", math.nan)})
        if epoch >= s.warmup:
            val = engine.train_pass(self.data.val, batch_size, self.shuffle, [self.arch_step])
        else:  # the warm-up: validation figures of sampled archs, the arch untrained
            val = engine.evaluate_pass(self.data.val, batch_size, self.shuffle, self._val_figures)
        row.update({"val_loss": val.get("val_loss", math.nan), "val_accuracy": val.get("val_accuracy", math.nan)})
        with torch.no_grad():
            row.update({"alpha": self.alpha, "expected_ms": float(self.terms.expected_ms().detach()),
                        "argmax_ms": self.terms.argmax_ms(), "entropy": self.dist.entropy(),
                        "lr": self.weight_opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start})
        row.update(self.dist.probability_row())
        if self.resolution_losses is not None:
            row.update({f"val_loss_res{r}": v for r, v in zip(self.dist.resolution_options,
                                                               self.resolution_losses.loss)})
        self.history.append(row)
        return row

    def _sample(self):
        """A Gumbel sample of the distribution; where one resolution runs per step, the resolution is drawn
        uniformly instead, with a weight that carries no gradient (``nas.search.dnas.resolution_loss``): the
        supernet trains every resolution alike and each resolution's running loss stays current."""
        s = self.settings
        sample = self.dist.sample(self.tau, s.op_paths, s.channel_paths, s.resolution_paths)
        if self.resolution_losses is not None:
            options = len(self.dist.resolution_options)
            pick = int(torch.randint(options, ()))
            sample.resolution = DecisionSample(one_hot_decision(options, pick).weights.to(self.dist.logits.device),
                                               [pick])
        return sample

    def _observe_resolution(self, sample, ce: torch.Tensor) -> None:
        if self.resolution_losses is not None:
            self.resolution_losses.observe(sample.resolution.active[0], float(ce.detach()))

    def _weight_loss(self, x: torch.Tensor, y: torch.Tensor) -> StepLoss:
        """Cross-entropy of one Gumbel sample of the supernet (the sample itself at full precision)."""
        with torch.no_grad(), self.engine.full_precision():
            sample = self._sample()
        out = self.supernet(x, sample)
        loss = F.cross_entropy(out, y, label_smoothing=self.recipe.label_smoothing)
        return loss, {"train_loss": float(loss.detach()) * len(y), "train_accuracy": int((out.argmax(1) == y).sum())}

    def _arch_loss(self, x: torch.Tensor, y: torch.Tensor) -> StepLoss:
        """FBNet's latency-aware loss of one sample: CE times the latency factor of the expected latency (at full
        precision), times ``1 + w x`` the mean relative entropy of the choices (a factor like the latency's: the push
        to decide keeps its share of the loss; ``w`` ramps up over the architecture epochs). Where one resolution
        runs per step, the resolution's gradient comes from the expected loss over the resolutions' running losses
        (``nas.search.dnas.resolution_loss``), added at zero value."""
        sample = self._sample()
        out = self.supernet(x, sample)
        ce = F.cross_entropy(out, y)
        self._observe_resolution(sample, ce)
        if self.resolution_losses is not None:
            expected = self.resolution_losses.expected(self.dist.probs().resolution)
            ce = ce + (expected - expected.detach()).to(ce.dtype)
        with self.engine.full_precision():
            loss = ce.float() * latency_factor(self.terms.expected_ms(), self.min_ms, self.alpha, self.settings.beta)
            if self.entropy_weight:
                loss = loss * (1 + self.entropy_weight * self.dist.relative_entropy())
        return loss, {"val_loss": float(ce.detach()) * len(y), "val_accuracy": int((out.argmax(1) == y).sum())}

    def _steer(self) -> None:
        """After an architecture step: the target controller steers alpha by the arch the search would return now."""
        self.alpha = self.controller.update(self.terms.argmax_ms())

    def _val_figures(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        sample = self._sample()
        out = self.supernet(x, sample)
        ce = F.cross_entropy(out, y)
        self._observe_resolution(sample, ce)
        return {"val_loss": float(ce) * len(y), "val_accuracy": int((out.argmax(1) == y).sum())}
