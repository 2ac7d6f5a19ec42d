"""The splits a training engine reads: in memory (``digits``), arrays read row by row (``npz:``) and image folders
decoded lazily in DataLoader workers (``folder:``), each a torch ``Dataset`` of normalised C x H x W images.

``nas.train.loader`` cuts a split into (x, y) batches in the order a generator shuffles (the same order for every
rank; each rank takes its share of every global batch). In-memory splits are indexed directly (no DataLoader
overhead); the others go through a ``DataLoader`` whose ``workers`` processes persist between passes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nas.data.npz_cache import NpyRows
from nas.errors import DataError

EVAL_CROP_FRACTION = 0.875  # evaluation: resize the short side to resolution / 0.875, then centre-crop


class Split(torch.utils.data.Dataset):
    """Normalised images and their integer labels (``labels``: a tensor, for counting and splitting)."""

    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as (x, y) tensors (for evaluation sets and small data)."""
        return self.first(len(self)), self.labels

    def first(self, count: int) -> torch.Tensor:
        """The first ``count`` images as one tensor (calibration samples), decoding no others."""
        n = min(count, len(self))
        return torch.stack([self[i][0] for i in range(n)]) if n else torch.empty(0)


class TensorSplit(Split):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.labels = x, y

    def __getitem__(self, i: int):
        return self.x[i], self.labels[i]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x, self.labels

    def first(self, count: int) -> torch.Tensor:
        return self.x[:count]


class Normalised(Split):
    """Per-channel (x - mean) / std of ``base``'s raw [0, 1] images, resized to ``resolution`` if they are not."""

    def __init__(self, base: Split, mean: list[float], std: list[float], resolution: int):
        self.base, self.labels, self.resolution = base, base.labels, resolution
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x[None], size=(self.resolution, self.resolution), mode="bilinear",
                              align_corners=False)[0]
        return (x - self.mean) / self.std, y


class ArraySplit(Split):
    """Rows ``indices`` of an N x C x H x W array (``nas.data.npz_cache.NpyRows``: read from the file when asked
    for); ``scale`` takes the pixels to [0, 1]."""

    def __init__(self, x: NpyRows, y: np.ndarray, indices: np.ndarray, scale: float):
        self.x, self.indices, self.scale = x, indices, scale
        self.labels = torch.from_numpy(np.asarray(y[indices], dtype=np.int64))

    def __getitem__(self, i: int):
        return torch.from_numpy(np.asarray(self.x[self.indices[i]], dtype=np.float32) * self.scale), self.labels[i]


def decode_image(path: Path, resolution: int) -> np.ndarray:
    """An image file as 3 x resolution x resolution floats in [0, 1]: the short side resized to
    resolution / 0.875, then the centre crop (deterministic; training augments on the device afterwards)."""
    from PIL import Image
    try:
        return _decode(Image, path, resolution)
    except Exception as e:  # PIL raises many types for broken files; the listing's check missed this one
        raise DataError(f"{path}: cannot decode this image ({' '.join(str(e).split()) or type(e).__name__}); fix "
                        f"or remove it (or pass --skip-bad-images, which leaves out the files found broken)") \
            from None


def _decode(Image, path: Path, resolution: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        short = max(resolution, round(resolution / EVAL_CROP_FRACTION))
        w, h = im.size
        scale = short / min(w, h)
        im = im.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        return np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0


class ImageFolderSplit(Split):
    """Image files decoded when read (in DataLoader workers); nothing is held in memory but the paths."""

    def __init__(self, files: list[Path], labels: np.ndarray, resolution: int):
        self.files, self.resolution = files, resolution
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __getitem__(self, i: int):
        return torch.from_numpy(decode_image(self.files[i], self.resolution)), self.labels[i]


STATISTICS_CHUNK = 64  # images decoded at a time for the normalisation statistics


def channel_statistics(split: Split, sample: int = 512, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of up to ``sample`` images of ``split`` (raw [0, 1] values), read
    ``STATISTICS_CHUNK`` images at a time: each chunk's mean and squared deviations from it (float64) are merged
    as Chan et al.'s parallel variance does, so memory holds one chunk, whatever the sample size."""
    n = len(split)
    idx = np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False) if n > sample else range(n)
    idx = [int(i) for i in idx]
    count, mean, squares = 0, torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    for start in range(0, len(idx), STATISTICS_CHUNK):
        x = torch.stack([split[i][0] for i in idx[start:start + STATISTICS_CHUNK]]).double()
        values = x.shape[0] * x.shape[2] * x.shape[3]
        chunk_mean = x.mean(dim=(0, 2, 3))
        chunk_squares = ((x - chunk_mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3))
        if count == 0:
            count, mean, squares = values, chunk_mean, chunk_squares
            continue
        delta, total = chunk_mean - mean, count + values
        mean = mean + delta * (values / total)
        squares = squares + chunk_squares + delta * delta * (count * values / total)
        count = total
    std = (squares / max(count - 1, 1)).sqrt().clamp_min(1e-6)
    return [float(v) for v in mean], [float(v) for v in std]
