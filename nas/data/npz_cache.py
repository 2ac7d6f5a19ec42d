"""``npz:`` datasets, memory-mapped: ``np.load`` cannot map an array inside a zip, so the arrays ``x`` and ``y`` of
an .npz are extracted once into a cache folder beside it (``data.npz`` -> ``data.npz.npy/x.npy``, ``y.npy``),
refreshed when the .npz is newer; ``npz:FOLDER`` with ``x.npy`` and ``y.npy`` is read as it is. Nothing but the
labels is held in memory: images are read row by row from the file (``NpyRows``, with ``os.pread``: pages of a memory
map that a pass has touched would stay in the process's resident memory, one copy of the whole file after an
epoch), and the checks (finite values, the pixel scale) run over the images in chunks of bounded size.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from nas.errors import DataError
from nas.files import atomic_path

SCAN_BYTES = 16 << 20  # bytes of images read at a time when checking an array


def cache_folder(path: Path) -> Path:
    return path.with_name(path.name + ".npy")


def extract_arrays(path: Path) -> Path:
    """The folder holding ``path``'s x.npy and y.npy (extracted now unless a fresh copy is there)."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz file (numpy.savez's zip of arrays 'x' and 'y')")
    folder = cache_folder(path)
    with zipfile.ZipFile(path) as z:
        names = {Path(n).stem for n in z.namelist() if n.endswith(".npy")}
        if "x" not in names or "y" not in names:
            raise DataError(f"{path}: needs arrays 'x' and 'y' (has {', '.join(sorted(names)) or 'none'})")
        try:
            folder.mkdir(exist_ok=True)
            for name in ("x", "y"):
                target = folder / f"{name}.npy"
                if target.is_file() and target.stat().st_mtime >= path.stat().st_mtime:
                    continue
                with z.open(f"{name}.npy") as src, atomic_path(target) as tmp, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except OSError as e:
            raise DataError(f"{path}: cannot write its memory-map cache {folder} ({e.strerror or e})") from None
    return folder


class NpyRows:
    """The images of a .npy file (N x H x W, N x C x H x W or N x H x W x C), read as N x C x H x W rows when asked
    for: ``rows[i]`` and ``rows.read(start, stop)``. A C-ordered file is read with ``os.pread`` (from any process:
    DataLoader workers open the file for themselves), so nothing of it stays resident; a Fortran-ordered one, whose
    rows are not contiguous, through a memory map."""

    def __init__(self, path: Path, mapped: np.memmap):
        self.path, self.dtype, self.offset = path, mapped.dtype, mapped.offset
        self.fortran = not mapped.flags.c_contiguous and mapped.ndim > 1
        self.file_shape = mapped.shape
        self.channels_last = mapped.ndim == 4 and mapped.shape[-1] in (1, 3) and mapped.shape[1] not in (1, 3)
        rest = mapped.shape[1:]
        if mapped.ndim == 3:
            rest = (1, *rest)
        elif self.channels_last:
            rest = (rest[2], rest[0], rest[1])
        self.shape = (mapped.shape[0], *rest)
        self.ndim = len(self.shape)
        self.row_bytes = int(np.prod(mapped.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._fd: tuple[int, int] | None = None  # (pid, descriptor)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}  # a spawned worker opens the file itself

    def __del__(self) -> None:
        if self._fd is not None and self._fd[0] == os.getpid():
            os.close(self._fd[1])

    def _descriptor(self) -> int:
        if self._fd is None or self._fd[0] != os.getpid():  # forked into a worker: a descriptor of its own
            self._fd = (os.getpid(), os.open(self.path, os.O_RDONLY))
        return self._fd[1]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as an array of ``stop - start`` x C x H x W."""
        count = max(0, min(stop, len(self)) - start)
        if self.fortran:
            rows = np.array(np.load(self.path, mmap_mode="r", allow_pickle=False)[start:start + count])
        else:
            buffer = os.pread(self._descriptor(), count * self.row_bytes, self.offset + start * self.row_bytes)
            if len(buffer) != count * self.row_bytes:
                raise DataError(f"{self.path}: the file ends before row {start + count} of {len(self)} "
                                f"(truncated?)")
            rows = np.frombuffer(buffer, dtype=self.dtype).reshape(count, *self.file_shape[1:])
        if self.channels_last:
            return rows.transpose(0, 3, 1, 2)
        return rows[:, None] if rows.ndim == 3 else rows

    def __getitem__(self, i: int) -> np.ndarray:
        return self.read(int(i), int(i) + 1)[0]


def open_arrays(path: Path) -> tuple[NpyRows, np.ndarray, float]:
    """The N x C x H x W images (read when asked for), their labels, and the factor that scales pixels to [0, 1]."""
    if not path.exists():
        raise DataError(f"dataset file not found: {path}")
    folder = path if path.is_dir() else extract_arrays(path)
    try:
        x = np.load(folder / "x.npy", mmap_mode="r", allow_pickle=False)
        y = np.load(folder / "y.npy", allow_pickle=False)
    except FileNotFoundError as e:
        raise DataError(f"{path}: needs arrays x.npy and y.npy ({e.filename} is missing)") from None
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if x.ndim not in (3, 4):
        raise DataError(f"{path}: 'x' must be N x H x W or N x C x H x W, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: 'y' must be a vector of {len(x)} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: 'y' must hold integer class labels, got {y.dtype}")
    if len(x) == 0:
        raise DataError(f"{path}: 'x' holds no images")
    if not (np.issubdtype(x.dtype, np.number) and not np.iscomplexobj(x)) or x.dtype == np.bool_:
        raise DataError(f"{path}: 'x' must hold numbers, got {x.dtype}")
    rows = NpyRows(folder / "x.npy", x)
    del x  # (mapped, never read: its header gave the layout)
    bad, largest = 0, -np.inf
    step = max(1, SCAN_BYTES // max(rows.row_bytes, 1))
    for i in range(0, len(rows), step):
        chunk = rows.read(i, i + step)
        if np.issubdtype(chunk.dtype, np.integer):
            largest = max(largest, float(chunk.max()))
            continue
        finite = np.isfinite(chunk)
        bad += int(chunk.size - np.count_nonzero(finite))
        if finite.any():
            largest = max(largest, float(chunk[finite].max()))
    if bad:
        raise DataError(f"npz:{path}: array 'x' holds {bad} non-finite value{'s' if bad > 1 else ''} "
                        f"(NaN or infinity) of {rows.size}; clean the data")
    return rows, y.astype(np.int64), (1 / 255.0 if largest > 1.5 else 1.0)
