"""Train and evaluate a model on a Dataset with a Recipe. Resumable from a checkpoint; reports per epoch."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from nas.data import Dataset
from nas.errors import TrainingError
from nas.files import atomic_path
from nas.recipe import Recipe

EpochCallback = Callable[[int, dict], None]


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


def use_channels_last(model: nn.Module) -> nn.Module:
    """Depthwise-heavy CNNs train 2.5-4x faster on CPU in channels-last layout (measured here)."""
    return model.to(memory_format=torch.channels_last)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    return torch.cat([model(fit_input(x[i:i + batch_size], model)) for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict_logits(model, x).argmax(1) == y).float().mean())


def make_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                               nesterov=recipe.momentum > 0)
    return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at optimiser step ``step``: linear warm-up, then the schedule."""
    total = recipe.epochs * steps_per_epoch
    warm = recipe.warmup_epochs * steps_per_epoch
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


def restored_history(state: dict) -> list[dict]:
    """The per-epoch rows stored in a checkpoint (a float tensor), with the epoch numbers as integers again."""
    rows = [dict(zip(state["history_keys"], row)) for row in state["history"].tolist()]
    return [{**row, "epoch": int(row["epoch"])} if "epoch" in row else row for row in rows]


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


def train_model(model: nn.Module, data: Dataset, recipe: Recipe, *, on_epoch: EpochCallback | None = None,
                checkpoint: str | Path | None = None, evaluate_val: bool = True) -> TrainResult:
    """Train ``model`` on the train split; report validation accuracy each epoch.

    With ``checkpoint``, state is saved atomically after every epoch and a rerun resumes from it.
    """
    torch.manual_seed(recipe.seed)
    use_channels_last(model)
    if recipe.dropout is not None:
        set_dropout(model, recipe.dropout)
    opt = make_optimizer(model.parameters(), recipe)
    steps_per_epoch = math.ceil(len(data.y_train) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(recipe, s, steps_per_epoch))
    ema = AveragedModel(model, multi_avg_fn=warmed_up_ema(recipe.ema), use_buffers=True) \
        if recipe.ema > 0 else None
    history: list[dict] = []
    start = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if ema is not None and "ema" in state:
            ema.load_state_dict(state["ema"])
        history = restored_history(state)
        start = len(history)
    gen = torch.Generator().manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    if start:  # continue the random streams where the interrupted run left them
        gen.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = json.loads(state["mixup_rng"])
    for epoch in range(start, recipe.epochs):
        model.train()
        order = torch.randperm(len(data.y_train), generator=gen)
        total_loss, seen = 0.0, 0
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            x, y = fit_input(data.x_train[idx], model), data.y_train[idx]
            if recipe.mixup > 0 and len(idx) > 1:
                lam = float(rng.beta(recipe.mixup, recipe.mixup))
                perm = torch.randperm(len(idx), generator=gen)
                out = model(lam * x + (1 - lam) * x[perm])
                loss = lam * F.cross_entropy(out, y, label_smoothing=recipe.label_smoothing) + \
                    (1 - lam) * F.cross_entropy(out, y[perm], label_smoothing=recipe.label_smoothing)
            else:
                loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
            loss_value = finite_loss(loss, epoch + 1, opt.param_groups[0]["lr"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            total_loss += loss_value * len(idx)
            seen += len(idx)
        evaluated = ema.module if ema is not None else model
        row = {"epoch": epoch + 1, "train_loss": total_loss / seen, "lr": opt.param_groups[0]["lr"]}
        if evaluate_val:
            row["val_accuracy"] = accuracy(evaluated, data.x_val, data.y_val)
        history.append(row)
        if ckpt is not None:
            keys = list(history[0])
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "shuffle_rng": gen.get_state(), "torch_rng": torch.get_rng_state(),
                     "mixup_rng": json.dumps(rng.bit_generator.state),
                     "history_keys": keys, "history": torch.tensor([[r[k] for k in keys] for r in history],
                                                                    dtype=torch.float64)}
            if ema is not None:
                state["ema"] = ema.state_dict()
            with atomic_path(ckpt) as tmp:
                torch.save(state, tmp)
        if on_epoch is not None:
            on_epoch(epoch + 1, row)
    final = ema.module if ema is not None else model
    final.eval()
    return TrainResult(final, history, history[-1].get("val_accuracy", float("nan")) if history else float("nan"))
