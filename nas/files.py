"""Atomic file writes: write to a temporary file beside the target, then rename (nothing is half-written).

Files get the modes the user's umask gives (0644 under the usual 022), as other tools' files do; JSON never holds
NaN or Infinity (they are written as null, so every report is valid JSON)."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from nas.errors import OutputError

T = TypeVar("T")

FULL_BELOW = 1_000_000  # bytes: a disk with less free space than this after a failed write is taken as full


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (changing it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path, size_hint: int | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` atomically.

    OutputError when the folder cannot be created or written (a file in the way, no permission), or when the disk
    fills while the file is written (naming the path, the free space and ``size_hint``, the bytes it needs, or at
    least what was written before it filled).
    """
    path = Path(path)
    make_folder(path.parent, path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e} ({_blocker(path.parent)})") from None
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600 files
    finally:
        os.close(fd)
    try:
        try:
            yield Path(tmp)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError ("enforce fail")
            written = _size(tmp)
            full = disk_full(path, e, f"about {human_bytes(size_hint)}" if size_hint else
                             f"more than the {human_bytes(written)} written" if written else "more")
            if full is None:
                raise
            raise full from None
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise OutputError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def disk_full(path: Path, error: BaseException, needed: str) -> OutputError | None:
    """The one-line error for ``error`` if a full disk (or a quota) caused it, else None: the path, the free space
    there and ``needed`` (what the write needs, in words). A library's failed write counts when the disk has less
    than ``FULL_BELOW`` bytes left."""
    folder = next((p for p in [Path(path).parent, *Path(path).parents] if p.exists()), Path("."))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if getattr(error, "errno", None) not in (errno.ENOSPC, errno.EDQUOT) and free >= FULL_BELOW:
        return None
    return OutputError(f"cannot write {path}: the disk is full ({human_bytes(free)} free in {folder}, {needed} "
                       f"needed); free some space and rerun the same command (it resumes)")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _size(path: str | Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def make_folder(folder: Path, target: Path | None = None) -> None:
    """Create ``folder`` (and its parents); OutputError naming ``target`` (default: the folder) and what is in the
    way when it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write {target or folder}: {e.strerror or e} ({_blocker(folder)})") from None


def _blocker(folder: Path) -> str:
    """Why ``folder`` cannot hold files: the first part of it that is a file, or the lack of permission."""
    for part in [folder, *folder.parents]:
        if part.exists():
            if not part.is_dir():
                return f"{part} is a file, not a folder; choose another path"
            return f"{part} is not writable; choose another path"
    return "choose another path"


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path, size_hint=len(text.encode())) as tmp:
        tmp.write_text(text)


def finite_json(value):
    """``value`` with every NaN or infinite float (also numpy / torch scalars and arrays) replaced by None."""
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return finite_json(_jsonable(value))


def json_digest(value) -> str:
    """A short, stable hash of a JSON-able value (keys sorted): what a fingerprint compares."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(finite_json(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_csv(path: str | Path, frame) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _jsonable(value):
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def new_figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
               dpi: float | None = None, **subplots):
    """``(figure, axes)``: a matplotlib figure made without pyplot (no global state to close, no display) and its
    axes (``Figure.subplots`` arguments: ``squeeze``, ``gridspec_kw``, ...); ``save_figure`` draws it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    return fig, fig.subplots(nrows, ncols, **subplots)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay a figure out (``tight_layout``) and write it to ``path`` as PNG, atomically. The one place hwnas chooses a
    matplotlib backend: Agg, which draws without a display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def read_json_record(path: Path, build: Callable[[dict], T], corrupt: Callable[[str], Exception]) -> T | None:
    """``build`` applied to the JSON object in ``path``; None when there is no such file. A file that is not JSON,
    or whose keys ``build`` finds missing or of the wrong type, raises ``corrupt(reason)`` (one line)."""
    if not path.is_file():
        return None
    try:
        return build(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # json.JSONDecodeError is a ValueError
        raise corrupt(" ".join(str(e).split())[:160] or type(e).__name__) from None
