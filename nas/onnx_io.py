"""ONNX export, output parity against torch, and ONNX Runtime sessions and timing."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from nas.errors import LatencyTableError
from nas.files import atomic_path

OPSET = 17


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path, dynamic_batch: bool = True) -> Path:
    """Export ``model`` (eval mode) with input ``input`` of shape (batch, *input_shape) to ``path`` atomically."""
    model.eval()
    example = torch.zeros(1, *input_shape)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(tmp), input_names=["input"], output_names=["output"],
                          opset_version=OPSET, dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}} if dynamic_batch else None)
    return Path(path)


def available_providers() -> list[str]:
    return ort.get_available_providers()


def make_session(path: str | Path, provider: str = "CPUExecutionProvider", threads: int = 1,
                 optimization: str = "all") -> ort.InferenceSession:
    """An inference session pinned to ``threads`` intra-op threads on ``provider``."""
    if provider not in available_providers():
        raise LatencyTableError(f"execution provider {provider!r} is not available here "
                                f"(available: {', '.join(available_providers())})")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=[provider])


def run_onnx(session_or_path, x: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    sess = session_or_path if isinstance(session_or_path, ort.InferenceSession) else make_session(
        session_or_path, threads=os.cpu_count() or 1)
    name = sess.get_inputs()[0].name
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    return np.concatenate([sess.run(None, {name: x[i:i + batch_size].astype(np.float32)})[0]
                           for i in range(0, len(x), batch_size)])


def onnx_max_abs_diff(model: nn.Module, path: str | Path, x: torch.Tensor) -> float:
    """Largest absolute difference between torch and ONNX Runtime outputs on the same inputs."""
    model.eval()
    with torch.no_grad():
        ref = model(x).numpy()
    return float(np.nan_to_num(np.abs(run_onnx(path, x) - ref), nan=np.inf).max())  # a NaN output fails parity


@dataclass
class LatencyStats:
    p50_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    count: int
    spread: float  # (p90 - p10) / p50
    stable: bool

    def to_dict(self) -> dict:
        return asdict(self)


def time_session(sess: ort.InferenceSession, feeds: dict, warmup: int = 10, min_runs: int = 20,
                 max_runs: int = 500, max_seconds: float = 2.0, rel_tol: float = 0.02) -> LatencyStats:
    """Time ``sess.run`` until the running median is stable (changes < rel_tol between rounds) or a cap is hit."""
    for _ in range(warmup):
        sess.run(None, feeds)
    times: list[float] = []
    previous = None
    stable = False
    start = time.perf_counter()
    while len(times) < max_runs and time.perf_counter() - start < max_seconds:
        for _ in range(min_runs):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times.append((time.perf_counter() - t0) * 1e3)
        median = float(np.median(times))
        if previous is not None and abs(median - previous) <= rel_tol * previous:
            stable = True
            break
        previous = median
    arr = np.asarray(times)
    p10, p50, p90 = np.percentile(arr, [10, 50, 90])
    return LatencyStats(float(p50), float(p90), float(arr.mean()), float(arr.std()), len(arr),
                        float((p90 - p10) / p50) if p50 > 0 else 0.0, stable)


def measure_onnx_latency(path: str | Path, provider: str = "CPUExecutionProvider", threads: int = 1,
                         **timing) -> LatencyStats:
    """Time one batch-1 inference of an ONNX file (random input) with a pinned session."""
    sess = make_session(path, provider, threads)
    feeds = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feeds[inp.name] = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return time_session(sess, feeds, **timing)
