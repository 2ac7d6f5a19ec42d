"""``npz:`` datasets, memory-mapped: ``np.load`` cannot map an array inside a zip, so the arrays ``x`` and ``y`` of
an .npz are extracted once into a cache folder beside it (``data.npz`` -> ``data.npz.npy/x.npy``, ``y.npy``),
refreshed when the .npz is newer; ``npz:FOLDER`` with ``x.npy`` and ``y.npy`` is mapped as it is. Nothing but the
labels is read into memory; checks (finite values, the pixel scale) run over the images in chunks.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np

from nas.errors import DataError
from nas.files import atomic_path

CHUNK = 4096  # images per chunk when scanning an array


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


def open_arrays(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Memory-mapped N x C x H x W images, their labels, and the factor that scales pixels to [0, 1]."""
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
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # N x H x W x C, as a view of the map
    if x.ndim != 4:
        raise DataError(f"{path}: 'x' must be N x H x W or N x C x H x W, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: 'y' must be a vector of {len(x)} labels, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: 'y' must hold integer class labels, got {y.dtype}")
    if len(x) == 0:
        raise DataError(f"{path}: 'x' holds no images")
    if not (np.issubdtype(x.dtype, np.number) and not np.iscomplexobj(x)) or x.dtype == np.bool_:
        raise DataError(f"{path}: 'x' must hold numbers, got {x.dtype}")
    bad, largest = 0, -np.inf
    for i in range(0, len(x), CHUNK):
        chunk = np.asarray(x[i:i + CHUNK], dtype=np.float64)
        finite = np.isfinite(chunk)
        bad += int(chunk.size - np.count_nonzero(finite))
        if finite.any():
            largest = max(largest, float(chunk[finite].max()))
    if bad:
        raise DataError(f"npz:{path}: array 'x' holds {bad} non-finite value{'s' if bad > 1 else ''} "
                        f"(NaN or infinity) of {x.size}; clean the data")
    return x, y.astype(np.int64), (1 / 255.0 if largest > 1.5 else 1.0)
