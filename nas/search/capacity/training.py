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

from nas.data.dataset import Dataset
from nas.data.splits import Split
from nas.search.capacity.config import StaticPlan, capacity_factor_plan
from nas.search.capacity.vit import ConfiguredViT, DynamicViT
from nas.train.engine import Engine, EpochCallback, OptimizerStep, StepLoss
from nas.train.evaluation import split_accuracy
from nas.train.recipe import Recipe
from nas.train.training import lr_factor, make_optimizer

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


def plan_accuracy(model: DynamicViT, plan: StaticPlan, split: Split, engine: Engine | None = None,
                  batch_size: int = 64) -> float:
    """Accuracy of ``model`` at ``plan`` on a whole split, streamed (``nas.train.evaluation.split_accuracy``)."""
    return split_accuracy(ConfiguredViT(model, plan), split, engine, batch_size)


class DynamicTraining:
    """One once-for-all epoch (an ``nas.train.engine.EpochTask``); its randomness is seeded by (seed, epoch)."""

    def __init__(self, model: DynamicViT, data: Dataset, recipe: Recipe, engine: Engine, shift_pixels: int,
                 on_step: Callable[[], None] | None):
        self.model = engine.place(model, channels_last=False)  # a ViT gains nothing from channels-last
        self.data, self.recipe, self.engine = data, recipe, engine
        self.shift_pixels, self.on_step = shift_pixels, on_step
        self.opt = make_optimizer(model.parameters(), recipe)
        steps_per_epoch = math.ceil(len(data.train) / recipe.batch_size)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(recipe, s, steps_per_epoch))
        stages = len(model.space.stages)
        self.full_only = full_only_epochs(model, recipe.epochs)
        self.monitor = capacity_factor_plan(model.space, [MONITOR_KEEP_RATIO] * stages, 1.0)
        self.full = capacity_factor_plan(model.space, [1.0] * stages, 1.0)
        self.step = OptimizerStep(self.loss, self.opt, self.sched,
                                  clip_norm=model.space.spec.dynamic_training.grad_clip)
        self.epoch_index, self.gen, self.rng = 0, torch.Generator(), np.random.default_rng(0)

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict()}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> StepLoss:
        """A sampled config's cross-entropy (with ``distill``: plus the full config's, and the sampled one distilled
        from it), plus the capacity predictors' loss."""
        model, recipe = self.model, self.recipe
        dyn = model.space.spec.dynamic_training
        stages = len(model.space.stages)
        x = random_shift(x, self.shift_pixels, self.gen)
        ratios, capacity = sample_config(model, self.rng, self.epoch_index, self.full_only)
        full_capacity = model.space.spec.moe.train_capacity[1]
        logits, aux = model.forward_train(x, ratios, capacity, self.gen)
        loss = F.cross_entropy(logits, y, label_smoothing=recipe.label_smoothing)
        if dyn.distill and (min(ratios, default=1.0) < 1.0 or (model.space.moe_blocks and capacity < full_capacity)):
            full_logits, full_aux = model.forward_train(x, [1.0] * stages, full_capacity, self.gen)
            loss = loss + F.cross_entropy(full_logits, y, label_smoothing=recipe.label_smoothing) + \
                F.kl_div(F.log_softmax(logits, -1), F.log_softmax(full_logits.detach(), -1), log_target=True,
                         reduction="batchmean")
            aux = aux + full_aux
        return loss + dyn.predictor_loss_weight * aux, {"train_loss": loss.item() * len(y),
                                                        "predictor_loss": float(aux.detach()) * len(y)}

    def epoch(self, epoch: int) -> dict:
        model, recipe, engine = self.model, self.recipe, self.engine
        self.epoch_index = epoch
        self.gen = torch.Generator().manual_seed(recipe.seed * 100_003 + epoch)
        self.rng = np.random.default_rng([recipe.seed, epoch])
        model.train()
        figures = engine.train_pass(self.data.train, recipe.batch_size, self.gen, [self.step], on_batch=self.on_step)
        model.eval()
        full = plan_accuracy(model, self.full, self.data.val, engine, recipe.batch_size)
        # a dense space (no stages, no experts) has one plan: its validation pass is not run twice
        monitor = full if self.monitor == self.full else plan_accuracy(model, self.monitor, self.data.val, engine,
                                                                       recipe.batch_size)
        return {"epoch": epoch + 1, "train_loss": figures.get("train_loss", math.nan),
                "predictor_loss": figures.get("predictor_loss", math.nan), "lr": self.opt.param_groups[0]["lr"],
                "val_accuracy_full": full, f"val_accuracy_keep{MONITOR_KEEP_RATIO:g}": monitor}


def train_dynamic(model: DynamicViT, data: Dataset, recipe: Recipe, *, engine: Engine | None = None,
                  shift_pixels: int = 2, checkpoint: str | Path | None = None,
                  on_epoch: EpochCallback | None = None,
                  on_step: Callable[[], None] | None = None) -> DynamicTrainResult:
    """Train ``model`` once-for-all on the train split through ``engine``; report validation accuracy at two
    configs per epoch. The model comes back on the CPU."""
    torch.manual_seed(recipe.seed)
    engine = engine or Engine()
    task = DynamicTraining(model, data, recipe, engine, shift_pixels, on_step)
    try:
        history = engine.run(task, recipe.epochs, checkpoint=checkpoint, on_epoch=on_epoch)
    finally:
        engine.release(model)
    model.eval()
    return DynamicTrainResult(model, history)
