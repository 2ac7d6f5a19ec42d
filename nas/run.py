"""Run directories: results/<run-id>/ with config.json, and a check that a resumed run keeps its settings."""

from __future__ import annotations

import json
import time
from pathlib import Path

from nas.errors import SearchError
from nas.files import write_csv, write_json

RESULTS_DIR = Path("results")


def default_run_path(kind: str, name: str) -> Path:
    return RESULTS_DIR / f"{kind}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    """A run's output folder. Opening an existing run checks that ``config`` matches the stored one."""

    def __init__(self, path: str | Path, config: dict):
        self.path = Path(path)
        stored_file = self.path / "config.json"
        self.resumed = stored_file.is_file()
        if self.resumed:
            try:
                stored = json.loads(stored_file.read_text())
            except json.JSONDecodeError:
                raise SearchError(f"{stored_file}: corrupt config.json; use a new --out") from None
            fresh = json.loads(json.dumps(config, default=str))
            diff = [k for k in sorted(set(stored) | set(fresh)) if stored.get(k) != fresh.get(k)]
            if diff:
                shown = "; ".join(f"{k}: was {stored.get(k)!r}, now {fresh.get(k)!r}" for k in diff[:3])
                raise SearchError(f"{self.path} was started with other settings ({shown}); "
                                  f"rerun with the same settings to resume, or choose a new --out")
        else:
            write_json(stored_file, config)
        self.config = config

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj) -> Path:
        write_json(self.file(name), obj)
        return self.file(name)

    def write_csv(self, name: str, frame) -> Path:
        write_csv(self.file(name), frame)
        return self.file(name)
