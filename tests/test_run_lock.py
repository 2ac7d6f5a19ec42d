"""Issue 28, item 2: one writer per run directory. A second process on a busy `--out` is refused in one line naming
the owner; a lock left by a killed run is taken over with a message; torchrun ranks (only rank 0 writes) and
resumed runs still work."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from ddp_support import end_rank, free_port, torchrun_env
from nas.errors import OutputError, SearchError
from nas.run import RunDir
from nas.run_lock import LOCK_FILE
from test_predict_fixtures import BENCH_TABLE, InProcess

ROOT = Path(__file__).resolve().parents[1]
HOLDER = textwrap.dedent("""
    import sys, time
    from nas.run import RunDir
    RunDir(sys.argv[1], {"command": "search dmasking", "seed": 0})
    print("locked", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def hwnas(capsys, monkeypatch):
    return InProcess(capsys, monkeypatch)


def _holder(out: Path) -> subprocess.Popen:
    """Another process that opened ``out`` as its run directory and is still running."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _search(out: Path) -> tuple:
    return ("search", "nars", "--space", f"table:{BENCH_TABLE}", "--objective", "val_accuracy",
            "--latency-column", "latency_ms", "--target-ms", "0.07", "--budget", "4", "--out", out)


def test_a_second_run_on_a_busy_out_is_refused_naming_the_owner(hwnas, tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        config = (out / "config.json").read_text()
        r = hwnas(*_search(out))
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "is in use by another run" in lines[0] and f"pid {holder.pid} on host {socket.gethostname()}" \
            in lines[0] and "search dmasking" in lines[0], lines[0]
        assert (out / "config.json").read_text() == config  # the owner's, untouched
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "config.json"]
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over_with_a_message(hwnas, tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid  # the dead run's lock is still there
    r = hwnas(*_search(out))
    assert r.returncode == 0, r.stderr
    assert f"took over the lock of pid {holder.pid} on host {socket.gethostname()}" in r.stderr
    assert (out / "report.json").is_file()


def test_a_run_refused_for_other_settings_still_says_it_took_over_a_stale_lock(tmp_path):
    out = tmp_path / "run"
    RunDir(out, {"command": "search dmasking", "seed": 0}).write_json("report.json", {})
    from nas.run_lock import _release_all

    _release_all()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": 0,
                                             "command": "search dmasking"}) + "\n")
    with pytest.raises(SearchError, match=f"other settings.*took over the lock of pid {dead.pid}"):
        RunDir(out, {"command": "search dmasking", "seed": 1})


def test_a_clean_run_leaves_no_lock_and_resumes(hwnas, tmp_path):
    from nas.run_lock import _release_all

    out = tmp_path / "run"
    assert hwnas(*_search(out)).returncode == 0
    _release_all()  # what the process's exit does
    assert not (out / LOCK_FILE).exists()
    r = hwnas(*_search(out))
    assert r.returncode == 0 and "took over" not in r.stderr and "(resuming)" in r.stderr, r.stderr


def test_one_process_may_open_its_run_directory_again(tmp_path):
    first = RunDir(tmp_path / "run", {"a": 1})
    second = RunDir(tmp_path / "run", {"a": 1})
    assert first.lock is second.lock and first.lock is not None


def test_a_refused_start_releases_the_lock(tmp_path):
    from nas.run_lock import _release_all

    RunDir(tmp_path / "run", {"a": 1}).write_json("arch.json", {})
    _release_all()  # that process ended
    with pytest.raises(SearchError, match="other settings"):
        RunDir(tmp_path / "run", {"a": 2})
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    assert RunDir(tmp_path / "run", {"a": 1}).resumed


def _open_rank(rank: int, size: int, port: int, out: Path, results: Path) -> None:
    import torch.distributed as dist

    torchrun_env(rank, size, port)
    dist.init_process_group("gloo")
    outcome = {}
    for name in ("free", "busy"):
        try:
            run = RunDir(out / name, {"command": "train"})
            outcome[name] = "locked" if run.lock is not None else "follower"
        except OutputError as e:
            outcome[name] = str(e)
    (results / f"rank{rank}.json").write_text(json.dumps(outcome))
    end_rank()


def test_under_torchrun_rank_0_holds_the_lock_and_every_rank_learns_if_it_could_not(tmp_path):
    holder = _holder(tmp_path / "busy")
    try:
        mp.spawn(_open_rank, args=(2, free_port(), tmp_path, tmp_path), nprocs=2, join=True)
    finally:
        holder.kill()
        holder.wait()
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["free"] == "locked" and ranks[1]["free"] == "follower"
    assert f"in use by another run: pid {holder.pid}" in ranks[0]["busy"]
    assert "rank 0 could not lock" in ranks[1]["busy"]
