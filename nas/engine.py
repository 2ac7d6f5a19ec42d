"""The one training engine: every trainer (a child, a supernet, a QAT net, a dynamic ViT) runs through it.

A trainer is an ``EpochTask``: it trains one epoch and returns that epoch's row, and it saves and restores its own
state (weights, optimisers, random streams). The ``Engine`` owns everything around it: the accelerator and its
precision (autocast, fp16 loss scaling), the torch threads, the batches (in memory, or streamed through a
``DataLoader`` with workers, moved to the device, augmented there), the per-epoch checkpoint written atomically
(a rerun resumes from it), and data parallelism (``nas.distributed``: only rank 0 writes; ``nas.shares``: the
ranks act as slices of one process).
"""

from __future__ import annotations

import json
import re
import weakref
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from torch import nn

from nas import shares
from nas.accelerator import Accelerator, check_per_core, resolve_accelerator
from nas.augment import augment_batch
from nas.datasets import Split, split_batches
from nas.distributed import World, current_world, join_process_group
from nas.errors import AcceleratorError, HwnasError, TrainingError
from nas.files import atomic_path

EpochCallback = Callable[[int, dict], None]


class EpochTask(Protocol):
    """One trainer: its state (saved beside the engine's keys history, torch_rng, world_size, accelerator)."""

    def state(self) -> dict: ...

    def load(self, state: dict) -> None: ...

    def epoch(self, index: int) -> dict: ...


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
            raise AcceleratorError(f"--workers must be 0 or more (DataLoader processes), got {workers}")
        check_per_core("--workers", workers, "DataLoader processes")
        self.accelerator = accelerator or Accelerator(threads=torch.get_num_threads())
        self.workers = workers
        self.world = world or current_world()
        self.scaler = self.accelerator.grad_scaler()
        self._placed: list[weakref.ref] = []  # under data parallelism: the models shared across the ranks

    @property
    def device(self) -> torch.device:
        return self.world.device(self.accelerator)

    def record(self) -> dict:
        """What config.json and report.json record: the accelerator, its name, precision, threads, world size."""
        return {**self.accelerator.to_dict(), "world_size": self.world.size}

    def place(self, model: nn.Module, channels_last: bool = True) -> nn.Module:
        """Move ``model`` to the device, by default in channels-last layout (depthwise-heavy CNNs train 2.5-4x
        faster so on the CPU, measured here)."""
        if self.world.size > 1:
            self._placed.append(weakref.ref(model))
        if channels_last:
            return model.to(self.device, memory_format=torch.channels_last)
        return model.to(self.device)

    def batches(self, split: Split, batch_size: int, generator: torch.Generator | None = None,
                augment: str = "none") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(x, y) batches of ``split`` on the device; shuffled by ``generator`` (None: in order) and, under data
        parallelism, this rank's share of each global batch. ``augment`` (the recipe's) applies to them there."""
        augmenting = None
        if augment != "none" and generator is not None:  # one seed per pass from the shuffle stream, per rank
            seed = int(torch.randint(2 ** 62, (1,), generator=generator)) + self.world.rank
            augmenting = torch.Generator().manual_seed(seed)
        for x, y in split_batches(split, batch_size, generator, workers=self.workers, world=self.world,
                                  pin_memory=self.accelerator.kind == "cuda"):
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(self.device, non_blocking=True)
            if augmenting is not None:
                x = augment_batch(x, augment, augmenting)
            yield x, y

    def autocast(self):
        return self.accelerator.autocast()

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, *,
                      clip_params=None, clip_norm: float = 0.0) -> None:
        """Backward (scaled for fp16), gradients averaged across ranks, optional clipping, one optimiser step."""
        self.scaler.scale(loss).backward()
        self.world.average_gradients(p for group in optimizer.param_groups for p in group["params"])
        if clip_norm > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(clip_params, clip_norm)
        self.scaler.step(optimizer)
        self.scaler.update()

    def run(self, task: EpochTask, epochs: int, *, checkpoint: str | Path | None = None,
            on_epoch: EpochCallback | None = None, threads: int | None = None, what: str = "training",
            error: type[HwnasError] = TrainingError) -> list[dict]:
        """Train ``task`` for ``epochs`` epochs, resuming from ``checkpoint`` when it exists and saving it (rank 0)
        after every epoch. ``threads`` overrides the accelerator's torch threads for this run."""
        with self.accelerator.threads_in_use(threads):
            return self._run(task, epochs, Path(checkpoint) if checkpoint else None, on_epoch, what, error)

    def _run(self, task: EpochTask, epochs: int, ckpt: Path | None, on_epoch: EpochCallback | None, what: str,
             error: type[HwnasError]) -> list[dict]:
        history: list[dict] = []
        if ckpt is not None and ckpt.is_file():
            state = load_checkpoint(ckpt, what, error)
            self._check_resume(ckpt, state, error)
            try:
                task.load(state)
            except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a state of another shape
                raise corrupt_checkpoint(ckpt, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}", what,
                                         error) from None
            history = json.loads(state["history"])
            torch.set_rng_state(state["torch_rng"])
        for index in range(len(history), epochs):
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            with shares.sharing(self.world, self._placed_models()):
                row = task.epoch(index)
            if self.device.type == "cuda":  # the epoch's peak, for the history's readers
                row["gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
            history.append(row)
            if ckpt is not None and self.world.is_writer:
                state = {**task.state(), "history": json.dumps(history), "torch_rng": torch.get_rng_state(),
                         "world_size": self.world.size, "accelerator": self.accelerator.kind}
                with atomic_path(ckpt, size_hint=tensor_bytes(state)) as tmp:
                    torch.save(state, tmp)
            if on_epoch is not None and self.world.is_writer:
                on_epoch(index + 1, row)
        return history

    def _placed_models(self) -> list[nn.Module]:
        models = [ref() for ref in self._placed]
        self._placed = [ref for ref, model in zip(self._placed, models) if model is not None]
        return [model for model in models if model is not None]

    def _check_resume(self, ckpt: Path, state: dict, error: type[HwnasError]) -> None:
        size, kind = int(state.get("world_size", 1)), state.get("accelerator", "cpu")
        if size != self.world.size:
            raise error(f"{ckpt}: saved by {size} process{'es' if size > 1 else ''}, resumed with "
                        f"{self.world.size}; resume with the same world size, or choose a new --out")
        if kind != self.accelerator.kind:
            raise error(f"{ckpt}: saved training on {kind}, resumed on {self.accelerator.kind}; resume with "
                        f"--accelerator {kind}, or choose a new --out")


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
