"""Write a class-balanced subset of Fashion-MNIST as an npz for ``--dataset npz:...`` (arrays ``x``, ``y``).

Fashion-MNIST (Zalando, 28 x 28 grayscale, 10 classes) is harder than digits: a two-block transformer does not
saturate it, so depth and token pruning can show what they buy. Nothing is downloaded: point ``--idx-dir`` at the
four ``*-idx*-ubyte.gz`` files (github.com/zalandoresearch/fashion-mnist, or Debian's ``dataset-fashion-mnist``
package, which installs them in /usr/share/datasets/fashion-mnist).

    .venv/bin/python benchmarks/make_fashion_mnist.py --idx-dir DIR [--per-class 500] [--out results/fashion_mnist.npz]
    .venv/bin/python benchmarks/make_fashion_mnist.py --idx-dir DIR --all --out results/fashion_mnist_70k.npz

``--all`` writes all 70,000 images (the 60,000 training and 10,000 test images; hwnas makes its own splits).
``fashion_mnist_npz(folder, per_class)`` does either for a benchmark, installing Debian's package first when its files
are missing.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import harness  # first: the repository on the import path  # noqa: F401
import numpy as np

from nas.files import atomic_path

DEBIAN_IDX_DIR = Path("/usr/share/datasets/fashion-mnist")  # where dataset-fashion-mnist installs the IDX files


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format): magic 0x0000 + type 0x08 (ubyte) + ndim, then big-endian dims."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = np.frombuffer(data, ">u4", ndim, 4).astype(int)
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_npz(folder: Path, per_class: int | None = None) -> Path:
    """``folder/fashion_mnist_70k.npz`` (all 70,000 images) or ``folder/fashion_mnist_<N>pc.npz`` (``per_class``
    training images of each class), written once; when Debian's dataset-fashion-mnist is not installed,
    ``apt-get install`` it first (a benchmark's set-up step: tests and CI never download it)."""
    import os
    import subprocess

    npz = folder / ("fashion_mnist_70k.npz" if per_class is None else f"fashion_mnist_{per_class}pc.npz")
    if npz.is_file():
        return npz
    if not (DEBIAN_IDX_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        print("installing Debian's dataset-fashion-mnist (apt-get)", flush=True)
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        if subprocess.run([*sudo, "apt-get", "install", "-y", "dataset-fashion-mnist"]).returncode != 0:
            raise SystemExit("could not install dataset-fashion-mnist: run `sudo apt-get install dataset-fashion-mnist`")
    main(["--idx-dir", str(DEBIAN_IDX_DIR), "--out", str(npz),
          *(["--all"] if per_class is None else ["--per-class", str(per_class)])])
    return npz


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idx-dir", required=True, type=Path)
    ap.add_argument("--per-class", type=int, default=500, help="images per class (from the 60,000 training images)")
    ap.add_argument("--all", action="store_true", help="all 70,000 images (training and t10k files)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/fashion_mnist.npz"))
    args = ap.parse_args(argv)
    images, labels = (args.idx_dir / "train-images-idx3-ubyte.gz", args.idx_dir / "train-labels-idx1-ubyte.gz")
    for p in (images, labels):
        if not p.is_file():
            raise SystemExit(f"not found: {p}")
    x, y = read_idx(images), read_idx(labels)
    rng = np.random.default_rng(args.seed)
    if args.all:
        test = [args.idx_dir / "t10k-images-idx3-ubyte.gz", args.idx_dir / "t10k-labels-idx1-ubyte.gz"]
        for p in test:
            if not p.is_file():
                raise SystemExit(f"not found: {p}")
        x, y = np.concatenate([x, read_idx(test[0])]), np.concatenate([y, read_idx(test[1])])
        pick = rng.permutation(len(y))
    else:
        pick = np.concatenate([rng.choice(np.flatnonzero(y == c), args.per_class, replace=False)
                               for c in range(int(y.max()) + 1)])
        pick = rng.permutation(pick)
    with atomic_path(args.out) as tmp:  # a temporary name of its own: two benchmarks may set up side by side
        np.savez_compressed(tmp, x=x[pick], y=y[pick].astype(np.int64))
    print(f"{args.out}: {len(pick)} images {x.shape[1]}x{x.shape[2]}, {int(y.max()) + 1} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
