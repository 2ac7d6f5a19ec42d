"""Evaluating a model on a split, streamed batch by batch: accuracy, and parity against its ONNX files.

A split is evaluated in batches of the trainer's batch size (``batch_size``; ``EVAL_BATCH_SIZE`` where none is
given): a training step already holds that many images with their activations and gradients, so evaluation never
needs more memory than training does, whatever the split's size (measured at 160 px: batches of 512 images raised
the peak memory of ``hwnas train`` by 0.85 GB in torch and by 0.4 GB more in ONNX parity).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from nas.data.splits import Split
from nas.models.onnx_io import cpu_session, max_abs_diff, run_onnx
from nas.train.loader import SplitLoader

if TYPE_CHECKING:
    from nas.train.engine import Engine


def fit_input(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Resize a batch to the model's input resolution when the arch chose another one (channels-last layout)."""
    shape = getattr(model, "input_shape", None)
    if shape is not None and x.shape[-1] != shape[-1]:
        x = F.interpolate(x, size=shape[-2:], mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last)


def model_device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


EVAL_BATCH_SIZE = 64  # images per forward pass when evaluating without a trainer's batch size (the default recipe's)


def evaluation_batches(model: nn.Module, split: Split, engine: Engine | None = None,
                       batch_size: int = EVAL_BATCH_SIZE) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The whole of ``split`` in order, as (x, y) batches on ``model``'s device with x resized to its input
    (``fit_input``). A streamed split is decoded one batch at a time (in ``engine``'s DataLoader workers, which
    persist between passes), never whole; under data parallelism every rank reads all of it."""
    device = model_device(model)
    loader = engine.loader(split) if engine is not None else SplitLoader(split, pin_memory=device.type == "cuda")
    for x, y in loader.batches(batch_size):
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


@dataclass
class SplitParity:
    """A torch model and its exported ONNX files, compared over one split."""

    accuracy: float  # the torch model's
    files: dict[str, dict[str, float]]  # per ONNX file: accuracy_onnx, onnx_max_abs_diff, onnx_top1_agreement


def split_parity(model: nn.Module, onnx_files: dict[str, str | Path | ort.InferenceSession], split: Split, *,
                 engine: Engine | None = None, batch_size: int | None = None) -> SplitParity:
    """One streamed pass over ``split`` (``evaluation_batches``: batches of ``batch_size`` images, resized to the
    model's input, decoded once each and fed to torch and to every ONNX file): the torch model's accuracy, and each
    file's accuracy, largest output difference from torch and top-1 agreement with it. ``onnx_files`` maps names to
    sessions, or to paths (opened as a ``cpu_session``); ``engine`` lends its DataLoader workers to decode a
    streamed split."""
    sessions = {name: s if isinstance(s, ort.InferenceSession) else cpu_session(s) for name, s in onnx_files.items()}
    tally = {name: {"correct": 0, "agree": 0, "diff": 0.0} for name in sessions}
    seen, correct = 0, 0
    model.eval()
    with torch.no_grad():
        for x, y in evaluation_batches(model, split, engine, batch_size or EVAL_BATCH_SIZE):
            logits = model(x).float()
            correct += int((logits.argmax(1) == y).sum())
            ref, labels, x = logits.cpu().numpy(), y.cpu().numpy(), x.cpu().numpy()
            seen += len(labels)
            for name, sess in sessions.items():
                out = run_onnx(sess, x)
                tally[name]["correct"] += int((out.argmax(1) == labels).sum())
                tally[name]["agree"] += int((out.argmax(1) == ref.argmax(1)).sum())
                tally[name]["diff"] = max(tally[name]["diff"], max_abs_diff(out, ref))
    n = max(seen, 1)
    return SplitParity(correct / n, {name: {"accuracy_onnx": t["correct"] / n, "onnx_max_abs_diff": t["diff"],
                                            "onnx_top1_agreement": t["agree"] / n} for name, t in tally.items()})
