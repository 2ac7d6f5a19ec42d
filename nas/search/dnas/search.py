"""The differentiable search loop shared by DNAS and DMasking.

Every epoch: a temperature from FBNet's schedule; the supernet weights train on the train split (CE, one Gumbel
sample per batch); after the warm-up, the architecture logits train on the validation split with the latency-aware
loss (weights frozen). The engine (``nas.train.engine``) saves the state after every epoch, so an interrupted search
resumes where it was.
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
from nas.search.gumbel import temperature
from nas.search.latency_loss import TargetController, latency_factor
from nas.train.engine import Engine
from nas.train.recipe import Recipe
from nas.train.training import finite_loss, lr_factor, make_optimizer

EpochCallback = Callable[[int, dict], None]


@dataclass
class SearchSettings:
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
    def warmup(self) -> int:
        if self.warmup_epochs is not None:
            return min(self.warmup_epochs, self.epochs - 1)
        return max(1, self.epochs // 5) if self.epochs > 1 else 0

    def temperature_at(self, epoch: int) -> float:
        """FBNet's schedule ``initial * decay ** epoch``. The decay is by default the one that reaches
        ``final_temperature`` at the last epoch, so that a search anneals whatever its length (FBNet's 0.956 per
        epoch is for 90 epochs: over 10 it took 5.0 only to 3.3, and the choices stayed blurred)."""
        decay = self.temperature_decay
        if decay is None:
            decay = (self.final_temperature / self.initial_temperature) ** (1 / max(self.epochs - 1, 1))
        return temperature(epoch, self.initial_temperature, decay)

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
                 settings: SearchSettings, recipe: Recipe, min_ms: float, engine: Engine | None = None):
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
        self.shuffle = torch.Generator().manual_seed(recipe.seed)
        self.history: list[dict] = []

    # ---- checkpoints --------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"supernet": self.supernet.state_dict(), "dist": self.dist.state_dict(),
                "weight_opt": self.weight_opt.state_dict(), "arch_opt": self.arch_opt.state_dict(),
                "scheduler": self.scheduler.state_dict(), "alpha": self.alpha,
                "controller": json.dumps(self.controller.state() if self.controller else None),
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
            for part in (self.supernet, self.dist, self.terms):
                part.to("cpu")
        return self.history

    def epoch(self, epoch: int) -> dict:
        s = self.settings
        start = time.perf_counter()
        tau = s.temperature_at(epoch)
        row = {"epoch": epoch + 1, "phase": "warmup" if epoch < s.warmup else "search", "temperature": tau}
        row.update(self._train_weights(tau))
        row.update(self._train_arch(tau, s.entropy_weight_at(epoch)) if epoch >= s.warmup else self._evaluate(tau))
        with torch.no_grad():
            row.update({"alpha": self.alpha, "expected_ms": float(self.terms.expected_ms().detach()),
                        "argmax_ms": self.terms.argmax_ms(), "entropy": self.dist.entropy(),
                        "lr": self.weight_opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start})
        row.update(self.dist.probability_row())
        self.history.append(row)
        return row

    def _batches(self, split):
        yield from self.engine.batches(split, self.recipe.batch_size, self.shuffle, "none")

    def _sample(self, tau: float):
        s = self.settings
        return self.dist.sample(tau, s.op_paths, s.channel_paths, s.resolution_paths)

    def _train_weights(self, tau: float) -> dict:
        self.supernet.train()
        total, correct, seen = 0.0, 0, 0
        for x, y in self._batches(self.data.train):
            with torch.no_grad():
                sample = self._sample(tau)
            with self.engine.autocast():
                out = self.supernet(x, sample)
                loss = F.cross_entropy(out, y, label_smoothing=self.recipe.label_smoothing)
            value = finite_loss(loss, len(self.history) + 1, self.weight_opt.param_groups[0]["lr"])
            self.weight_opt.zero_grad(set_to_none=True)
            self.engine.backward_step(loss, self.weight_opt)
            self.scheduler.step()
            total += value * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
        total, correct, seen = self.engine.world.total(total, correct, seen)
        return {"train_loss": total / seen, "train_accuracy": correct / seen}

    def _train_arch(self, tau: float, entropy_weight: float = 0.0) -> dict:
        s = self.settings
        self.supernet.train()
        frozen = [p for p in self.supernet.parameters() if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        total, correct, seen = 0.0, 0, 0
        try:
            for x, y in self._batches(self.data.val):
                with self.engine.autocast():
                    out = self.supernet(x, self._sample(tau))
                    ce = F.cross_entropy(out, y)
                lat = self.terms.expected_ms()
                loss = ce.float() * latency_factor(lat, self.min_ms, self.alpha, s.beta)
                if entropy_weight:  # a factor like the latency's: the push to decide keeps its share of the loss
                    loss = loss * (1 + entropy_weight * self.dist.relative_entropy())
                self.arch_opt.zero_grad(set_to_none=True)
                self.engine.backward_step(loss, self.arch_opt)
                if self.controller is not None:  # steer by the arch the search would return now
                    self.alpha = self.controller.update(self.terms.argmax_ms())
                total += float(ce.detach()) * len(y)
                correct += int((out.argmax(1) == y).sum())
                seen += len(y)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        total, correct, seen = self.engine.world.total(total, correct, seen)
        return {"val_loss": total / seen, "val_accuracy": correct / seen}

    @torch.no_grad()
    def _evaluate(self, tau: float) -> dict:
        """Validation loss / accuracy of sampled archs (warm-up epochs, where the arch does not train)."""
        self.supernet.train()  # batch statistics, as in the search steps
        total, correct, seen = 0.0, 0, 0
        for x, y in self._batches(self.data.val):
            with self.engine.autocast():
                out = self.supernet(x, self._sample(tau))
            total += float(F.cross_entropy(out, y)) * len(y)
            correct += int((out.argmax(1) == y).sum())
            seen += len(y)
        total, correct, seen = self.engine.world.total(total, correct, seen)
        return {"val_loss": total / seen, "val_accuracy": correct / seen}
