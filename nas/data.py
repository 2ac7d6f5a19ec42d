"""Datasets: scikit-learn's ``digits`` (built in), ``npz:PATH`` and ``folder:PATH``, split deterministically."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from nas.errors import DataError

MIN_DEFAULT_RESOLUTION = 32  # small images (digits are 8x8) are upsampled to this unless a resolution is given
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class Dataset:
    """Normalised N x C x H x W float tensors and integer labels, split into train / val / test."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: int
    native_resolution: int = 0  # the images' own size, before resizing

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def resolution(self) -> int:
        return self.x_train.shape[2]

    def sizes(self) -> dict:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images.astype(np.float32)[:, None] / 16.0, d.target.astype(np.int64)


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz file (numpy.savez's zip of arrays 'x' and 'y')")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise DataError(f"{path}: needs arrays 'x' and 'y' (has {', '.join(f.files) or 'none'})")
            x, y = f["x"], f["y"]
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # N x H x W x C
    if x.ndim != 4:
        raise DataError(f"{path}: 'x' must be N x H x W or N x C x H x W, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: 'y' must be a vector of {len(x)} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: 'y' must hold integer class labels, got {y.dtype}")
    if len(x) == 0:
        raise DataError(f"{path}: 'x' holds no images")
    try:
        x = x.astype(np.float32)
    except (TypeError, ValueError):
        raise DataError(f"{path}: 'x' must hold numbers, got {x.dtype}") from None
    if x.max() > 1.5:
        x = x / 255.0
    return x, y.astype(np.int64)


def check_finite(source, array: str, values: np.ndarray) -> None:
    """DataError naming ``array`` and how many of its values are NaN or infinite, if any are."""
    bad = int(values.size - np.count_nonzero(np.isfinite(values)))
    if bad:
        raise DataError(f"{source}: array {array!r} holds {bad} non-finite value{'s' if bad > 1 else ''} "
                        f"(NaN or infinity) of {values.size}; clean the data")


def _load_folder(path: Path, resolution: int | None) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image
    if not path.is_dir():
        raise DataError(f"dataset folder not found: {path}")
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir())
    if len(class_dirs) < 2:
        raise DataError(f"{path}: needs one sub-folder of images per class (found {len(class_dirs)})")
    xs, ys = [], []
    for label, d in enumerate(class_dirs):
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    resolution = resolution or max(im.size)  # default: the first image's own size
                    im = im.convert("RGB").resize((resolution, resolution), Image.BILINEAR)
                    xs.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            except OSError as e:
                raise DataError(f"{f}: not a readable image ({e})") from None
            ys.append(label)
    if not xs:
        raise DataError(f"{path}: no images found")
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def load_dataset(spec: str = "digits", resolution: int | None = None, seed: int = 0,
                 val_fraction: float = 0.2, test_fraction: float = 0.2) -> Dataset:
    """Load ``digits``, ``npz:PATH`` or ``folder:PATH``; split stratified by ``seed``.

    Images are resized to ``resolution``; by default to their own size, but at least 32 pixels.
    """
    if resolution is not None and resolution <= 0:
        raise DataError(f"resolution must be positive, got {resolution}")
    if spec == "digits":
        x, y = _load_digits()
    elif spec.startswith("npz:"):
        x, y = _load_npz(Path(spec[4:]))
    elif spec.startswith("folder:"):
        x, y = _load_folder(Path(spec[7:]), resolution)
    else:
        raise DataError(f"unknown dataset {spec!r} (use digits, npz:PATH or folder:PATH)")
    check_finite(spec, "x", x)
    classes = int(y.max()) + 1
    counts = np.bincount(y, minlength=classes)
    if y.min() < 0 or (counts == 0).any():
        raise DataError(f"{spec}: labels must be 0..K-1 with every class present")
    if counts.min() < 5:
        raise DataError(f"{spec}: too small for a train/val/test split "
                        f"(class {int(counts.argmin())} has {int(counts.min())} samples; need at least 5 per class)")
    idx = np.arange(len(y))
    try:
        rest, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y)
        train, val = train_test_split(rest, test_size=val_fraction / (1 - test_fraction), random_state=seed,
                                      stratify=y[rest])
    except ValueError as e:
        raise DataError(f"{spec}: too small for a train/val/test split ({e})") from None
    xt = torch.from_numpy(x)
    mean, std = xt[train].mean(), xt[train].std().clamp_min(1e-6)
    xt = (xt - mean) / std
    size = resolution or max(MIN_DEFAULT_RESOLUTION, *xt.shape[-2:])
    if xt.shape[-2:] != (size, size):
        xt = F.interpolate(xt, size=(size, size), mode="bilinear", align_corners=False)
    yt = torch.from_numpy(y)
    return Dataset(spec, xt[train], yt[train], xt[val], yt[val], xt[test], yt[test], classes, max(x.shape[-2:]))
