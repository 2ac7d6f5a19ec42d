"""Issue 28, item 3: a disk that fills mid-run gives one line naming the path and the free space needed, not a
traceback, and leaves nothing half-written. The full disk is simulated portably: the write fails as it does on a
full disk (torch.save's "enforce fail", SQLite's "database or disk is full" inside Optuna's StorageInternalError,
ENOSPC) and the file system reports no free space."""

import errno
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from nas.errors import OutputError
from nas.files import atomic_path, write_json
from test_predict_fixtures import BENCH_TABLE, TINY_SPACE_YAML, InProcess, error_line

Usage = namedtuple("Usage", "total used free")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def hwnas(capsys, monkeypatch):
    return InProcess(capsys, monkeypatch)


@pytest.fixture
def full_disk(monkeypatch):
    """The file system reports 0 bytes free."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 9, 10 ** 9, 0))


def test_train_on_a_full_disk_names_the_checkpoint_and_the_space_it_needs(hwnas, tmp_path, monkeypatch, full_disk):
    real_save = torch.save

    def save_on_full_disk(obj, f, *args, **kwargs):  # what torch 2.x raises when the disk fills mid-file
        with open(f, "wb") as out:
            out.write(b"PK" * 267)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", save_on_full_disk)
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE_YAML)
    out = tmp_path / "run"
    line = error_line(hwnas("train", space, "--resolution", "8", "--epochs", "1", "--out", out),
                    f"cannot write {out / 'checkpoint.pt'}: the disk is full (0 B free in {out}", "KB needed")
    assert "rerun the same command" in line
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp.pt") or p.name == "checkpoint.pt"]
    monkeypatch.setattr(torch, "save", real_save)


def test_enospc_from_any_atomic_write_is_one_output_error(tmp_path, full_disk):
    with pytest.raises(OutputError, match=r"cannot write .*a\.json: the disk is full \(0 B free in .*, about 12 B "
                                          r"needed\)"):
        with atomic_path(tmp_path / "a.json", size_hint=12) as tmp:
            tmp.write_text("{}")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not list(tmp_path.iterdir())  # the temp file is gone, the target never appeared


def test_an_error_that_is_not_a_full_disk_is_left_alone(tmp_path):
    with pytest.raises(RuntimeError, match="not a disk problem"):
        with atomic_path(tmp_path / "a.pt"):
            raise RuntimeError("not a disk problem")
    write_json(tmp_path / "b.json", {"x": 1})  # and writing works as before
    assert (tmp_path / "b.json").read_text().strip() == '{\n  "x": 1\n}'


STUDY_FILLS_THE_DISK = """
import collections, shutil, sqlite3, sys
import optuna, sqlalchemy
shutil.disk_usage = lambda path: collections.namedtuple("U", "total used free")(10 ** 9, 10 ** 9, 0)
real, calls = optuna.storages.RDBStorage.set_trial_user_attr, [0]
def set_attr_until_full(self, *args, **kwargs):  # a few trials in, SQLite cannot grow the database any more
    calls[0] += 1
    if calls[0] > 40:
        orig = sqlite3.OperationalError("database or disk is full")
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from \\
            sqlalchemy.exc.OperationalError("INSERT INTO trial_user_attributes ...", {}, orig)
    return real(self, *args, **kwargs)
optuna.storages.RDBStorage.set_trial_user_attr = set_attr_until_full
sys.argv = ["hwnas"] + sys.argv[1:]
from cli.main import main
main()
"""


def test_a_search_whose_study_fills_the_disk_names_the_study_file(tmp_path):
    """In a subprocess: the terminal must show one line, with nothing from Optuna's own log of the failed trial."""
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", STUDY_FILLS_THE_DISK, "search", "nars", "--space", f"table:{BENCH_TABLE}",
                        "--objective", "val_accuracy", "--latency-column", "latency_ms", "--target-ms", "0.07",
                        "--budget", "20", "--out", out], capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    error_line(r, f"cannot write {out.resolve() / 'study.db'}: the disk is full (0 B free", "at least 1 MB needed")
    assert "Trial" not in r.stderr, r.stderr  # Optuna's warning that a trial failed, with its traceback
