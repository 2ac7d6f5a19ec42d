"""The splits a training engine reads: in memory (``digits``), memory-mapped arrays (``npz:``) and image folders
decoded lazily in DataLoader workers (``folder:``), each a torch ``Dataset`` of normalised C x H x W images.

``split_batches`` cuts a split into (x, y) batches in the order a generator shuffles (the same order for every
rank; each rank takes its share of every global batch). In-memory splits are indexed directly (no DataLoader
overhead); the others go through a ``DataLoader`` with ``workers`` processes and pinned memory on CUDA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from nas.distributed import World
from nas.errors import DataError, HwnasError

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
    """Rows ``indices`` of a (memory-mapped) N x C x H x W array; uint8 arrays are scaled to [0, 1]."""

    def __init__(self, x: np.ndarray, y: np.ndarray, indices: np.ndarray, scale: float):
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


def channel_statistics(split: Split, sample: int = 512, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of up to ``sample`` images of ``split`` (raw [0, 1] values)."""
    n = len(split)
    idx = np.random.default_rng(seed).choice(n, size=min(sample, n), replace=False) if n > sample else range(n)
    x = torch.stack([split[int(i)][0] for i in idx]).double()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return [float(v) for v in mean], [float(v) for v in std]


def split_batches(split: Split, batch_size: int, generator: torch.Generator | None, *, workers: int = 0,
                  world: World | None = None, pin_memory: bool = False
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of ``split``, shuffled by ``generator`` (None: in order); under data parallelism this rank's
    equal share of every global batch of ``batch_size`` (a remainder of fewer samples than ranks is left out)."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    chunks = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if world is not None and world.size > 1:  # equal shares, so that every rank draws the same random numbers
        chunks = [c[:len(c) - len(c) % world.size][world.rank::world.size] for c in chunks]
        chunks = [c for c in chunks if len(c)]
    if isinstance(split, TensorSplit):
        for idx in chunks:
            yield split.x[idx], split.labels[idx]
        return
    loader = DataLoader(split, batch_sampler=[c.tolist() for c in chunks], num_workers=workers,
                        pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))
    try:
        yield from loader
    except HwnasError as e:  # raised in a worker process: the loader re-raises it with the worker's traceback
        raise type(e)(str(e).strip().splitlines()[-1].split(f"{type(e).__name__}: ", 1)[-1]) from None
