"""Claims of the training engine: streamed data trains as fast as data in memory, and more torch threads do not
slow a supernet step. Prints, asserts nothing.

    .venv/bin/python benchmarks/bench_training.py [--device local-cpu] [--space fbnet_v2] [--width 0.25]
        [--epochs 3] [--loader-workers 0] [--tables-dir DIR]

- dataloader: seconds per DMasking supernet weight epoch on digits, held in memory (``digits``) vs streamed
  through the DataLoader path (the same images as a memory-mapped ``npz:``, ``--loader-workers`` processes); target
  streamed >= 0.9x the in-memory speed. The median of ``--epochs`` epochs each, interleaved.
- threads: seconds per supernet step (weights and architecture) with 1 and with 2 torch threads, interleaved
  (several threads are safe since nas/conv.py works around oneDNN's strided 1x1 weight-gradient overflow).
The device table is profiled on first use (as ``--profile`` does). Timings are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import harness  # first: the repository on the import path  # noqa: F401
import numpy as np
import torch

from nas.data.dataset import load_dataset  # noqa: E402
from nas.search.dnas.dmasking_supernet import DMaskingSupernet  # noqa: E402
from nas.search.dnas.search import SupernetSearch, SupernetSearchSettings  # noqa: E402
from nas.search.dnas.strategy import SearchJob, SupernetStrategy  # noqa: E402
from nas.train.accelerator import resolve_accelerator  # noqa: E402
from nas.train.engine import Engine  # noqa: E402
from nas.train.recipe import Recipe  # noqa: E402


def prepared(args, dataset: str):
    job = SearchJob(method="dmasking", space=args.space, device=args.device, dataset=dataset,
                    resolution=args.resolution, width=args.width, settings=SupernetSearchSettings(epochs=2),
                    recipe=Recipe(batch_size=args.batch_size), tables_dir=args.tables_dir, profile=True)
    return SupernetStrategy(job).prepare()


def make_search(prep, engine: Engine) -> SupernetSearch:
    torch.manual_seed(0)
    return SupernetSearch(DMaskingSupernet(prep.dist, None), prep.dist, prep.terms, prep.data,
                          SupernetSearchSettings(epochs=2), Recipe(batch_size=prep.job.recipe.batch_size),
                          prep.min_ms, engine)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_dataloader(args, npz: Path) -> None:
    memory = prepared(args, "digits")
    streamed = prepared(args, f"npz:{npz}")
    engine = Engine(resolve_accelerator("cpu", "32", 1), workers=args.loader_workers)
    searches = {"in memory": make_search(memory, engine), "DataLoader": make_search(streamed, engine)}
    seconds: dict[str, list[float]] = {k: [] for k in searches}
    with engine.accelerator.threads_in_use(1):
        for _ in range(args.epochs):
            for name, search in searches.items():
                seconds[name].append(timed(lambda: engine.train_pass(search.data.train, args.batch_size,
                                                                     search.shuffle, [search.weight_step])))
    mem, dl = (statistics.median(seconds[k]) for k in ("in memory", "DataLoader"))
    print(f"dataloader: DMasking weight epoch on digits ({len(memory.data.train)} images, batch "
          f"{args.batch_size}, {args.loader_workers} DataLoader processes): in memory {mem:.2f} s, DataLoader "
          f"{dl:.2f} s -> speed {mem / dl:.2f}x of in-memory (target >= 0.9x)")


def bench_threads(args) -> None:
    prep = prepared(args, "digits")
    engine = Engine(resolve_accelerator("cpu", "32", 2))
    search = make_search(prep, engine)
    x, y = next(engine.batches(prep.data.train, args.batch_size, torch.Generator().manual_seed(0)))

    search.tau = 1.0

    def step():
        engine.train_step(search.weight_step, x, y)

    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(3):
        step()  # warm up
    for _ in range(args.steps):
        for n in (1, 2):
            with engine.accelerator.threads_in_use(n):
                times[n].append(timed(step))
    one, two = (statistics.median(times[n]) for n in (1, 2))
    print(f"threads: DMasking supernet step (batch {args.batch_size}): 1 thread {one * 1e3:.1f} ms, 2 threads "
          f"{two * 1e3:.1f} ms -> 2 threads {one / two:.2f}x the speed of 1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="local-cpu")
    ap.add_argument("--space", default="fbnet_v2")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--loader-workers", type=int, default=0, help="DataLoader processes")
    ap.add_argument("--tables-dir", default=None)
    ap.add_argument("--only", default="dataloader,threads")
    args = ap.parse_args()
    from sklearn.datasets import load_digits
    with tempfile.TemporaryDirectory() as tmp:
        d = load_digits()
        npz = Path(tmp) / "digits.npz"
        np.savez(npz, x=d.images.astype(np.float32) / 16.0, y=d.target.astype(np.int64))
        load_dataset(f"npz:{npz}")  # the .npy cache is made once, before timing
        if "dataloader" in args.only:
            bench_dataloader(args, npz)
        if "threads" in args.only:
            bench_threads(args)


if __name__ == "__main__":
    main()
