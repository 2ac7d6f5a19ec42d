"""One writer per run directory: ``.lock`` in the folder, held with ``flock`` for as long as the run's process lives.

The file names its owner (host, pid, start time, command), so that a second process on the same ``--out`` is
refused in one line that says who holds it. The kernel releases a ``flock`` when its process dies (kill -9
included), so a lock left by a dead run is found free: the next run takes it over and says whose it was. A clean
exit removes the file. Where the file system has no ``flock``, the owner's pid is checked instead (on this host; a
lock held from another host is then respected until it is deleted by hand).

A process may open its own run directory again (tests, resumed stages): the lock is per process and per folder.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from nas.errors import OutputError
from nas.files import make_folder

LOCK_FILE = ".lock"
_HELD: dict[Path, "RunLock"] = {}  # folder -> this process's lock on it


@dataclass
class RunLock:
    path: Path  # the lock file
    fd: int
    taken_over: str | None = None  # whose stale lock this one replaced, as a sentence
    pid: int = field(default_factory=os.getpid)  # the owner (a forked child inherits the lock but never releases)

    def release(self) -> None:
        """Remove the lock file and let go (unlinked first, so that a process waiting on this file sees it gone)."""
        if _HELD.get(self.path.parent) is not self or os.getpid() != self.pid:
            return
        del _HELD[self.path.parent]
        try:
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)


def owner_text(owner: dict) -> str:
    """``pid 123 on host h (search nars, since 2026-01-01 12:00:00)``, from a lock file's content."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner["since"])) if "since" in owner else "?"
    what = f"{owner['command']}, " if owner.get("command") else ""
    return f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} ({what}since {since})"


def _read_owner(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 4096)
    try:
        owner = json.loads(raw.decode()) if raw.strip() else {}
    except (UnicodeDecodeError, ValueError):
        return {"pid": "?", "host": "?"}  # a torn or foreign file: its owner is unknown
    return owner if isinstance(owner, dict) else {"pid": "?", "host": "?"}


def _alive_here(owner: dict) -> bool:
    """Whether the owner runs on this host and its pid is alive (the check where ``flock`` is missing)."""
    if owner.get("host") != socket.gethostname():
        return bool(owner)  # another host's (or an unknown) owner cannot be checked from here: respected
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _flock(fd: int) -> str:
    """Take the ``flock`` without waiting: "held", "busy" (another process holds it) or "unsupported" (a file
    system without ``flock``: the caller checks the owner's pid instead)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return "held"
    except BlockingIOError:
        return "busy"
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return "unsupported"
        raise


def _busy(folder: Path, owner: dict) -> OutputError:
    return OutputError(f"{folder} is in use by another run: {owner_text(owner)}; wait for it to end or choose "
                       f"another --out")


def holds(folder: str | Path) -> bool:
    """Whether this process holds ``folder``'s lock."""
    return Path(folder).absolute() in _HELD


def acquire(folder: str | Path, command: str | None = None) -> RunLock:
    """Lock ``folder`` (created if missing) for this process; OutputError naming the owner when another live
    process holds it. ``taken_over`` says whose lock it replaced, when its owner died holding it."""
    folder = Path(folder).absolute()
    if folder in _HELD:
        return _HELD[folder]
    path = folder / LOCK_FILE
    make_folder(folder)
    try:
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            state = _flock(fd)
            if state == "busy":
                owner = _read_owner(fd)
                os.close(fd)
                raise _busy(folder, owner)
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)  # its owner removed the file between our open and our lock: lock the new one
        previous = _read_owner(fd)
        if state == "unsupported" and previous and _alive_here(previous):
            os.close(fd)
            raise _busy(folder, previous)
        mine = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(), "command": command}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(mine) + "\n").encode())
    except OSError as e:
        raise OutputError(f"cannot lock {folder}: {e.strerror or e}") from None
    note = f"took over the lock of {owner_text(previous)}, which ended without releasing it" if previous else None
    lock = RunLock(path, fd, taken_over=note)
    _HELD[folder] = lock
    return lock


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD.values()):
        lock.release()
