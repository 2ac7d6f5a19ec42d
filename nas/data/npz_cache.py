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
from nas.files import atomic_path, human_bytes, make_folder

SCAN_BYTES = 16 << 20  # bytes of images read at a time when checking an array
FREE_MARGIN = 100_000_000  # bytes left free on the disk after extracting an .npz's cache
MAX_CHANNELS_GUESS = 4  # N x a x b x c with non-square images: the side at most this large is the channels


def cache_folder(path: Path) -> Path:
    return path.with_name(path.name + ".npy")


def _member_shape(z: zipfile.ZipFile, path: Path, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype an array's .npy header declares, checked against the bytes the zip holds for it (a
    header claiming more data than the member has is a corrupt or crafted file)."""
    info = z.getinfo(f"{name}.npy")
    try:
        with z.open(info) as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f, max_header_size=10_000)
            header = f.tell()
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file (array '{name}': {' '.join(str(e).split())})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: not a readable .npz file (array '{name}' holds Python objects; hwnas reads numbers "
                        f"only)")
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size != expected:
        raise DataError(f"{path}: not a readable .npz file (array '{name}' declares shape {shape} of {dtype}, "
                        f"{expected} bytes, but holds {info.file_size} bytes)")
    return shape, dtype


def extract_arrays(path: Path) -> Path:
    """The folder holding ``path``'s x.npy and y.npy (extracted now unless a fresh copy is there). The headers are
    checked first (shapes that agree, sizes the zip really holds) and the copy must fit the free disk space."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz file (numpy.savez's zip of arrays 'x' and 'y')")
    folder = cache_folder(path)
    with zipfile.ZipFile(path) as z:
        names = {Path(n).stem for n in z.namelist() if n.endswith(".npy")}
        if "x" not in names or "y" not in names:
            raise DataError(f"{path}: needs arrays 'x' and 'y' (has {', '.join(sorted(names)) or 'none'})")
        shapes = {name: _member_shape(z, path, name)[0] for name in ("x", "y")}
        if not shapes["x"] or len(shapes["y"]) != 1 or shapes["y"][0] != shapes["x"][0]:
            raise DataError(f"{path}: 'y' must be a vector of one label per image of 'x' (x has shape "
                            f"{shapes['x']}, y {shapes['y']})")
        todo = [name for name in ("x", "y") if not ((folder / f"{name}.npy").is_file() and
                                                   (folder / f"{name}.npy").stat().st_mtime >= path.stat().st_mtime)]
        needed = sum(z.getinfo(f"{name}.npy").file_size for name in todo)
        free = shutil.disk_usage(folder if folder.is_dir() else path.parent).free
        if todo and needed > free - FREE_MARGIN:
            raise DataError(f"{path}: its memory-map cache {folder} needs {human_bytes(needed)} (the arrays "
                            f"uncompressed) and {human_bytes(free)} are free; free space, or give npz:FOLDER "
                            f"holding x.npy and y.npy")
        make_folder(folder)
        try:
            for name in todo:
                with z.open(f"{name}.npy") as src, atomic_path(folder / f"{name}.npy", size_hint=needed) as tmp, \
                        open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except OSError as e:
            raise DataError(f"{path}: cannot write its memory-map cache {folder} ({e.strerror or e})") from None
    return folder


def channels_last(shape: tuple[int, ...], path: Path) -> bool:
    """Whether a 4-d ``x`` is N x H x W x C rather than N x C x H x W: the reading with square images, or (neither
    square) the one whose channel count is small (at most ``MAX_CHANNELS_GUESS``); DataError when both fit."""
    _, a, b, c = shape
    first, last = b == c, a == b  # square images: N x C x H x W | N x H x W x C
    if first != last:
        return last
    if first:
        return False  # e.g. N x 3 x 3 x 3: the documented default, channels first
    small_first, small_last = a <= MAX_CHANNELS_GUESS, c <= MAX_CHANNELS_GUESS
    if small_first == small_last:
        raise DataError(f"{path}: 'x' has shape {shape}: neither N x C x H x W nor N x H x W x C is clear (the "
                        f"images are not square); save it as N x C x H x W")
    return small_last


class NpyRows:
    """The images of a .npy file (N x H x W, N x C x H x W or N x H x W x C), read as N x C x H x W rows when asked
    for: ``rows[i]`` and ``rows.read(start, stop)``. A C-ordered file is read with ``os.pread`` (from any process:
    DataLoader workers open the file for themselves), so nothing of it stays resident; a Fortran-ordered one, whose
    rows are not contiguous, through a memory map."""

    def __init__(self, path: Path, mapped: np.memmap):
        self._fd: tuple[int, int] | None = None  # (pid, descriptor); first, since a refused file still meets __del__
        self.path, self.dtype, self.offset = path, mapped.dtype, mapped.offset
        self.fortran = not mapped.flags.c_contiguous and mapped.ndim > 1
        self.file_shape = mapped.shape
        self.channels_last = mapped.ndim == 4 and channels_last(mapped.shape, path)
        rest = mapped.shape[1:]
        if mapped.ndim == 3:
            rest = (1, *rest)
        elif self.channels_last:
            rest = (rest[2], rest[0], rest[1])
        self.shape = (mapped.shape[0], *rest)
        self.ndim = len(self.shape)
        self.row_bytes = int(np.prod(mapped.shape[1:], dtype=np.int64)) * self.dtype.itemsize

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
    try:  # both mapped: a header that claims more than the file holds fails here, allocating nothing
        x = np.load(folder / "x.npy", mmap_mode="r", allow_pickle=False)
        y = np.load(folder / "y.npy", mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as e:
        raise DataError(f"{path}: needs arrays x.npy and y.npy ({e.filename} is missing)") from None
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npz file ({' '.join(str(e).split())})") from None
    if x.ndim not in (3, 4):
        raise DataError(f"{path}: 'x' must be N x H x W or N x C x H x W, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: 'y' must be a vector of {len(x)} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: 'y' must hold integer class labels, got {y.dtype}")
    y = np.array(y)  # the labels, in memory (one per image: as many as the mapped images)
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
