"""Once-for-all training of the dynamic-capacity ViT: one set of weights for every config of the space.

Every batch samples a keep ratio per pruning stage and a capacity factor (DiffMoE's batch-pool expert choice);
a share of batches trains the full config, and the first ``full_only_epochs`` (at most a third of the run) train
only the full config (once-for-all's progressive shrinking: the largest network first). With ``distill`` each
step also runs the full config and distils it into the sampled one (the sandwich rule of once-for-all / BigNAS
training; DynamicViT distils from the unpruned model too). The capacity predictors learn the experts' choices
alongside. Training is resumable: the state is saved atomically after every epoch, and each epoch's randomness
is seeded by (seed, epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from nas.capacity.config import StaticPlan, capacity_factor_plan
from nas.capacity.vit import ConfiguredViT, DynamicViT
from nas.data import Dataset
from nas.files import atomic_path
from nas.recipe import Recipe
from nas.training import accuracy, lr_factor, make_optimizer, restored_history

EpochCallback = Callable[[int, dict], None]
MONITOR_KEEP_RATIO = 0.7  # the pruned config reported per epoch


@dataclass
class DynamicTrainResult:
    model: DynamicViT
    history: list[dict] = field(default_factory=list)


def full_only_epochs(model: DynamicViT, epochs: int) -> int:
    """Epochs that train the full config alone: the space's ``full_only_epochs``, at most a third of the run,
    so that a short run (fewer epochs than the space's recipe) still trains the sampled configs."""
    return min(model.space.spec.dynamic_training.full_only_epochs, epochs // 3)


def sample_config(model: DynamicViT, rng: np.random.Generator, epoch: int = 0,
                  full_only: int | None = None) -> tuple[list[float], float]:
    """A keep ratio per stage and a capacity factor for one batch (the full config during the first
    ``full_only`` epochs, as once-for-all's progressive shrinking trains the largest network first)."""
    s = model.space.spec
    low, high = s.moe.train_capacity
    full = rng.random() < s.dynamic_training.full_config_prob
    if full_only is None:
        full_only = s.dynamic_training.full_only_epochs
    if full or epoch < full_only:
        return [1.0] * len(model.space.stages), high
    ratios = rng.uniform(s.dynamic_training.min_keep_ratio, 1.0, len(model.space.stages)).tolist()
    return ratios, float(rng.uniform(low, high))


def random_shift(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``pixels`` in each direction (edge padding); a cheap augmentation."""
    if pixels <= 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (pixels,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * pixels + 1, (len(x), 2), generator=gen)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def plan_accuracy(model: DynamicViT, plan: StaticPlan, x: torch.Tensor, y: torch.Tensor) -> float:
    return accuracy(ConfiguredViT(model, plan), x, y)


def train_dynamic(model: DynamicViT, data: Dataset, recipe: Recipe, *, shift_pixels: int = 2,
                  checkpoint: str | Path | None = None, on_epoch: EpochCallback | None = None,
                  on_step: Callable[[], None] | None = None) -> DynamicTrainResult:
    """Train ``model`` once-for-all on the train split; report validation accuracy at two configs per epoch."""
    dyn = model.space.spec.dynamic_training
    torch.manual_seed(recipe.seed)
    opt = make_optimizer(model.parameters(), recipe)
    steps_per_epoch = math.ceil(len(data.y_train) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(recipe, s, steps_per_epoch))
    history: list[dict] = []
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = restored_history(state)
    stages = len(model.space.stages)
    full_only = full_only_epochs(model, recipe.epochs)
    monitor = capacity_factor_plan(model.space, [MONITOR_KEEP_RATIO] * stages, 1.0)
    full = capacity_factor_plan(model.space, [1.0] * stages, 1.0)
    for epoch in range(len(history), recipe.epochs):
        gen = torch.Generator().manual_seed(recipe.seed * 100_003 + epoch)
        rng = np.random.default_rng([recipe.seed, epoch])
        model.train()
        order = torch.randperm(len(data.y_train), generator=gen)
        total, aux_total, seen = 0.0, 0.0, 0
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            x, y = random_shift(data.x_train[idx], shift_pixels, gen), data.y_train[idx]
            ratios, capacity = sample_config(model, rng, epoch, full_only)
            logits, aux = model.forward_train(x, ratios, capacity, gen)
            loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
            full_capacity = model.space.spec.moe.train_capacity[1]
            if dyn.distill and (min(ratios, default=1.0) < 1.0 or (model.space.moe_blocks and capacity < full_capacity)):
                full_logits, full_aux = model.forward_train(x, [1.0] * stages, full_capacity, gen)
                loss = loss + F.cross_entropy(full_logits, y, label_smoothing=recipe.label_smoothing) + \
                    F.kl_div(F.log_softmax(logits, -1), F.log_softmax(full_logits.detach(), -1),
                             log_target=True, reduction="batchmean")
                aux = aux + full_aux
            total_loss = loss + dyn.predictor_loss_weight * aux
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(total_loss):  # a non-finite step is skipped, not applied
                total_loss.backward()
                if dyn.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), dyn.grad_clip)
                opt.step()
            sched.step()
            total += loss.item() * len(idx)
            aux_total += float(aux.detach()) * len(idx)
            seen += len(idx)
            if on_step is not None:
                on_step()
        model.eval()
        row = {"epoch": epoch + 1, "train_loss": total / seen, "predictor_loss": aux_total / seen,
               "lr": opt.param_groups[0]["lr"],
               "val_accuracy_full": plan_accuracy(model, full, data.x_val, data.y_val),
               f"val_accuracy_keep{MONITOR_KEEP_RATIO:g}": plan_accuracy(model, monitor, data.x_val, data.y_val)}
        history.append(row)
        if ckpt is not None:
            keys = list(history[0])
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "history_keys": keys,
                     "history": torch.tensor([[r[k] for k in keys] for r in history], dtype=torch.float64)}
            with atomic_path(ckpt) as tmp:
                torch.save(state, tmp)
        if on_epoch is not None:
            on_epoch(epoch + 1, row)
    model.eval()
    return DynamicTrainResult(model, history)
