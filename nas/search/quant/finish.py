"""One assignment, delivered: quantization-aware fine-tuning, calibration, ONNX export in QDQ and QOperator,
accuracy in torch and ONNX Runtime (with the largest logit difference over the test set and a warning when ONNX
Runtime is more than a point below torch), the file's size on disk, and the measured latency of every candidate
file (the faster format is kept)."""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass

import numpy as np

from nas.data.dataset import Dataset
from nas.files import atomic_path
from nas.latency.device import Device
from nas.models.onnx_io import export_onnx
from nas.progress import Progress, no_progress, stage
from nas.run import RunDir
from nas.search.quant.costs import LatencyCost, bitops_g, mean_weight_bits, size_mb
from nas.search.quant.export import FORMATS, exportable_formats, quantize_assignment
from nas.search.quant.graph import QuantGraph, attach_onnx, layer_io_bits
from nas.search.quant.mixed import BitOption, MixedPrecisionNet
from nas.train.engine import Engine
from nas.train.evaluation import fit_input, split_parity
from nas.train.recipe import Recipe
from nas.train.training import train_model

ACCURACY_GAP = 0.01  # an exported model this far below its torch twin is reported as a warning


@dataclass(kw_only=True)
class FinishSettings:
    lr: float = 5e-4  # fine-tuning learning rate
    batch_size: int = 64
    seed: int = 0
    calibration_samples: int = 256  # training images that calibrate the activation ranges
    formats: tuple[str, ...] = FORMATS


@dataclass
class Finished:
    name: str
    assignment: list[BitOption]
    figures: dict
    candidates: dict[str, str]  # format -> ONNX file
    out_name: str


def finish(net: MixedPrecisionNet, graph: QuantGraph, assignment: list[BitOption], name: str, data: Dataset,
           run: RunDir, settings: FinishSettings, epochs: int, out_name: str, *, cost_ms: LatencyCost | None,
           progress: Progress = no_progress, engine: Engine | None = None) -> Finished:
    """Quantization-aware fine-tuning of ``assignment`` (on ``engine``: the search's), then calibration, ONNX export
    in each format and accuracy (torch and ONNX Runtime); ``measure_and_choose`` times the candidates."""
    int8 = [o.runs_int8 for o in assignment]
    ins, outs = layer_io_bits(graph, int8, [o.a_bits for o in assignment])
    net.fix(assignment, ins, outs)
    if epochs > 0:
        recipe = Recipe(epochs=epochs, lr=settings.lr, batch_size=settings.batch_size, ema=0.0,
                        seed=settings.seed, weight_decay=1e-4)
        with stage(progress, f"fine-tune {name}", epochs) as advance:
            train_model(net, data, recipe, engine=engine, checkpoint=run.file(f"{name}_finetune.pt"),
                        on_epoch=lambda e, row: advance(note=f"val {row['val_accuracy']:.3f}"))
    net.fix(assignment, ins, outs)
    calib = data.train.first(settings.calibration_samples)
    net.calibrate(fit_input(calib, net))
    float_path = run.file(f"{name}_float.onnx")
    export_onnx(net.float_model(assignment), net.input_shape, float_path)
    g = attach_onnx(copy.deepcopy(graph.layers), float_path)
    ranges: dict[str, tuple[float, float]] = {}
    for info, layer in zip(g.layers, net.layers):
        ranges.setdefault(info.input_tensor, layer.observer.range())
        ranges.setdefault(info.output_tensor, layer.out_observer.range())
    candidates: dict[str, str] = {}
    if any(int8):
        formats = exportable_formats(settings.formats)
        with stage(progress, f"export {name}", len(formats)) as advance:
            for fmt in formats:
                path = run.file(f"{name}_{fmt}.onnx")
                quantize_assignment(float_path, g, assignment, fit_input(calib, net), path, fmt, ranges)
                candidates[fmt] = str(path)
                advance(note=fmt)
    else:
        candidates["fp32"] = str(float_path)
    # the fixed net in eval mode: its observers are calibrated
    parity = split_parity(net, candidates, data.test, engine=engine, batch_size=settings.batch_size)
    formats = {fmt: {"accuracy_onnx": parity.files[fmt]["accuracy_onnx"],
                     "onnx_max_abs_diff": parity.files[fmt]["onnx_max_abs_diff"],
                     "file_mb": os.path.getsize(path) / 1e6} for fmt, path in candidates.items()}
    figures = {
        "accuracy_torch": parity.accuracy,
        "predicted_ms": cost_ms.of(assignment) if cost_ms is not None else None,
        "size_mb": size_mb(graph, assignment),
        "storage_size_mb": size_mb(graph, assignment, storage=True),
        "mean_weight_bits": mean_weight_bits(graph, assignment),
        "mean_activation_bits": float(np.mean([o.a_bits for o in assignment])),
        "bitops_g": bitops_g(graph, assignment),
        "int8_layers": int(sum(int8)),
        "sub8_layers": int(sum(1 for o in assignment if o.runs_int8 and (o.w_bits < 8 or o.a_bits < 8))),
        "layers": len(assignment),
        "formats": formats,
        "onnx": out_name,
    }
    return Finished(name, assignment, figures, candidates, out_name)


def measure_and_choose(models: list[Finished], run: RunDir, device: Device) -> None:
    """Time every candidate file of every model together on ``device`` (interleaved rounds), keep each model's
    faster format as its output file, and fill in ``format``, ``measured_ms``, ``accuracy_onnx``,
    ``onnx_max_abs_diff`` and ``file_mb`` (the output file's size on disk)."""
    files = [(m, fmt, path) for m in models for fmt, path in m.candidates.items()]
    stats = device.time_files([path for _, _, path in files])
    for (m, fmt, _), st in zip(files, stats):
        m.figures["formats"][fmt]["measured_ms"] = st.p50_ms
        m.figures["formats"][fmt]["latency_stats"] = st.to_dict()
    for m in models:
        formats = m.figures["formats"]
        chosen = min(formats, key=lambda f: formats[f]["measured_ms"])
        with atomic_path(run.file(m.out_name)) as tmp:
            shutil.copyfile(m.candidates[chosen], tmp)
        m.figures.update({key: formats[chosen][key] for key in ("measured_ms", "latency_stats", "accuracy_onnx",
                                                                 "onnx_max_abs_diff")},
                         format=chosen, file_mb=os.path.getsize(run.file(m.out_name)) / 1e6)


def onnx_accuracy_warning(label: str, figures: dict) -> str | None:
    """A warning when the exported model's accuracy is more than ``ACCURACY_GAP`` below the fake-quant torch
    model's (the model the search and the fine-tuning saw), else None."""
    torch_acc, onnx_acc = figures["accuracy_torch"], figures["accuracy_onnx"]
    if onnx_acc >= torch_acc - ACCURACY_GAP:
        return None
    return (f"{label}: ONNX Runtime accuracy {onnx_acc:.4f} is {100 * (torch_acc - onnx_acc):.1f} points below the "
            f"fake-quant torch model's {torch_acc:.4f} (largest logit difference "
            f"{figures['onnx_max_abs_diff']:.3g}): the shipped file does not compute what was searched and trained")
