"""Evaluators of model spaces (the protocol, ``evaluate(candidate) -> dict of metrics``, is
``nas.search.blackbox.problem.Evaluator``).

- ``TrainEvaluator``: build the candidate's arch, train it on a dataset with the candidate's recipe (optionally
  capped at ``max_epochs``: the per-evaluation budget), report validation and test accuracy. Resumable: each
  evaluation checkpoints every epoch under ``checkpoint_dir``, and a rerun continues the interrupted one.
- ``nas.search.predict.table_space.TableEvaluator``: a row lookup in the user's CSV.
- ``nas.search.capacity.evaluate.CapacityEvaluator``: inference-only evaluation of a dynamic-capacity config.

Searches do not call ``evaluate`` directly but go through ``nas.search.blackbox.history.History``, which counts every
call against the budget and keeps the log (``history.csv``).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import torch

from nas.data.dataset import Dataset
from nas.latency.device import Device
from nas.models.builder import build_model, count_macs, count_params
from nas.search.predict.joint_space import Candidate, JointSpace
from nas.train.accelerator import Accelerator
from nas.train.engine import Engine, EpochCallback
from nas.train.evaluation import split_accuracy
from nas.train.training import train_model


class TrainEvaluator:
    """Train-and-test on ``data``: the candidate's recipe, at most ``max_epochs`` epochs when given."""

    metrics = ("val_accuracy", "test_accuracy", "macs", "params", "epochs_trained", "train_seconds")

    def __init__(self, joint: JointSpace, data: Dataset, *, max_epochs: int | None = None,
                 checkpoint_dir: str | Path | None = None, on_epoch: EpochCallback | None = None,
                 measure_on: Device | None = None, engine: Engine | None = None):
        self.joint, self.data = joint, data
        self.max_epochs = max_epochs
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.on_epoch = on_epoch
        self.measure_on = measure_on  # when set, also export and time each model on this device (measured_ms)
        # the training engine (``search_setup.evaluation_engine``). One CPU thread by default: the predictor
        # searches train many tiny models, which run about as fast on one thread, and local workers each take a core.
        self.engine = engine or Engine(Accelerator(threads=1))

    def _checkpoint(self, candidate: Candidate) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        digest = hashlib.sha1((candidate.arch.to_json() + candidate.recipe.model_dump_json()).encode()).hexdigest()
        return self.checkpoint_dir / f"eval-{digest[:16]}.pt"

    def evaluate(self, candidate: Candidate) -> dict[str, float]:
        space = self.joint.space
        recipe = candidate.recipe
        if self.max_epochs is not None and recipe.epochs > self.max_epochs:
            recipe = recipe.model_copy(update={"epochs": self.max_epochs})
        torch.manual_seed(recipe.seed)  # the weight init too: an evaluation depends on the candidate alone
        model = build_model(space, candidate.arch, dropout=recipe.dropout)
        ckpt = self._checkpoint(candidate)
        start = time.perf_counter()
        result = train_model(model, self.data, recipe, engine=self.engine, on_epoch=self.on_epoch, checkpoint=ckpt)
        seconds = time.perf_counter() - start
        trained = result.model
        metrics = {
            "val_accuracy": float(result.val_accuracy),
            "test_accuracy": split_accuracy(trained, self.data.test, self.engine, recipe.batch_size),
            "macs": float(count_macs(trained, trained.input_shape)),
            "params": float(count_params(trained)),
            "epochs_trained": float(recipe.epochs),
            "train_seconds": seconds,
        }
        if self.measure_on is not None:
            from nas.models.onnx_io import export_onnx
            with tempfile.TemporaryDirectory() as tmp:
                path = export_onnx(trained, trained.input_shape, Path(tmp) / "model.onnx")
                metrics["measured_ms"] = self.measure_on.time_file(path).p50_ms
        if ckpt is not None and ckpt.is_file():
            ckpt.unlink()  # the evaluation is recorded in history.csv; the checkpoint served only to resume it
        return metrics
