"""Peak memory of `hwnas train` does not grow with the dataset: streamed ``folder:`` and ``npz:`` data hold paths or
file offsets, evaluation and ONNX parity read batches of the recipe's size, normalisation statistics are computed
chunk by chunk. Prints, asserts nothing.

    .venv/bin/python benchmarks/bench_memory.py [--sizes 200,3200] [--loader-workers 0,2] [--kinds folder,npz]
        [--data-dir DIR] [--repeats 1]

For each kind of dataset, DataLoader worker count and dataset size it runs (``%M`` of GNU time: the largest
resident set of the command's processes, which is the main process's, the workers being smaller)

    /usr/bin/time -f %M hwnas train fbnet_a --dataset KIND:DIR --resolution 160 --width 0.25 --epochs 1 \\
        --loader-workers N --threads 1

on generated 160 px PNGs in 4 classes (``npz:``: the same images as one uint8 N x H x W x C array), and prints the
peaks and the growth from the smallest size to the largest (target: under 150 MB). The data is generated once into
``--data-dir`` (default: a temporary folder). Peaks vary by some tens of MB from run to run (``--repeats`` takes
the median).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESOLUTION, CLASSES = 160, 4
TARGET_MB = 150


def make_folder(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` noisy 160 px RGB PNGs, a colour per class, in one sub-folder per class (kept if already there)."""
    from PIL import Image
    folder = root / f"folder{count}"
    if (folder / ".done").exists():
        return folder
    rng = np.random.default_rng(seed)
    for i in range(count):
        label = i % CLASSES
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        base = np.zeros((RESOLUTION, RESOLUTION, 3), np.float32)
        base[..., label % 3] = 120 + 40 * label
        image = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"class{label}" / f"{i}.png")
    (folder / ".done").touch()
    return folder


def make_npz(root: Path, folder: Path, count: int) -> Path:
    """The folder's images as one uint8 N x H x W x C array ``x`` with labels ``y``."""
    from PIL import Image
    path = root / f"images{count}.npz"
    if not path.exists():
        files = sorted((f, label) for label, d in enumerate(sorted(p for p in folder.iterdir() if p.is_dir()))
                       for f in sorted(d.iterdir()))
        x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f, _ in files])
        np.savez(path, x=x, y=np.array([label for _, label in files]))
    return path


def peak_mb(dataset: str, workers: int, out: Path) -> float:
    """The command's peak resident memory in MB (GNU time's %M)."""
    cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "cli.main", "train", "fbnet_a", "--dataset", dataset,
           "--resolution", str(RESOLUTION), "--width", "0.25", "--epochs", "1", "--loader-workers", str(workers),
           "--threads", "1", "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    return int(r.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200,3200")
    ap.add_argument("--loader-workers", default="0,2")
    ap.add_argument("--kinds", default="folder,npz")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        datasets = {}
        for n in sizes:
            folder = make_folder(root, n)
            datasets["folder", n] = f"folder:{folder}"
            if "npz" in args.kinds:
                datasets["npz", n] = f"npz:{make_npz(root, folder, n)}"
        for kind in args.kinds.split(","):
            for workers in (int(w) for w in args.loader_workers.split(",")):
                peaks = {}
                for n in sizes:
                    runs = [peak_mb(datasets[kind, n], workers, Path(tmp) / f"run-{kind}-{workers}-{n}-{i}")
                            for i in range(args.repeats)]
                    peaks[n] = statistics.median(runs)
                    print(f"{kind}: {n} images, {workers} workers: peak {peaks[n]:.0f} MB"
                          + (f" (runs {', '.join(f'{r:.0f}' for r in runs)})" if len(runs) > 1 else ""), flush=True)
                growth = peaks[sizes[-1]] - peaks[sizes[0]]
                print(f"{kind}, {workers} workers: {sizes[0]} -> {sizes[-1]} images: peak {peaks[sizes[0]]:.0f} -> "
                      f"{peaks[sizes[-1]]:.0f} MB, growth {growth:+.0f} MB "
                      f"({'within' if growth <= TARGET_MB else 'OVER'} the {TARGET_MB} MB target)", flush=True)


if __name__ == "__main__":
    main()
