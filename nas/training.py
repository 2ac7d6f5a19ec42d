"""Train and evaluate a plain model on a Dataset with a Recipe, through the engine (``nas.engine``); the
recipe pieces every trainer shares (optimiser, learning-rate schedule, EMA, the finite-loss check)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nas.data import Dataset
from nas.datasets import Split, split_batches
from nas.engine import Engine, EpochCallback
from nas.errors import TrainingError
from nas.recipe import Recipe


@dataclass
class TrainResult:
    model: nn.Module  # the EMA weights when the recipe uses EMA
    history: list[dict] = field(default_factory=list)
    val_accuracy: float = 0.0


def fit_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Resize a batch to the model's input resolution when the arch chose another one (channels-last layout)."""
    shape = getattr(model, "input_shape", None)
    if shape is not None and x.shape[-1] != shape[-1]:
        x = F.interpolate(x, size=shape[-2:], mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def model_device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


EVAL_BATCH_SIZE = 512  # images per forward pass when evaluating


def evaluation_batches(model: nn.Module, split: Split, engine: Engine | None = None,
                       batch_size: int = EVAL_BATCH_SIZE) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The whole of ``split`` in order, as (x, y) batches on ``model``'s device with x resized to its input
    (``fit_input``). A streamed split is decoded one batch at a time (in ``engine``'s DataLoader workers), never
    whole; under data parallelism every rank reads all of it."""
    device = model_device(model)
    for x, y in split_batches(split, batch_size, None, workers=engine.workers if engine is not None else 0,
                              pin_memory=device.type == "cuda"):
        yield fit_input(x.to(device, non_blocking=True), model), y.to(device, non_blocking=True)


@torch.no_grad()
def split_accuracy(model: nn.Module, split: Split, engine: Engine | None = None,
                   batch_size: int = EVAL_BATCH_SIZE) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on a whole split, streamed batch by batch
    (``evaluation_batches``)."""
    model.eval()
    correct = 0
    for x, y in evaluation_batches(model, split, engine, batch_size):
        correct += int((model(x).argmax(1) == y).sum())
    return correct / max(len(split), 1)


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


def finite_loss(loss: torch.Tensor, epoch: int, lr: float) -> float:
    """The loss as a float; TrainingError when it is NaN or infinite (training diverged or the data is bad)."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise TrainingError(f"the training loss became {value} in epoch {epoch} (learning rate {lr:.3g}); "
                            f"lower the recipe's lr or check the data")
    return value


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

    @property
    def final_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def epoch(self, index: int) -> dict:
        model, recipe, engine = self.model, self.recipe, self.engine
        model.train()
        total_loss, seen, start = 0.0, 0, time.perf_counter()
        for x, y in engine.batches(self.data.train, recipe.batch_size, self.shuffle, recipe.augment):
            x = fit_input(x, model)
            with engine.autocast():
                if recipe.mixup > 0 and len(y) > 1:
                    lam = float(self.mixup.beta(recipe.mixup, recipe.mixup))
                    perm = torch.randperm(len(y), generator=self.shuffle).to(y.device)
                    out = model(lam * x + (1 - lam) * x[perm])
                    loss = lam * F.cross_entropy(out, y, label_smoothing=recipe.label_smoothing) + \
                        (1 - lam) * F.cross_entropy(out, y[perm], label_smoothing=recipe.label_smoothing)
                else:
                    loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
            loss_value = finite_loss(loss, index + 1, self.opt.param_groups[0]["lr"])
            self.opt.zero_grad(set_to_none=True)
            engine.backward_step(loss, self.opt)
            self.sched.step()
            if self.ema is not None:
                self.ema.update_parameters(model)
            total_loss += loss_value * len(y)
            seen += len(y)
        total_loss, seen = engine.world.total(total_loss, seen)
        row = {"epoch": index + 1, "train_loss": total_loss / seen, "lr": self.opt.param_groups[0]["lr"],
               "images_per_s": seen / (time.perf_counter() - start)}
        if self.evaluate_val:
            row["val_accuracy"] = split_accuracy(self.final_model, self.data.val, engine)
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
    history = engine.run(task, recipe.epochs, checkpoint=checkpoint, on_epoch=on_epoch)
    final = task.final_model.cpu()
    final.eval()
    return TrainResult(final, history, history[-1].get("val_accuracy", float("nan")) if history else float("nan"))
