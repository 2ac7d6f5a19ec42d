"""Claims on a CUDA GPU: the README demo runs there, and a 224 px DMasking search on a streamed folder trains faster
in bf16 than in fp32. One script for a machine with a GPU; prints figures, asserts nothing.

    .venv/bin/python benchmarks/bench_gpu.py [--resolution 224] [--images 6000] [--epochs 3] [--loader-workers 8]

1. The README demo (`make demo`'s search, 32 px digits) with ``--accelerator cuda``: wall time, test accuracy,
   measured and predicted latency.
2. A streamed ``folder:`` dataset (PNG files written here from scikit-learn's digits, each on a cluttered 64 x 64
   canvas, decoded lazily at ``--resolution`` by ``--loader-workers`` DataLoader processes) and a DMasking search on it
   at ``--resolution`` (fbnet_v2, ``--width``), once in fp32 and once in bf16: supernet images/s (training and
   validation images per second of a search epoch, median over the epochs), peak GPU memory per epoch, and the
   retrained child's images/s.

The latency table at ``--resolution`` is measured on this machine's CPU by the fp32 run (``--profile``; in its wall
time, not in the images/s). With ``--accelerator cpu --resolution 32 --images 400 --epochs 2`` the script runs anywhere in a
minute (a dry run of the script, not a GPU figure).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # first: the repository on the import path
import numpy as np
import pandas as pd
from make_cluttered_digits import cluttered_digits


def hwnas(args: list[str]) -> tuple[float, str]:
    """Run the CLI; its wall seconds and output (a failure stops the script with the CLI's output)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=harness.ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=harness.child_env(COLUMNS="500"))
    if done.returncode:
        sys.exit(f"[gpu] hwnas {' '.join(args)} failed:\n{done.stdout[-3000:]}")
    return time.perf_counter() - start, done.stdout


def write_folder(root: Path, images: int, seed: int = 0) -> Path:
    """``images`` PNG files in one sub-folder per class: cluttered digits, as many passes over the 1,797 digits
    (each pass with other clutter) as it takes."""
    from PIL import Image
    done, round_ = 0, 0
    while done < images:
        x, y = cluttered_digits(canvas=64, fragments=12, fragment_size=4, seed=seed + round_)
        for image, label in zip(x[:images - done], y[:images - done]):
            folder = root / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"{done:06d}.png")
            done += 1
        round_ += 1
    return root


def search_figures(out: Path, output: str) -> dict:
    """From a search's run directory and its output (the split sizes)."""
    sizes = re.search(r"'train': (\d+), 'val': (\d+)", output)
    train_images, val_images = int(sizes[1]), int(sizes[2])
    history = pd.read_csv(out / "history.csv")
    child = pd.read_csv(out / "train_history.csv")
    report = json.loads((out / "report.json").read_text())
    figures = {"supernet_images_per_s": statistics.median((train_images + val_images) / history["seconds"]),
               "child_images_per_s": float(child["images_per_s"].median()),
               "test_accuracy": report["accuracy"], "predicted_ms": report["predicted_ms"],
               "measured_ms": report.get("measured_ms")}
    if "gpu_memory_gib" in history:
        figures["supernet_gpu_memory_gib"] = float(history["gpu_memory_gib"].max())
        figures["child_gpu_memory_gib"] = float(child["gpu_memory_gib"].max())
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accelerator", default="cuda")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--images", type=int, default=6000, help="images in the generated folder")
    ap.add_argument("--epochs", type=int, default=3, help="search epochs (the first is the warm-up)")
    ap.add_argument("--final-epochs", type=int, default=2)
    ap.add_argument("--loader-workers", type=int, default=8, help="DataLoader processes")
    ap.add_argument("--device", default="local-cpu", help="latency table (measured on first use)")
    ap.add_argument("--skip-demo", action="store_true")
    args = ap.parse_args()
    acc = ["--accelerator", args.accelerator]
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        tmp = Path(tmp)
        if not args.skip_demo:
            seconds, _ = hwnas(["search", "dmasking", "--space", "fbnet_v2", "--dataset", "digits", "--width", "0.25",
                             "--device", args.device, "--profile", "--alpha", "0.5", "--epochs", "10",
                             "--final-epochs", "40", "--out", str(tmp / "demo"), *acc])
            report = json.loads((tmp / "demo" / "report.json").read_text())
            print(f"[gpu] README demo on {report['dmasking']['training'].get('accelerator_name')}: {seconds:.0f} s, test accuracy "
                  f"{report['accuracy']:.4f}, predicted {report['predicted_ms']:.4f} ms, measured "
                  f"{report.get('measured_ms')} ms", flush=True)
        start = time.perf_counter()
        folder = write_folder(tmp / "images", args.images)
        print(f"[gpu] folder: {args.images} PNG files written in {time.perf_counter() - start:.0f} s", flush=True)
        common = ["search", "dmasking", "--space", "fbnet_v2", "--dataset", f"folder:{folder}", "--resolution",
                  str(args.resolution), "--width", str(args.width), "--device", args.device,
                  "--loader-workers", str(args.loader_workers), "--epochs", str(args.epochs), "--final-epochs",
                  str(args.final_epochs), "--seed", "0", *acc]
        for precision in ("32", "bf16"):
            out = tmp / f"search-{precision}"
            profile = ["--profile"] if precision == "32" else []  # the first run measures the table
            seconds, output = hwnas([*common, *profile, "--precision", precision, "--out", str(out)])
            figures = search_figures(out, output)
            print(f"[gpu] DMasking at {args.resolution} px, x{args.width:g}, precision {precision}: {seconds:.0f} s "
                  f"in all{' (with the latency table)' if profile else ''}; " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in figures.items()), flush=True)


if __name__ == "__main__":
    main()
