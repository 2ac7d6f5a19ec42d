"""Train and evaluate a plain model on a Dataset with a Recipe, through the engine (``nas.train.engine``); the
recipe pieces every trainer shares (optimiser, learning-rate schedule, EMA)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nas.data.dataset import Dataset
from nas.train.engine import Engine, EpochCallback, OptimizerStep, StepLoss
from nas.train.evaluation import fit_input, split_accuracy
from nas.train.recipe import Recipe


@dataclass
class TrainResult:
    model: nn.Module  # the EMA weights when the recipe uses EMA
    history: list[dict] = field(default_factory=list)
    val_accuracy: float = 0.0


def make_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                               nesterov=recipe.momentum > 0)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at optimiser step ``step``: linear warm-up, then the schedule."""
    total = recipe.epochs * steps_per_epoch
    warm = min(recipe.warmup_epochs, recipe.epochs - 1) * steps_per_epoch  # a derived recipe (a search's capped
    # epochs) may end before its warm-up: the schedule still runs after it
    if step < warm:
        return (step + 1) / warm
    t = (step - warm) / max(total - warm, 1)
    if recipe.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if recipe.schedule == "step":
        return 0.1 ** int(t * 3)
    return 1.0


def set_dropout(model: nn.Module, p: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p


def warmed_up_ema(decay: float):
    """EMA whose decay warms up as min(decay, (1 + n) / (10 + n)) over the first n updates (as TensorFlow's
    ExponentialMovingAverage with num_updates), so that short runs on small data are not stuck near the initial
    weights: with decay 0.999 and a few hundred steps a plain EMA stays at chance accuracy."""
    def update(ema_params, model_params, num_averaged) -> None:
        n = float(num_averaged)
        get_ema_multi_avg_fn(min(decay, (1.0 + n) / (10.0 + n)))(ema_params, model_params, num_averaged)
    return update


class ChildTraining:
    """The epoch of a plain model: cross-entropy (with the recipe's label smoothing and mixup) on the train split,
    an EMA of the weights when the recipe asks, validation accuracy after each epoch."""

    def __init__(self, model: nn.Module, data: Dataset, recipe: Recipe, engine: Engine, evaluate_val: bool):
        self.model, self.data, self.recipe, self.engine = engine.place(model), data, recipe, engine
        self.evaluate_val = evaluate_val
        self.opt = make_optimizer(model.parameters(), recipe)
        steps_per_epoch = math.ceil(len(data.train) / recipe.batch_size)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(recipe, s, steps_per_epoch))
        self.ema = AveragedModel(model, multi_avg_fn=warmed_up_ema(recipe.ema), use_buffers=True) \
            if recipe.ema > 0 else None
        self.shuffle = torch.Generator().manual_seed(recipe.seed)
        self.mixup = np.random.default_rng(recipe.seed)
        self.step = OptimizerStep(self.loss, self.opt, self.sched,
                                  after=self._update_ema if self.ema is not None else None)

    def state(self) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "shuffle_rng": self.shuffle.get_state(),
                 "mixup_rng": json.dumps(self.mixup.bit_generator.state)}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        return state

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        self.shuffle.set_state(state["shuffle_rng"])
        self.mixup.bit_generator.state = json.loads(state["mixup_rng"])

    def _update_ema(self) -> None:
        self.ema.update_parameters(self.model)

    @property
    def final_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> StepLoss:
        """Cross-entropy of a batch (label smoothing; mixup with a partner drawn from the shuffle stream)."""
        model, recipe = self.model, self.recipe
        x = fit_input(x, model)
        if recipe.mixup > 0 and len(y) > 1:
            lam = float(self.mixup.beta(recipe.mixup, recipe.mixup))
            perm = torch.randperm(len(y), generator=self.shuffle).to(y.device)
            out = model(lam * x + (1 - lam) * x[perm])
            loss = lam * F.cross_entropy(out, y, label_smoothing=recipe.label_smoothing) + \
                (1 - lam) * F.cross_entropy(out, y[perm], label_smoothing=recipe.label_smoothing)
        else:
            loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
        return loss, {"train_loss": float(loss.detach()) * len(y)}

    def epoch(self, index: int) -> dict:
        recipe, engine = self.recipe, self.engine
        self.model.train()
        start = time.perf_counter()
        figures = engine.train_pass(self.data.train, recipe.batch_size, self.shuffle, [self.step],
                                    augment=recipe.augment)
        row = {"epoch": index + 1, "train_loss": figures.get("train_loss", math.nan),
               "lr": self.opt.param_groups[0]["lr"], "images_per_s": figures.samples / (time.perf_counter() - start)}
        if self.evaluate_val:
            row["val_accuracy"] = split_accuracy(self.final_model, self.data.val, engine, recipe.batch_size)
        return row


def train_model(model: nn.Module, data: Dataset, recipe: Recipe, *, engine: Engine | None = None,
                on_epoch: EpochCallback | None = None, checkpoint: str | Path | None = None,
                evaluate_val: bool = True) -> TrainResult:
    """Train ``model`` on the train split with ``engine`` (default: the CPU at fp32 on the current threads);
    report validation accuracy each epoch. The trained model comes back on the CPU, in eval mode.

    With ``checkpoint``, state is saved atomically after every epoch and a rerun resumes from it.
    """
    torch.manual_seed(recipe.seed)
    engine = engine or Engine()
    if recipe.dropout is not None:
        set_dropout(model, recipe.dropout)
    task = ChildTraining(model, data, recipe, engine, evaluate_val)
    try:
        history = engine.run(task, recipe.epochs, checkpoint=checkpoint, on_epoch=on_epoch)
    finally:
        engine.release(task.model)
    final = engine.release(task.final_model)
    final.eval()
    return TrainResult(final, history, history[-1].get("val_accuracy", float("nan")) if history else float("nan"))
