"""The end of every search: train the chosen arch with the recipe, export it, check parity, measure latency."""

from __future__ import annotations

from typing import Callable

import pandas as pd
import torch

from nas.arch.space import Arch, Space, arch_document
from nas.data.dataset import Dataset
from nas.latency.drift import measure_shipped
from nas.latency.measurement import MeasuringDevice
from nas.latency.table import LatencyTable
from nas.models.builder import build_model, count_macs, count_params
from nas.models.onnx_io import export_onnx
from nas.run import RunDir
from nas.train.distributed import FollowerDone
from nas.train.engine import Engine, EpochCallback
from nas.train.evaluation import split_parity
from nas.train.recipe import Recipe
from nas.train.training import train_model


def train_export_measure(space: Space, arch: Arch, data: Dataset, recipe: Recipe, run: RunDir, *,
                         measure_on: MeasuringDevice, on_epoch: EpochCallback | None = None,
                         predict_ms: Callable[[Arch], float] | None = None, prefix: str = "",
                         table: LatencyTable | None = None, engine: Engine | None = None) -> dict:
    """Train ``arch`` (resumable through ``run``) with ``engine``, export ``model.onnx``, compare it with the torch
    model over the test split (streamed: accuracy of both, largest output difference), time it ``measure_on``
    (``nas.latency.measurement.measuring_device``; on the device itself, after the drift check on ``table``'s
    reference models) and return the figures. Under torchrun, ranks above 0 stop after training (``FollowerDone``).

    ``prefix`` names the files (``{prefix}model.onnx`` ...) so that a run can hold several models.
    """
    run.write_json(f"{prefix}arch.json", arch_document(space, arch))
    torch.manual_seed(recipe.seed)  # the initial weights depend on the seed alone, not on what ran before
    model = build_model(space, arch, dropout=recipe.dropout)
    result = train_model(model, data, recipe, engine=engine, on_epoch=on_epoch,
                         checkpoint=run.file(f"{prefix}checkpoint.pt"))
    if engine is not None and not engine.world.is_writer:
        raise FollowerDone(f"rank {engine.world.rank} trained its share")
    run.write_csv(f"{prefix}train_history.csv", pd.DataFrame(result.history))
    model = result.model
    onnx_path = export_onnx(model, model.input_shape, run.file(f"{prefix}model.onnx"), normalization=data.normalization)
    parity = split_parity(model, {"model": onnx_path}, data.test, engine=engine, batch_size=recipe.batch_size)
    measurement = measure_shipped(onnx_path, measure_on, table=table)
    report = {
        "arch": arch.to_dict(),
        "accuracy": parity.accuracy,
        "val_accuracy": result.val_accuracy,
        "accuracy_onnx": parity.files["model"]["accuracy_onnx"],
        "onnx_max_abs_diff": parity.files["model"]["onnx_max_abs_diff"],
        "measured_ms": measurement.p50_ms,
        "measured_p90_ms": measurement.p90_ms,
        "measurement": measurement.to_dict(),
        "macs": count_macs(model, model.input_shape),
        "params": count_params(model),
        "timing": measure_on.device.to_dict(),
        "onnx": onnx_path.name,
        "normalization": data.normalization,
    }
    if predict_ms is not None:
        report["predicted_ms"] = predict_ms(arch)
    return report

