"""Data parallelism: the same DMasking search with 1 process and with ``--nproc`` gloo processes under torchrun, at
the same global batch, and, as a control, with 1 process on ``--nproc`` threads (the same arithmetic summed in
another order). Prints each run's final architecture, whether it matches the 1-process 1-thread run's, the largest
difference of the per-epoch training and validation losses and of the expected-latency curve, and the test accuracy
of the retrained winner. Asserts nothing.

    .venv/bin/python benchmarks/bench_ddp.py [--epochs 6] [--final-epochs 3] [--nproc 2] [--seed 0]

Each process trains on its share of every global batch and the gradients are averaged; batch norm normalises with
the whole global batch's moments and dropout applies the process's rows of one mask for the whole batch
(``nas.train.sync_layers``). What is left between 1 and N processes: floating-point sums in another order, and the last global
batch of an epoch, of which N processes leave out the samples that do not split evenly (at most N - 1). The control
shows how far summation order alone moves a search.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # first: the repository on the import path
import pandas as pd

BIN = Path(sys.executable).parent


def search(out: Path, nproc: int, threads: int, args) -> float:
    """Run the search (under torchrun when ``nproc`` > 1, each process on ``threads`` threads); its wall seconds."""
    command = ["search", "dmasking", "--space", "fbnet_v2", "--dataset", args.dataset, "--width", str(args.width),
               "--device", args.device, "--profile", "--epochs", str(args.epochs), "--final-epochs",
               str(args.final_epochs), "--accelerator", "cpu", "--threads", str(threads), "--seed", str(args.seed),
               "--out", str(out)]
    if args.tables_dir:
        command += ["--tables-dir", args.tables_dir]
    launcher = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), "-m", "cli.main"] \
        if nproc > 1 else [sys.executable, "-m", "cli.main"]
    start = time.perf_counter()
    subprocess.run(launcher + command, cwd=harness.ROOT, check=True, stdout=subprocess.DEVNULL,
                   env=harness.child_env(OMP_NUM_THREADS=str(threads)))
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--final-epochs", type=int, default=3)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--device", default="local-cpu")
    ap.add_argument("--tables-dir", default=None)
    args = ap.parse_args()
    runs = {"1 process": (1, 1), f"{args.nproc} processes": (args.nproc, 1),
            f"1 process, {args.nproc} threads": (1, args.nproc)}
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for i, (label, (nproc, threads)) in enumerate(runs.items()):
            out = Path(tmp) / f"run{i}"
            seconds = search(out, nproc, threads, args)
            report = json.loads((out / "report.json").read_text())
            arch = {k: v for k, v in json.loads((out / "arch.json").read_text()).items() if k != "created"}
            results[label] = (pd.read_csv(out / "history.csv"), arch, report)
            print(f"[ddp] {label}: {seconds:.0f} s, final arch predicted {report['predicted_ms']:.4f} ms, "
                  f"test accuracy {report['accuracy']:.4f}", flush=True)
        h1, a1, _ = results["1 process"]
        for label, (h, a, _) in list(results.items())[1:]:
            print(f"[ddp] {label} vs 1 process: final architecture identical: {a == a1}")
            for column in ("train_loss", "val_loss", "val_accuracy", "expected_ms"):
                diff = (h1[column] - h[column]).abs()
                print(f"[ddp]   {column}: largest per-epoch difference {diff.max():.2e} "
                      f"(relative {(diff / h1[column].abs()).max():.2e}); 1 process {h1[column].round(4).tolist()}, "
                      f"{label} {h[column].round(4).tolist()}")

if __name__ == "__main__":
    main()
