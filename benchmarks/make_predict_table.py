"""Build the predictor benchmark's table space, benchmarks/data/digits_joint.csv, from real measurements.

How it is built (all real, nothing synthetic):
1. The joint space is benchmarks/data/digits_tiny.yaml (6 searchable layers x 6 blocks, 2 channel options per
   stage, and a training-recipe space: lr, epochs, weight decay, label smoothing, batch size) on scikit-learn's
   digits at 16 px.
2. ``--archs`` architectures are drawn uniformly at random (seed 0), each with ``--recipes`` recipes drawn
   uniformly from the recipe ranges. Each (arch, recipe) row is trained with ``nas.train.training.train_model`` (seed 0,
   one CPU thread) and scored on the validation split (``val_accuracy``, the search objective) and the test
   split (``test_accuracy``).
3. Each distinct architecture is exported to ONNX and its batch-1 latency measured with ONNX Runtime
   (CPUExecutionProvider, 1 thread, per-thread CPU clock, interleaved rounds of 32 models,
   the device table's ``nas.latency.device.Device``; the shipped table's figures are lowest round medians, the
   statistic of the time it was built): ``latency_ms``.
4. The space is profiled block by block into a device table (``nas.latency.profile``) and every arch predicted by
   the ``LatencyModel``: ``predicted_latency_ms``. MACs and params come from ``count_macs``/``count_params``;
   ``train_steps`` (epochs x batches per epoch) is the recipe's free proxy.

The build is resumable (rows are appended as they finish). Run:
    .venv/bin/python benchmarks/make_predict_table.py [--archs 320 --recipes 2] [--rows N]
The shipped table was built with ``--rows 600`` (the first 300 archs x 2 recipes of the plan; about an hour of
training on 2 shared cores).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import harness  # first: the repository on the import path
import numpy as np
import pandas as pd
import torch

SPACE = harness.DATA / "digits_tiny.yaml"
OUT = harness.JOINT_TABLE
RESOLUTION = 16


def _rows_plan(joint, archs: int, recipes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arch_genomes = joint.sample(archs * 4, rng)
    keys, plan = set(), []
    for g in arch_genomes:
        k = tuple(np.round(g[:joint.n_arch], 6))
        if k in keys:
            continue
        keys.add(k)
        for _ in range(recipes):
            r = joint.sample(1, rng)[0]
            plan.append(np.concatenate([g[:joint.n_arch], r[joint.n_arch:]]))
        if len(keys) == archs:
            break
    return np.stack(plan)


def train_pass(joint, data, plan: np.ndarray, partial: Path) -> pd.DataFrame:
    from nas.search.predict.evaluators import TrainEvaluator
    done = pd.read_csv(partial) if partial.is_file() else pd.DataFrame()
    if len(done):
        done = done[done["row"] < len(plan)]
    have = set(done["row"]) if len(done) else set()
    evaluator = TrainEvaluator(joint, data)
    rows = done.to_dict("records") if len(done) else []
    start = time.time()
    for i, g in enumerate(plan):
        if i in have:
            continue
        m = evaluator.evaluate(joint.candidate(g))
        rows.append({"row": i, **joint.describe(g), "val_accuracy": m["val_accuracy"],
                     "test_accuracy": m["test_accuracy"], "macs": m["macs"], "params": m["params"],
                     "train_seconds": round(m["train_seconds"], 3)})
        frame = pd.DataFrame(rows)
        frame.to_csv(partial.with_suffix(".tmp"), index=False)
        partial.with_suffix(".tmp").replace(partial)
        n_new = len(rows) - len(have)
        print(f"[{len(rows)}/{len(plan)}] val {m['val_accuracy']:.3f} in {m['train_seconds']:.1f}s "
              f"(eta {(time.time() - start) / n_new * (len(plan) - len(rows)) / 60:.1f} min)", flush=True)
    return pd.DataFrame(rows)


def latency_pass(joint, frame: pd.DataFrame, device: str, tables_dir: Path, chunk: int = 32) -> pd.DataFrame:
    from nas.latency.device import Device
    from nas.latency.model import LatencyModel
    from nas.latency.timing import TimingConfig
    from nas.models.builder import build_model
    from nas.models.onnx_io import export_onnx

    # per-thread CPU clock, one thread, interleaved rounds: robust to the other processes of a shared machine
    timing = TimingConfig(max_seconds=2.0)
    space = joint.space
    harness.profile_table(Device(clock="cpu", device_id=device), space, tables_dir=tables_dir, timing=timing)
    lm = LatencyModel.load(device, tables_dir=tables_dir)
    arch_cols = joint.names[:joint.n_arch]
    archs: dict[tuple, object] = {}
    for _, row in frame.iterrows():
        key = tuple(row[c] for c in arch_cols)
        if key not in archs:
            archs[key] = joint.arch(joint.genome({c: row[c] for c in joint.names}))
    keys = list(archs)
    measured, predicted = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for start in range(0, len(keys), chunk):
            part = keys[start:start + chunk]
            paths = []
            for i, key in enumerate(part):
                model = build_model(space, archs[key]).eval()
                paths.append(export_onnx(model, model.input_shape, Path(tmp) / f"m{start + i}.onnx"))
            for key, stats in zip(part, lm.device.time_files(paths, timing)):
                measured[key] = stats.p50_ms
                predicted[key] = lm.predict(space, archs[key])
            print(f"archs {start + len(part)}/{len(keys)} timed; last: measured {measured[part[-1]]:.4f} ms, "
                  f"predicted {predicted[part[-1]]:.4f} ms", flush=True)
    row_keys = [tuple(r[c] for c in arch_cols) for _, r in frame.iterrows()]
    frame = frame.copy()
    frame["latency_ms"] = [round(measured[k], 5) for k in row_keys]
    frame["predicted_latency_ms"] = [round(predicted[k], 5) for k in row_keys]
    return frame


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", type=int, default=320)
    ap.add_argument("--recipes", type=int, default=2)
    ap.add_argument("--rows", type=int, default=None, help="use only the first ROWS rows of the plan")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--device", default="bench-cpu1")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from nas.arch.space import load_space
    from nas.data.dataset import load_dataset
    from nas.search.predict.joint_space import JointSpace

    data = load_dataset("digits", resolution=RESOLUTION, seed=0)
    joint = JointSpace(load_space(str(SPACE), resolution=RESOLUTION, classes=10, in_channels=1))
    plan = _rows_plan(joint, args.archs, args.recipes, args.seed)
    if args.rows is not None:
        plan = plan[:args.rows]
    partial = args.out.with_suffix(".partial.csv")
    frame = train_pass(joint, data, plan, partial)
    with tempfile.TemporaryDirectory() as tables:
        frame = latency_pass(joint, frame.sort_values("row"), args.device, Path(tables))
    frame = frame.drop(columns=["row"])
    # a free proxy of the recipe (as MACs and params are of the arch): optimiser steps of the training
    frame["train_steps"] = frame["epochs"] * np.ceil(len(data.y_train) / frame["batch_size"])
    frame.to_csv(args.out, index=False)
    partial.unlink()
    print(f"wrote {args.out}: {len(frame)} rows, {frame[joint.names[:joint.n_arch]].drop_duplicates().shape[0]} archs")


if __name__ == "__main__":
    main()
