"""Write scikit-learn's digits as an ``npz:`` dataset: arrays ``x`` (N x 8 x 8 grey images in [0, 1]) and ``y``.

    python examples/make_digits_npz.py my.npz
    hwnas train fbnet_a --dataset npz:my.npz

The same layout works for any images of your own: ``x`` as N x H x W, N x C x H x W or N x H x W x C
(uint8 0-255 or floats), ``y`` integer labels 0..K-1.
"""

from __future__ import annotations

import sys

import numpy as np
from sklearn.datasets import load_digits


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/make_digits_npz.py OUT.npz")
    digits = load_digits()
    np.savez_compressed(sys.argv[1], x=(digits.images / 16.0).astype(np.float32), y=digits.target.astype(np.int64))
    print(f"wrote {sys.argv[1]}: {len(digits.target)} images of 8x8 pixels, 10 classes")


if __name__ == "__main__":
    main()
