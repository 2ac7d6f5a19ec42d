"""Write a harder image dataset built from scikit-learn's real digits: each 8x8 digit at a random place on a
24x24 canvas with fragments of other digits as clutter (as cluttered MNIST does for MNIST).

On plain digits a two-block transformer is already at ~99%, so depth buys nothing and no capacity method can
beat a shallower dense model there. Here most tokens are background or clutter, which is the case token
pruning is made for. The file is an ``npz:`` dataset (``x``: N x 24 x 24 in [0, 1], ``y``: labels):

    .venv/bin/python benchmarks/make_cluttered_digits.py --out results/cluttered_digits.npz
    .venv/bin/python benchmarks/bench_capacity.py --dataset npz:results/cluttered_digits.npz --out results/bench-clutter
"""

from __future__ import annotations

import argparse
from pathlib import Path

import harness  # first: the repository on the import path  # noqa: F401
import numpy as np
from sklearn.datasets import load_digits

from nas.files import atomic_path


def cluttered_digits(canvas: int = 24, fragments: int = 4, fragment_size: int = 4, seed: int = 0):
    """One cluttered image per digit of the dataset (so no digit appears in two splits); the clutter never
    overlaps the digit."""
    digits = load_digits()
    images, labels = digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    x = np.zeros((len(images), canvas, canvas), dtype=np.float32)
    for i, image in enumerate(images):
        dy, dx = rng.integers(0, canvas - 8 + 1, 2)
        x[i, dy:dy + 8, dx:dx + 8] = image
        placed = 0
        while placed < fragments:  # clutter around the digit, never on it
            cy, cx = rng.integers(0, canvas - fragment_size + 1, 2)
            if dy - fragment_size < cy < dy + 8 and dx - fragment_size < cx < dx + 8:
                continue
            other = images[rng.integers(len(images))]
            fy, fx = rng.integers(0, 8 - fragment_size + 1, 2)
            view = x[i, cy:cy + fragment_size, cx:cx + fragment_size]
            np.maximum(view, other[fy:fy + fragment_size, fx:fx + fragment_size], out=view)
            placed += 1
    return x, labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/cluttered_digits.npz")
    ap.add_argument("--canvas", type=int, default=24)
    ap.add_argument("--fragments", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    x, y = cluttered_digits(args.canvas, args.fragments, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, x=x, y=y)
    print(f"{len(y)} images {x.shape[1]}x{x.shape[2]} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
