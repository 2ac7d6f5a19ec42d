"""The one training engine: every trainer (a child, a supernet, a QAT net, a dynamic ViT) runs through it.

A trainer is an ``EpochTask``. It supplies what is its own: the loss of a batch (``OptimizerStep.loss``, as a
Lightning ``training_step``), its optimisers and schedules, its state (weights, optimisers, random streams), and an
epoch as passes over splits (``Engine.train_pass``, ``Engine.evaluate_pass``): a DNAS epoch is a pass of weight
steps over the train split, then a pass of architecture steps over the validation split, and a pass may run several
kinds of step on every batch. The ``Engine`` owns everything else, once for every trainer:

- the accelerator and its precision: autocast around the loss, the fp16 loss scaler (``torch.amp.GradScaler``,
  whose state is checkpointed), the torch threads;
- the batches: in memory, or streamed through DataLoaders whose workers persist across epochs and evaluations
  (``nas.train.loader``), moved to the device and augmented there;
- the step: zero the gradients, backward (scaled), average the gradients over the ranks, clip, step the optimiser
  (through the scaler), step the schedule;
- the non-finite-loss policy (``NONFINITE_STEPS_IN_A_ROW``), the same on every rank;
- the per-epoch checkpoint, written atomically (a rerun resumes from it);
- data parallelism (``nas.train.distributed``: only rank 0 writes; ``nas.train.sync_layers``: the placed models'
  batch norms and dropouts act on the whole global batch, converted once in ``place`` and back in ``release``).

Non-finite loss: a step whose loss is NaN or infinite on any rank is skipped on every rank (no backward, no
optimiser step; the schedule still advances, so that it stays in step with the batches) and counted in the epoch's
``skipped_steps``. Training stops with the trainer's error (``TrainingError``, ``SearchError``) when
``NONFINITE_STEPS_IN_A_ROW`` steps in a row were skipped, or when an epoch skipped every step it took: a diverged
model does not recover by skipping, while a rare bad batch (an fp16 overflow in the forward pass, a corrupt image)
costs one step. Gradients that overflow under fp16 loss scaling with a finite loss are the scaler's business (it
skips that optimiser step and lowers its scale), as in torch.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import torch
from torch import nn

from nas.data.augment import augment_batch
from nas.data.splits import Split
from nas.errors import AcceleratorError, HwnasError, TrainingError
from nas.files import atomic_path
from nas.train.accelerator import Accelerator, check_per_core, resolve_accelerator
from nas.train.distributed import World, current_world, join_process_group
from nas.train.loader import SplitLoader
from nas.train.sync_layers import convert_shared_layers, revert_shared_layers

EpochCallback = Callable[[int, dict], None]
Batch = tuple[torch.Tensor, torch.Tensor]
# A batch's loss and its figures: sums over the batch's samples (a mean loss times the batch size, a count of
# correct answers), which a pass reports per sample.
StepLoss = tuple[torch.Tensor, dict[str, float]]
NONFINITE_STEPS_IN_A_ROW = 3  # skipped steps in a row that stop training


class PassFigures(dict):
    """A pass's figures per sample (of the steps applied, over the ranks), and ``samples``: how many it read."""

    samples: int = 0


class EpochTask(Protocol):
    """One trainer: its state (saved beside the engine's keys history, torch_rng, world_size, accelerator,
    grad_scaler) and one epoch, as passes through the engine, returning the epoch's row."""

    def state(self) -> dict: ...

    def load(self, state: dict) -> None: ...

    def epoch(self, index: int) -> dict: ...


@dataclass
class OptimizerStep:
    """One kind of optimiser step. ``loss(x, y)`` is the trainer's step on a batch (run under autocast); the engine
    applies ``optimizer`` to its gradient, clipped to ``clip_norm`` (0: not clipped), then steps ``scheduler``.
    ``frozen`` parameters take no gradient in a step of this kind (DNAS's weights while its architecture trains);
    ``after`` runs after every applied step (an EMA update, a controller reading the new architecture)."""

    loss: Callable[[torch.Tensor, torch.Tensor], StepLoss]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    clip_norm: float = 0.0
    frozen: Sequence[nn.Parameter] = ()
    after: Callable[[], None] | None = None

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]


NOT_PLAIN = "not a plain checkpoint"


def corrupt_checkpoint(path: Path, reason: str, what: str, error: type[HwnasError]) -> HwnasError:
    head = reason if reason.startswith(NOT_PLAIN) else f"corrupt {what} checkpoint ({reason})"
    return error(f"{path}: {head}; delete it to restart the {what} from epoch 1 in the same --out, or choose a "
                 f"new --out")


def unreadable_reason(error: Exception) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in one phrase. A file the weights-only reader refuses
    (one holding pickled Python objects) is "not a plain checkpoint"; torch's advice to load it without that
    protection is never passed on."""
    text = " ".join(str(error).split()) or type(error).__name__
    if "weights only load failed" not in text.lower() and "weightsunpickler" not in text.lower():
        return text[:200]
    detail = re.search(r"WeightsUnpickler error: (.*?)(?:\.? Please use|\.? Check the documentation|$)", text)
    return (f"{NOT_PLAIN} ({detail.group(1).rstrip('.') if detail else 'it holds more than tensors'}): hwnas reads "
            f"tensors and plain containers only")


def load_checkpoint(path: Path, what: str = "training", error: type[HwnasError] = TrainingError) -> dict:
    """A saved engine state; ``error`` saying how to restart when it cannot be read."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # truncated zip, unpickling refusal, not a torch file
        raise corrupt_checkpoint(path, unreadable_reason(e), what, error) from None
    if not isinstance(state, dict) or "history" not in state:
        raise corrupt_checkpoint(path, f"not a saved {what} state", what, error)
    return state


class Engine:
    """Trains an ``EpochTask`` on an ``Accelerator``; ``workers`` DataLoader processes decode streamed data."""

    def __init__(self, accelerator: Accelerator | None = None, *, workers: int = 0, world: World | None = None):
        if workers < 0:
            raise AcceleratorError(f"--loader-workers must be 0 or more (DataLoader processes), got {workers}")
        check_per_core("--loader-workers", workers, "DataLoader processes")
        self.accelerator = accelerator or Accelerator(threads=torch.get_num_threads())
        self.workers = workers
        self.world = world or current_world()
        self.scaler = self.accelerator.grad_scaler()
        self._loaders: dict[int, SplitLoader] = {}  # by id(split); the loader holds the split, so ids stay unique
        self._error: type[HwnasError] = TrainingError  # what the running trainer raises
        self._epoch, self._skipped, self._applied, self._in_a_row = 0, 0, 0, 0

    @property
    def device(self) -> torch.device:
        return self.world.device(self.accelerator)

    def record(self) -> dict:
        """What config.json and report.json record: the accelerator, its name, precision, threads, world size."""
        return {**self.accelerator.to_dict(), "world_size": self.world.size}

    # ---- models -------------------------------------------------------------------------------------------------
    def place(self, model: nn.Module, channels_last: bool = True) -> nn.Module:
        """Move ``model`` to the device, by default in channels-last layout (depthwise-heavy CNNs train 2.5-4x
        faster so on the CPU, measured here); under data parallelism its batch norms and dropouts act on the whole
        global batch (``nas.train.sync_layers``) until ``release``."""
        convert_shared_layers(model, self.world)
        if channels_last:
            return model.to(self.device, memory_format=torch.channels_last)
        return model.to(self.device)

    @staticmethod
    def release(model: nn.Module) -> nn.Module:
        """``model`` back on the CPU with plain layers, as export and the rest of a run expect it."""
        return revert_shared_layers(model).cpu()

    # ---- batches ------------------------------------------------------------------------------------------------
    def loader(self, split: Split) -> SplitLoader:
        """The loader of every pass over ``split`` (its DataLoader workers persist between passes)."""
        loader = self._loaders.get(id(split))
        if loader is None:
            loader = SplitLoader(split, self.workers, pin_memory=self.accelerator.kind == "cuda")
            self._loaders[id(split)] = loader
        return loader

    def batches(self, split: Split, batch_size: int, generator: torch.Generator | None = None,
                augment: str = "none") -> Iterator[Batch]:
        """(x, y) batches of ``split`` on the device; shuffled by ``generator`` (None: in order) and, under data
        parallelism, this rank's share of each global batch. ``augment`` (the recipe's) applies to them there."""
        augmenting = None
        if augment != "none" and generator is not None:  # one seed per pass from the shuffle stream, per rank
            seed = int(torch.randint(2 ** 62, (1,), generator=generator)) + self.world.rank
            augmenting = torch.Generator().manual_seed(seed)
        for x, y in self.loader(split).batches(batch_size, generator, self.world):
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(self.device, non_blocking=True)
            if augmenting is not None:
                x = augment_batch(x, augment, augmenting)
            yield x, y

    def autocast(self):
        return self.accelerator.autocast()

    def full_precision(self):
        """Inside the loss: a part that must not autocast (a latency cost, a sample of the architecture)."""
        return torch.autocast(self.device.type, enabled=False)

    # ---- passes -------------------------------------------------------------------------------------------------
    def train_pass(self, split: Split, batch_size: int, generator: torch.Generator | None,
                   steps: Sequence[OptimizerStep], *, augment: str = "none",
                   on_batch: Callable[[], None] | None = None) -> PassFigures:
        """One pass over ``split``: on every batch, each of ``steps`` in turn (its loss, then its optimiser step,
        or a skip under the non-finite policy). Returns the figures of the losses per sample (over the ranks, of the
        steps applied)."""
        sums: dict[str, list[float]] = {}
        samples = 0
        for x, y in self.batches(split, batch_size, generator, augment):
            samples += len(y)
            for step in steps:
                figures = self.train_step(step, x, y)
                if figures is not None:
                    _add(sums, figures, len(y))
            if on_batch is not None:
                on_batch()
        return self._per_sample(sums, samples)

    def train_step(self, step: OptimizerStep, x: torch.Tensor, y: torch.Tensor) -> dict[str, float] | None:
        """One step of ``step``'s kind on a batch: its loss under autocast, then the optimiser step. The batch's
        figures, or None when the step was skipped (the non-finite-loss policy)."""
        frozen = [p for p in step.frozen if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with self.autocast():
                loss, figures = step.loss(x, y)
            applied = self._apply(step, loss)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return figures if applied else None

    @torch.no_grad()
    def evaluate_pass(self, split: Split, batch_size: int, generator: torch.Generator | None,
                      figures: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]) -> PassFigures:
        """One pass over ``split`` without gradients: ``figures(x, y)`` (sums over the batch, under autocast) per
        sample over the whole split (and the ranks)."""
        sums: dict[str, list[float]] = {}
        samples = 0
        for x, y in self.batches(split, batch_size, generator):
            samples += len(y)
            with self.autocast():
                _add(sums, figures(x, y), len(y))
        return self._per_sample(sums, samples)

    def _per_sample(self, sums: dict[str, list[float]], samples: int) -> PassFigures:
        names = sorted(sums)
        *totals, samples = self.world.total(*(v for name in names for v in sums[name]), samples)
        figures = PassFigures({name: totals[2 * i] / totals[2 * i + 1] if totals[2 * i + 1] else math.nan
                               for i, name in enumerate(names)})
        figures.samples = int(samples)
        return figures

    def _apply(self, step: OptimizerStep, loss: torch.Tensor) -> bool:
        """One optimiser step from ``loss``, unless it is not finite on some rank (then skipped on every rank);
        the schedule advances either way. Whether the step was applied."""
        finite = bool(torch.isfinite(loss.detach()).all())
        if self.world.size > 1:  # every rank skips, or none (a lone rank would wait in the gradients' all-reduce)
            finite = self.world.total(float(not finite))[0] == 0
        if finite:
            step.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.world.average_gradients(step.params)
            if step.clip_norm > 0:
                self.scaler.unscale_(step.optimizer)
                torch.nn.utils.clip_grad_norm_(step.params, step.clip_norm)
            self.scaler.step(step.optimizer)
            self.scaler.update()
            self._applied += 1
            self._in_a_row = 0
        else:
            self._skipped += 1
            self._in_a_row += 1
        if step.scheduler is not None:
            with warnings.catch_warnings():
                if not finite:  # (a skipped first step is no misordering)
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler", UserWarning)
                step.scheduler.step()
        if not finite and self._in_a_row >= NONFINITE_STEPS_IN_A_ROW:
            raise self._diverged(loss, step, f"{self._in_a_row} steps in a row")
        if finite and step.after is not None:
            step.after()
        return finite

    def _diverged(self, loss: torch.Tensor, step: OptimizerStep, how: str) -> HwnasError:
        value = float(loss.detach().float().sum())
        became = f"became {value}" if not math.isfinite(value) else "became non-finite on another rank"
        return self._error(f"the training loss {became} in epoch {self._epoch} ({how} not finite, skipped; "
                           f"learning rate {step.optimizer.param_groups[0]['lr']:.3g}); lower the recipe's lr or "
                           f"check the data")

    # ---- epochs and checkpoints ---------------------------------------------------------------------------------
    def run(self, task: EpochTask, epochs: int, *, checkpoint: str | Path | None = None,
            on_epoch: EpochCallback | None = None, threads: int | None = None, what: str = "training",
            error: type[HwnasError] = TrainingError) -> list[dict]:
        """Train ``task`` for ``epochs`` epochs, resuming from ``checkpoint`` when it exists and saving it (rank 0)
        after every epoch. ``threads`` overrides the accelerator's torch threads for this run; ``error`` is what
        the trainer raises (a corrupt checkpoint, a diverged loss)."""
        self._error = error
        try:
            with self.accelerator.threads_in_use(threads):
                return self._run(task, epochs, Path(checkpoint) if checkpoint else None, on_epoch, what, error)
        finally:
            self._error = TrainingError

    def _run(self, task: EpochTask, epochs: int, ckpt: Path | None, on_epoch: EpochCallback | None, what: str,
             error: type[HwnasError]) -> list[dict]:
        history: list[dict] = []
        self._in_a_row = 0
        if ckpt is not None and ckpt.is_file():
            state = load_checkpoint(ckpt, what, error)
            self._check_resume(ckpt, state, error)
            try:
                task.load(state)
                if state.get("grad_scaler") and self.scaler.is_enabled():
                    self.scaler.load_state_dict(state["grad_scaler"])
            except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a state of another shape
                raise corrupt_checkpoint(ckpt, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}", what,
                                         error) from None
            history = json.loads(state["history"])
            torch.set_rng_state(state["torch_rng"])
            self._in_a_row = int(state.get("nonfinite_in_a_row", 0))
        for index in range(len(history), epochs):
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            self._epoch, self._skipped, self._applied = index + 1, 0, 0
            row = task.epoch(index)
            if self._skipped and not self._applied:
                raise error(f"the training loss was not finite at any of the {self._skipped} steps of epoch "
                            f"{index + 1} (all skipped); lower the recipe's lr or check the data")
            row["skipped_steps"] = self._skipped
            if self.device.type == "cuda":  # the epoch's peak, for the history's readers
                row["gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
            history.append(row)
            if ckpt is not None and self.world.is_writer:
                state = {**task.state(), "history": json.dumps(history), "torch_rng": torch.get_rng_state(),
                         "world_size": self.world.size, "accelerator": self.accelerator.kind,
                         "grad_scaler": self.scaler.state_dict(), "nonfinite_in_a_row": self._in_a_row}
                with atomic_path(ckpt, size_hint=tensor_bytes(state)) as tmp:
                    torch.save(state, tmp)
            if on_epoch is not None and self.world.is_writer:
                on_epoch(index + 1, row)
        return history

    def _check_resume(self, ckpt: Path, state: dict, error: type[HwnasError]) -> None:
        size, kind = int(state.get("world_size", 1)), state.get("accelerator", "cpu")
        if size != self.world.size:
            raise error(f"{ckpt}: saved by {size} process{'es' if size > 1 else ''}, resumed with "
                        f"{self.world.size}; resume with the same world size, or choose a new --out")
        if kind != self.accelerator.kind:
            raise error(f"{ckpt}: saved training on {kind}, resumed on {self.accelerator.kind}; resume with "
                        f"--accelerator {kind}, or choose a new --out")


def _add(sums: dict[str, list[float]], figures: dict[str, float], samples: int) -> None:
    """Add a batch's figures (sums over its ``samples``) to a pass's [sum, samples] per figure."""
    for name, value in figures.items():
        total = sums.setdefault(name, [0.0, 0.0])
        total[0] += float(value)
        total[1] += samples


def engine_for(accelerator: str = "auto", precision: str = "32", threads: int | None = None,
               workers: int = 0) -> Engine:
    """The engine the user asked for on the command line, checked against this machine (AcceleratorError
    otherwise: see ``resolve_accelerator``, and ``workers`` below 0), joined to the torchrun process group when
    started under torchrun."""
    chosen = resolve_accelerator(accelerator, precision, threads)
    return Engine(chosen, workers=workers, world=join_process_group(chosen.kind))


def tensor_bytes(state) -> int:
    """The bytes of the tensors in a (nested) checkpoint state: about what ``torch.save`` writes."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(v) for v in state)
    return 0
