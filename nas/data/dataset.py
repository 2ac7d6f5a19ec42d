"""Datasets: scikit-learn's ``digits`` (built in), ``npz:PATH`` and ``folder:PATH`` (streamed), split
deterministically; the splits themselves are ``nas.data.splits``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from nas.data.npz_cache import open_arrays
from nas.data.splits import ArraySplit, ImageFolderSplit, Normalised, Split, TensorSplit, channel_statistics
from nas.errors import DataError

MIN_DEFAULT_RESOLUTION = 32  # small images (digits are 8x8) are upsampled to this unless a resolution is given
MAX_DEFAULT_RESOLUTION = 1024  # a larger first image (or npz image) needs an explicit --resolution
MAX_RESOLUTION = 4096  # images are trained at most this large (a batch of 4096 px RGB images is GBs)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class Dataset:
    """Train / val / test splits of normalised C x H x W images, with the per-channel normalisation they use
    (computed from a training sample; stored in the run and recorded in exported models)."""

    name: str
    train: Split
    val: Split
    test: Split
    classes: int
    in_channels: int
    resolution: int
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    native_resolution: int = 0  # the images' own size, before resizing

    @classmethod
    def from_tensors(cls, name: str, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                     y_val: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, classes: int) -> "Dataset":
        """In-memory splits of already normalised N x C x H x W tensors."""
        return cls(name, TensorSplit(x_train, y_train), TensorSplit(x_val, y_val), TensorSplit(x_test, y_test),
                   classes, x_train.shape[1], x_train.shape[-1], [0.0] * x_train.shape[1], [1.0] * x_train.shape[1])

    @property
    def normalization(self) -> dict:
        return {"mean": self.mean, "std": self.std}

    # the labels of each split (every kind of split holds them in memory); the images stream: evaluate with
    # ``nas.train.evaluation.split_accuracy`` / ``nas.train.evaluation.split_parity``, sample with ``Split.first``
    @property
    def y_train(self) -> torch.Tensor:
        return self.train.labels

    @property
    def y_val(self) -> torch.Tensor:
        return self.val.labels

    @property
    def y_test(self) -> torch.Tensor:
        return self.test.labels

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    return d.images.astype(np.float32)[:, None] / 16.0, d.target.astype(np.int64)


def readable_image(path: Path) -> bool:
    """Whether PIL can identify and verify ``path`` (the header and structure; the pixels decode later). A JPEG's
    ``verify`` reads no image data, so a JPEG is decoded at 1/8 scale (its DCT scaling: a fraction of a full
    decode), which finds a truncated or corrupt stream."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.format != "JPEG":
                im.verify()
                return True
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
        return True
    except Exception:  # PIL raises many types for broken files
        return False


def _list_folder(path: Path, skip_bad_images: bool) -> tuple[list[Path], np.ndarray]:
    """The image files of a class-per-sub-folder tree and their labels; DataError naming how many cannot be
    read and one of them (unless ``skip_bad_images``)."""
    if not path.is_dir():
        raise DataError(f"dataset folder not found: {path}")
    class_dirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(f"{path}: needs one sub-folder of images per class (found {len(class_dirs)})")
    files, labels, bad, empty = [], [], [], []
    for label, d in enumerate(class_dirs):
        count, broken = len(files), len(bad)
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not readable_image(f):
                bad.append(f)
                continue
            files.append(f)
            labels.append(label)
        if len(files) == count:
            empty.append(d.name + (" (its images cannot be read)" if len(bad) > broken else ""))
    if bad and not skip_bad_images:
        raise DataError(f"{path}: {len(bad)} of {len(files) + len(bad)} images cannot be read (e.g. {bad[0]}); "
                        f"fix or remove them, or pass --skip-bad-images to train without them")
    if not files:
        raise DataError(f"{path}: no images found")
    if empty:
        raise DataError(f"{path}: class folder{'s' if len(empty) > 1 else ''} {', '.join(empty[:5])} hold"
                        f"{'' if len(empty) > 1 else 's'} no images ({len(empty)} of {len(class_dirs)} classes); "
                        f"add images or remove the folder")
    return files, np.asarray(labels, dtype=np.int64)


def split_indices(spec: str, y: np.ndarray, seed: int, val_fraction: float, test_fraction: float):
    """Stratified train / val / test index arrays; DataError when a class is too small to split."""
    if not 0 <= seed < 2 ** 32:
        raise DataError(f"the data split's seed must be 0 .. 2**32 - 1, got {seed}")
    if y.min() < 0 or y.max() >= len(y):  # checked before counting: bincount allocates up to the largest label
        raise DataError(f"{spec}: labels must be 0..K-1 with every class present (they run from {int(y.min())} to "
                        f"{int(y.max())} over {len(y)} samples)")
    classes = int(y.max()) + 1
    counts = np.bincount(y, minlength=classes)
    if (counts == 0).any():
        raise DataError(f"{spec}: labels must be 0..K-1 with every class present (class "
                        f"{int(np.flatnonzero(counts == 0)[0])} has no sample)")
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
    return classes, train, val, test


def _stream_folder(spec: str, path: Path, resolution: int | None, seed: int, val_fraction: float,
                   test_fraction: float, skip_bad_images: bool) -> Dataset:
    """An image folder decoded lazily (in DataLoader workers): only the paths are held in memory. By default the
    images keep the first one's own size (at least 32 px)."""
    from PIL import Image

    files, y = _list_folder(path, skip_bad_images)
    with Image.open(files[0]) as first:
        native, size = max(first.size), first.size
    if resolution is None and native > MAX_DEFAULT_RESOLUTION:
        raise DataError(f"{path}: its first image ({files[0].name}) is {size[0]} x {size[1]} px, more than the "
                        f"{MAX_DEFAULT_RESOLUTION} px a default resolution may be; pass --resolution (e.g. 224)")
    resolution = resolution or max(MIN_DEFAULT_RESOLUTION, native)
    classes, train, val, test = split_indices(spec, y, seed, val_fraction, test_fraction)
    raw = {name: ImageFolderSplit([files[i] for i in idx], y[idx], resolution)
           for name, idx in (("train", train), ("val", val), ("test", test))}
    mean, std = channel_statistics(raw["train"], seed=seed)
    splits = {name: Normalised(s, mean, std, resolution) for name, s in raw.items()}
    return Dataset(spec, splits["train"], splits["val"], splits["test"], classes, 3, resolution, mean, std, native)


def _stream_npz(spec: str, path: Path, resolution: int | None, seed: int, val_fraction: float,
                test_fraction: float) -> Dataset:
    """Arrays read row by row from their .npy file (``nas.data.npz_cache``): each image is read and normalised when a
    batch needs it."""
    x, y, scale = open_arrays(path)
    classes, train, val, test = split_indices(spec, y, seed, val_fraction, test_fraction)
    if resolution is None and max(x.shape[-2:]) > MAX_DEFAULT_RESOLUTION:
        raise DataError(f"{spec}: its images are {x.shape[-2]} x {x.shape[-1]} px, more than the "
                        f"{MAX_DEFAULT_RESOLUTION} px a default resolution may be; pass --resolution (e.g. 224)")
    size = resolution or max(MIN_DEFAULT_RESOLUTION, *x.shape[-2:])
    raw = {name: ArraySplit(x, y, idx, scale) for name, idx in (("train", train), ("val", val), ("test", test))}
    mean, std = channel_statistics(raw["train"], seed=seed)
    splits = {name: Normalised(s, mean, std, size) for name, s in raw.items()}
    return Dataset(spec, splits["train"], splits["val"], splits["test"], classes, x.shape[1], size, mean, std,
                   max(x.shape[-2:]))


def load_dataset(spec: str = "digits", resolution: int | None = None, seed: int = 0,
                 val_fraction: float = 0.2, test_fraction: float = 0.2, skip_bad_images: bool = False) -> Dataset:
    """Load ``digits``, ``npz:PATH`` or ``folder:PATH``; split stratified by ``seed``.

    Images are resized to ``resolution``; by default to their own size (a folder's: its first image's), but at
    least 32 pixels.
    ``digits`` is held in memory; ``npz:`` is read from its file row by row and ``folder:`` decoded when read. A folder with
    unreadable images is a DataError unless ``skip_bad_images``.
    """
    if resolution is not None and resolution <= 0:
        raise DataError(f"resolution must be positive, got {resolution}")
    if resolution is not None and resolution > MAX_RESOLUTION:
        raise DataError(f"resolution {resolution} px is above the {MAX_RESOLUTION} px hwnas trains at")
    if spec == "digits":
        x, y = _load_digits()
    elif spec.startswith("npz:"):
        return _stream_npz(spec, Path(spec[4:]), resolution, seed, val_fraction, test_fraction)
    elif spec.startswith("folder:"):
        return _stream_folder(spec, Path(spec[7:]), resolution, seed, val_fraction, test_fraction, skip_bad_images)
    else:
        raise DataError(f"unknown dataset {spec!r} (use digits, npz:PATH or folder:PATH)")
    classes, train, val, test = split_indices(spec, y, seed, val_fraction, test_fraction)
    xt = torch.from_numpy(x)
    mean, std = channel_statistics(TensorSplit(xt[train], torch.from_numpy(y[train])), seed=seed)
    xt = (xt - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    size = resolution or max(MIN_DEFAULT_RESOLUTION, *xt.shape[-2:])
    if xt.shape[-2:] != (size, size):
        xt = F.interpolate(xt, size=(size, size), mode="bilinear", align_corners=False)
    yt = torch.from_numpy(y)
    return Dataset(spec, TensorSplit(xt[train], yt[train]), TensorSplit(xt[val], yt[val]),
                   TensorSplit(xt[test], yt[test]), classes, xt.shape[1], size, mean, std, max(x.shape[-2:]))
