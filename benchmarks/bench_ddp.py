"""Data parallelism: the same DMasking search with 1 process and with ``--nproc`` gloo processes under torchrun, at
the same global batch. Prints the final architecture of each (and whether they match), the largest difference of
the per-epoch training and validation losses, the expected-latency curve, and the test accuracy of the retrained
winner. Asserts nothing.

    .venv/bin/python benchmarks/bench_ddp.py [--epochs 6] [--final-epochs 3] [--nproc 2]

Each process trains on its share of every global batch and the gradients are averaged; batch norm normalises with
the whole global batch's moments and dropout applies the process's rows of one mask for the whole batch
(``nas.shares``). What is left between 1 and N processes: floating-point sums in another order, and the last global
batch of an epoch, of which N processes leave out the samples that do not split evenly (at most N - 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def search(out: Path, nproc: int, args) -> float:
    """Run the search (under torchrun when ``nproc`` > 1); its wall seconds."""
    command = ["search", "dmasking", "--space", "fbnet_v2", "--dataset", args.dataset, "--width", str(args.width),
               "--device", args.device, "--profile", "--epochs", str(args.epochs), "--final-epochs",
               str(args.final_epochs), "--accelerator", "cpu", "--threads", "1", "--seed", "0", "--out", str(out)]
    if args.tables_dir:
        command += ["--tables-dir", args.tables_dir]
    launcher = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), "-m", "cli.main"] \
        if nproc > 1 else [sys.executable, "-m", "cli.main"]
    start = time.perf_counter()
    subprocess.run(launcher + command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--final-epochs", type=int, default=3)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--device", default="local-cpu")
    ap.add_argument("--tables-dir", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for n in (1, args.nproc):
            out = Path(tmp) / f"nproc{n}"
            seconds = search(out, n, args)
            report = json.loads((out / "report.json").read_text())
            runs[n] = (pd.read_csv(out / "history.csv"), json.loads((out / "arch.json").read_text()), report,
                       seconds)
            print(f"[ddp] {n} process(es): {seconds:.0f} s, final arch predicted {report['predicted_ms']:.4f} ms, "
                  f"test accuracy {report['accuracy']:.4f}", flush=True)
        (h1, a1, r1, _), (hn, an, rn, _) = runs[1], runs[args.nproc]
        same = {k: v for k, v in a1.items() if k != "created"} == {k: v for k, v in an.items() if k != "created"}
        print(f"[ddp] final architecture identical with 1 and {args.nproc} processes: {same}")
        for column in ("train_loss", "val_loss", "val_accuracy", "expected_ms"):
            diff = (h1[column] - hn[column]).abs()
            print(f"[ddp] {column}: largest per-epoch difference {diff.max():.2e} "
                  f"(relative {(diff / h1[column].abs()).max():.2e}); 1 process {h1[column].round(4).tolist()}, "
                  f"{args.nproc} {hn[column].round(4).tolist()}")
        print(f"[ddp] retrained winner's test accuracy: {r1['accuracy']:.4f} vs {rn['accuracy']:.4f}")


if __name__ == "__main__":
    main()
