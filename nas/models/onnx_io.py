"""ONNX export and output parity against torch (sessions and timing: ``nas.latency.device.Device``)."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from nas.files import atomic_path

OPSET = 17


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, dynamic_batch: bool = True,
                normalization: dict | None = None) -> Path:
    """Export ``model`` (eval mode) with input ``input`` of shape (batch, *input_shape) to ``path`` atomically.

    ``normalization`` ({"mean": [...], "std": [...]}, per channel, of [0, 1] pixels) is recorded in the model's
    metadata_props as ``normalization_mean`` and ``normalization_std`` (JSON lists): what a deployment applies
    to its images before feeding the model."""
    model.eval()
    example = torch.zeros(1, *input_shape)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["output"],
                          opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None)
        if normalization is not None:
            record_normalization(tmp, normalization)
    return Path(path)


def record_normalization(path: str | Path, normalization: dict) -> None:
    """Write the input normalisation into an ONNX file's metadata_props (in place)."""
    import onnx
    proto = onnx.load(str(path))
    for key in ("mean", "std"):
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"normalization_{key}", json.dumps([float(v) for v in normalization[key]])
    onnx.save(proto, str(path))


def cpu_session(path: str | Path) -> ort.InferenceSession:
    """A CPU session on all cores (accuracy, not timing), without ONNX Runtime's memory arena and pre-planned
    memory pattern: they keep the largest batch's activations (and more: the arena grows in powers of two) for the
    process's lifetime, 0.1-0.2 GB at 64 images of 160 px (measured)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session_or_path, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Outputs of an ONNX model on ``x`` in batches; a path opens a ``cpu_session``."""
    sess = session_or_path if isinstance(session_or_path, ort.InferenceSession) else cpu_session(session_or_path)
    name = sess.get_inputs()[0].name
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size].astype(np.float32)})[0]
                           for i in range(0, len(x), batch_size)])


def max_abs_diff(out: np.ndarray, ref: np.ndarray) -> float:
    """Largest |out - ref|; infinite where either is NaN (a NaN output fails parity)."""
    return float(np.nan_to_num(np.abs(out - ref), nan=np.inf).max(initial=0.0))


def onnx_max_abs_diff(model: nn.Module, path: str | Path, x: torch.Tensor) -> float:
    """Largest absolute difference between torch and ONNX Runtime outputs on the same inputs."""
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    return max_abs_diff(run_onnx(path, x), ref)
