"""Run directories: results/<run-id>/ with config.json, one writer at a time (``nas.run_lock``), and a check that a
resumed run keeps its settings."""

from __future__ import annotations

import json
import time
from pathlib import Path

from nas.errors import OutputError, SearchError
from nas.files import finite_json, write_csv, write_json

RESULTS_DIR = Path("results")
CONFIG_FILE = "config.json"
# settings recorded only since a later version: a run whose config.json lacks one was started before it was recorded,
# and resumes as it did then (the key is compared wherever the stored config has it)
RECORDED_LATER = frozenset({"space_fingerprint", "split_seed"})


def default_run_path(kind: str, name: str) -> Path:
    return RESULTS_DIR / f"{kind}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """A run's output folder. Opening an existing run checks that ``config`` matches the stored one.

    A folder that holds nothing but the config.json of a start that failed before writing anything else may be
    reused with other settings: there is nothing to resume in it.
    """

    def __init__(self, path: str | Path, config: dict):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"--out {self.path} is a file, not a folder; choose another path")
        self.warnings: list[str] = []  # for the CLI to show (a stale lock taken over)
        from nas.run_lock import holds

        reopened = holds(self.path)  # this process's own run, opened again: its lock stays
        self.lock = self._lock(config.get("command"))
        try:
            self._open(config)
        except BaseException as e:
            if self.lock is not None and not reopened:
                self.lock.release()
            if isinstance(e, SearchError) and self.warnings:  # refused for other settings: still say the takeover
                raise SearchError(f"{e} ({'; '.join(self.warnings)})") from None
            raise

    def _lock(self, command: str | None):
        """The run's lock (``nas.run_lock``), held by the writer (rank 0 under torchrun, where every rank learns
        whether it got it); OutputError naming the owner when another process writes this folder."""
        import torch.distributed as dist  # torch: imported when a run is opened, not by `--help`

        from nas.run_lock import acquire

        distributed = dist.is_available() and dist.is_initialized()
        lock, refused = None, None
        if not distributed or dist.get_rank() == 0:
            try:
                lock = acquire(self.path, command)
            except OutputError as e:
                refused = e
        if distributed:  # every rank learns whether rank 0 got the lock
            got = [refused is None]
            dist.broadcast_object_list(got, src=0)
            if not got[0] and refused is None:
                raise OutputError(f"{self.path}: rank 0 could not lock this run directory (its message says why)")
        if refused is not None:
            raise refused
        if lock is not None and lock.taken_over:
            self.warnings.append(f"{self.path}: {lock.taken_over}")
        return lock

    def _open(self, config: dict) -> None:
        stored_file = self.path / CONFIG_FILE
        fresh = json.loads(json.dumps(finite_json(config)))
        self.resumed = stored_file.is_file() and self._has_outputs()
        if self.resumed:
            try:
                stored = json.loads(stored_file.read_text())
            except (ValueError, OSError):
                raise SearchError(f"{stored_file}: corrupt or unreadable config.json; use a new --out") from None
            if not isinstance(stored, dict):
                raise SearchError(f"{stored_file}: corrupt config.json (not a JSON object); use a new --out")
            diff = [k for k in sorted(set(stored) | set(fresh)) if stored.get(k) != fresh.get(k)
                    and not (k in RECORDED_LATER and k not in stored)]
            if diff:
                shown = "; ".join(f"{k}: was {stored.get(k)!r}, now {fresh.get(k)!r}" for k in diff[:3])
                raise SearchError(f"{self.path} was started with other settings ({shown}); "
                                  f"rerun with the same settings to resume, or choose a new --out")
        elif self.writer:
            write_json(stored_file, config)
        self.config = config

    @property
    def writer(self) -> bool:
        """Under torchrun only rank 0 writes the run directory; the other ranks' writes are skipped."""
        import torch.distributed as dist  # torch: imported when a run is written, not by `--help`

        return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0

    def _has_outputs(self) -> bool:
        """Whether the folder holds anything besides config.json (and the lock and the temp files of interrupted
        writes)."""
        return any(p.name != CONFIG_FILE and not p.name.startswith(".") for p in self.path.iterdir())

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj) -> Path:
        if self.writer:
            write_json(self.file(name), obj)
        return self.file(name)

    def write_csv(self, name: str, frame) -> Path:
        if self.writer:
            write_csv(self.file(name), frame)
        return self.file(name)
