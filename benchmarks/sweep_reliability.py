"""Every bad input and fault ends cleanly (one error line, exit 2; a killed run resumes; no secret leaks), each run as
a user runs it (a subprocess); prints the counts.

Outcomes per case:
- clean: a bad input exits 2 with one `error:` line (naming what the case expects), or a fault ends as it must
  (a killed search resumes to exactly its budget, a stale lock is taken over, ...);
- traceback: a Python traceback, or an exit code other than 0 and 2;
- accepted: a bad input that exited 0 (or a fault whose outcome is wrong);
- hung: killed after the timeout;
- left-files: a refused input that created or changed a file in the case's folder (its bytes; an npz's memory-map
  cache, `x.npz.npy/`, is allowed: it is a valid cache reused next time);
- leaked: a credential in any printed line or written file (counted with the others: a case is one outcome).
Full disks are simulated (the write fails as on a full disk and the file system reports no free space), so the
sweep runs anywhere without root.

    PYTHONPATH=. .venv/bin/python benchmarks/sweep_reliability.py [--only SUBSTRING] [--timeout 240]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import quote

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_bounds import forged_results  # noqa: E402
from test_latency_support import FAST, SMALL_SPACE  # noqa: E402
from test_predict_fixtures import BENCH_TABLE, TINY_SPACE_YAML  # noqa: E402
from test_reliability_resume import check_complete, complete_trials, damage_history  # noqa: E402

RUN_CLI = "\nimport sys\nsys.argv = ['hwnas'] + sys.argv[1:]\nfrom cli.main import main\nmain()\n"
FULL_DISK = """
import collections, shutil
shutil.disk_usage = lambda p: collections.namedtuple('U', 'total used free')(10**9, 10**9, 0)
"""
TORCH_SAVE_FULL = FULL_DISK + """
import torch
def _save(obj, f, *a, **k):
    open(f, 'wb').write(b'PK' * 267)
    raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534')
torch.save = _save
"""
SQLITE_FULL = FULL_DISK + """
import sqlite3, optuna, sqlalchemy
_real, _n = optuna.storages.RDBStorage.set_trial_user_attr, [0]
def _attr(self, *a, **k):
    _n[0] += 1
    if _n[0] > 40:
        raise optuna.exceptions.StorageInternalError('An exception is raised during the commit.') from \\
            sqlalchemy.exc.OperationalError('INSERT', {}, sqlite3.OperationalError('database or disk is full'))
    return _real(self, *a, **k)
optuna.storages.RDBStorage.set_trial_user_attr = _attr
"""
SMALL_FREE = """
import collections, shutil
shutil.disk_usage = lambda p: collections.namedtuple('U', 'total used free')(10**9, 10**9 - 50_000_000, 50_000_000)
"""
SEARCH = ("search", "nars", "--space", f"table:{BENCH_TABLE}", "--objective", "val_accuracy", "--latency-column",
          "latency_ms", "--target-ms", "0.07")


@dataclass
class Case:
    name: str
    args: tuple
    expect: str = "refuse"  # refuse: exit 2, one line holding `says`; complete: exit 0 and `check` passes
    says: str = ""
    prepare: Callable[[Path], None] | None = None  # builds the case's inputs (or its fault) in its folder
    check: Callable[[Path, str], str | None] | None = None  # what is wrong after the command, or None
    patch: str = ""  # Python run in the subprocess before the CLI (a simulated full disk)
    secrets: tuple = ()
    cleanup: Callable[[], None] | None = None
    watch: bool = True  # refused: nothing in the case's folder may change


def hwnas(args, patch: str = "", timeout: float = 240, background: bool = False):
    cmd = [sys.executable, "-c", patch + RUN_CLI, *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if background:
        return proc
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return "hung", out, err


# ---- faults: killed searches -------------------------------------------------------------------------------------
def killed_search(workers: int, at: int, damage: str = "") -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        out = folder / "run"
        proc = hwnas([*SEARCH, "--budget", "20", "--workers", workers, "--out", out], background=True)
        deadline = time.time() + 240
        while proc.poll() is None and complete_trials(out) < at and time.time() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        if damage:
            damage_history(out / "history.csv", damage)
    return prepare


def exact_budget(folder: Path, stderr: str) -> str | None:
    try:
        check_complete(folder / "run")  # the budget exactly, each candidate evaluated once, history.csv = study
    except AssertionError as e:
        return " ".join(str(e).split())[:200]
    return None


# ---- faults: one writer per run ----------------------------------------------------------------------------------
HOLDERS: list[subprocess.Popen] = []


def holding(kill: bool) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        proc = hwnas(["train", folder / "tiny.yaml", "--resolution", "8", "--epochs", "500", "--out",
                      folder / "run"], background=True)
        deadline = time.time() + 120
        lock = folder / "run" / ".lock"
        while not (lock.is_file() and lock.stat().st_size) and time.time() < deadline:  # its owner written
            time.sleep(0.05)
        if kill:  # a run killed holding its lock before it wrote anything else (its outputs would pin settings)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            for p in (folder / "run").iterdir():
                if p.name != ".lock":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        else:
            HOLDERS.append(proc)
    return prepare


def stop_holders() -> None:
    while HOLDERS:
        proc = HOLDERS.pop()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


# ---- inputs ------------------------------------------------------------------------------------------------------
def tiny(folder: Path) -> None:
    (folder / "tiny.yaml").write_text(TINY_SPACE_YAML)


def images(folder: Path, first_size=None, truncate=False, empty_class=False) -> None:
    from PIL import Image

    for c in ("a", "b"):
        (folder / "imgs" / c).mkdir(parents=True)
        for i in range(8):
            pixels = (np.random.default_rng(i).random((24, 24, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / "imgs" / c / f"{i}.jpg")
    if truncate:
        raw = (folder / "imgs" / "a" / "3.jpg").read_bytes()
        (folder / "imgs" / "a" / "3.jpg").write_bytes(raw[:len(raw) // 2])
    if first_size:  # the first file of the first class, sorted
        (folder / "imgs" / "a" / "0.jpg").unlink()
        Image.new("RGB", first_size).save(folder / "imgs" / "a" / "0.png")
    if empty_class:
        (folder / "imgs" / "zebra").mkdir()


def npz(folder: Path, x=None, y=None, lying_y: int = 0) -> None:
    x = np.random.default_rng(0).random((60, 8, 8)).astype(np.float32) if x is None else x
    y = np.arange(60) % 3 if y is None else y
    if lying_y:
        (folder / "arrays").mkdir()
        np.save(folder / "arrays" / "x.npy", x)
        with open(folder / "arrays" / "y.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (lying_y,)})
            f.write(y.astype("<i8").tobytes())
        return
    np.savez_compressed(folder / "d.npz", x=x, y=y)


class Payload:
    """Any Python object a pickle can carry: torch's weights-only reader refuses its global."""


def tampered_checkpoint(folder: Path) -> None:
    import torch

    tiny(folder)
    code, _, err = hwnas(["train", folder / "tiny.yaml", "--resolution", "8", "--epochs", "1", "--out",
                          folder / "run"])
    assert code == 0, err
    state = torch.load(folder / "run" / "checkpoint.pt", weights_only=True)
    torch.save({**state, "extra": Payload()}, folder / "run" / "checkpoint.pt")


def import_results(damage: Callable[[dict], None]) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        data = forged_results(SHARED / "bundle.zip")
        damage(data)
        (folder / "results.json").write_text(json.dumps(data))
    return prepare


def plain_study(folder: Path) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=f"sqlite:///{folder / 'plain.db'}", study_name="plain").optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2)


def in_channels(expected: int) -> Callable[[Path, str], str | None]:
    def check(folder: Path, stderr: str) -> str | None:
        args = json.loads((folder / "run" / "config.json").read_text())["space_args"]
        return None if args.get("in_channels") == expected else f"in_channels {args.get('in_channels')}"
    return check


def no_secret_stored(secrets: tuple) -> Callable[[Path, str], str | None]:
    def check(folder: Path, stderr: str) -> str | None:
        texts = [p.read_text(errors="replace") for p in (folder / "run").glob("*.json")]
        with sqlite3.connect(folder / "shared.db") as db:
            texts.append("\n".join(db.iterdump()))
        return next((f"{s!r} stored" for s in secrets for t in texts if s in t), None)
    return check


SHARED = Path(tempfile.mkdtemp(prefix="reliability-sweep-"))
URLS = [("postgresql://alice:s3cretpw@127.0.0.1:1/nas", ("s3cretpw",)),
        ("postgresql://u2:SEC/RE?T#P%Wd@127.0.0.1:1/nas", ("SEC/RE?T#P%Wd", "SEC/RE", "T#P%Wd")),
        ("postgresql://u3@127.0.0.1:1/nas?password=QRYSECRET", ("QRYSECRET",)),
        (f"postgresql://u4:{quote('p@ss/w?rd#1%', safe='')}@127.0.0.1:1/nas",
         ("p@ss/w?rd#1%", quote("p@ss/w?rd#1%", safe="")))]


def cases() -> list[Case]:
    t = SHARED
    tiny_train = ("train", "{f}/tiny.yaml", "--resolution", "8", "--epochs", "1", "--out", "{f}/run")
    out = ("--out", "{f}/run")
    c = [
        # 1. killed searches resume to exactly their budget
        *[Case(f"search killed at {at} with --workers {w}{', history.csv ' + d if d else ''}, rerun",
               (*SEARCH, "--budget", "20", "--workers", w, "--out", "{f}/run"), "complete",
               prepare=killed_search(w, at, d), check=exact_budget)
          for w, at, d in ((1, 4, ""), (1, 19, "torn"), (2, 12, ""), (2, 12, "torn"), (2, 16, "deleted"),
                           (4, 10, ""))],
        # 2. one writer per run
        Case("a second run on a busy --out", (*SEARCH, "--budget", "4", *out), says="is in use by another run: pid",
             prepare=lambda f: (tiny(f), holding(False)(f)), cleanup=stop_holders, watch=False),
        Case("a stale lock (its owner killed)", tiny_train, "complete", prepare=lambda f: (tiny(f), holding(True)(f)),
             check=lambda f, err: None if "took over the lock of pid" in err else "no message"),
        # 3. full disk
        Case("train on a full disk", tiny_train, says="checkpoint.pt: the disk is full", prepare=tiny,
             patch=TORCH_SAVE_FULL, watch=False),
        Case("search nars on a full disk", (*SEARCH, "--budget", "20", *out), says="study.db: the disk is full",
             patch=SQLITE_FULL, watch=False),
        # 4. secrets
        *[Case(f"search on storage form {i + 1}", (*SEARCH, "--budget", "4", "--storage", url, *out),
               says="cannot open the Optuna storage", secrets=s) for i, (url, s) in enumerate(URLS)],
        *[Case(f"{' '.join(cmd)} on storage form {i + 2}", (*cmd, "--storage", url), says="cannot open",
               secrets=s) for cmd in (("worker",), ("search", "status")) for i, (url, s) in enumerate(URLS[1:3])],
        Case("a password with a raw '@'", (*SEARCH, "--storage", "postgresql://u5:PART1@PART2@127.0.0.1:1/nas"),
             says="write it as %40", secrets=("PART1", "PART2")),
        *[Case(f"a search on a credentialed storage (form {i + 1}), stored", (
            *SEARCH, "--budget", "4", "--init", "2", "--storage", url, "--study", f"s{i}", *out), "complete",
            patch="import nas.search.blackbox.study as s\ns.driver_url = lambda url: 'sqlite:///{f}/shared.db'\n",
            secrets=sec, check=no_secret_stored(sec)) for i, (url, sec) in enumerate(URLS)],
        # 5. refused checkpoint
        Case("a checkpoint holding Python objects", tiny_train, says="not a plain checkpoint",
             prepare=tampered_checkpoint, check=lambda f, err: "torch's advice" if "weights_only" in err else None),
        # 6. image folders
        Case("a truncated JPEG", ("train", "fbnet_a", "--width", "0.25", "--dataset", "folder:{f}/imgs", *out),
             says="3.jpg", prepare=lambda f: images(f, truncate=True)),
        Case("a truncated JPEG with --skip-bad-images", ("train", "{f}/tiny.yaml", "--dataset", "folder:{f}/imgs",
                                                         "--skip-bad-images", "--epochs", "1", *out), "complete",
             prepare=lambda f: (tiny(f), images(f, truncate=True))),
        Case("a 100000 x 4 px first image", ("train", "fbnet_a", "--dataset", "folder:{f}/imgs", *out),
             says="is 100000 x 4 px", prepare=lambda f: images(f, first_size=(100_000, 4))),
        Case("a class folder without images", ("train", "fbnet_a", "--dataset", "folder:{f}/imgs", *out),
             says="zebra holds no images", prepare=lambda f: images(f, empty_class=True)),
        # 7. npz
        Case("npz negative labels", ("train", "fbnet_a", "--dataset", "npz:{f}/d.npz", *out), says="labels must be",
             prepare=lambda f: npz(f, y=np.arange(60) % 3 - 1)),
        Case("npz labels near 1e9", ("train", "fbnet_a", "--dataset", "npz:{f}/d.npz", *out), says="labels must be",
             prepare=lambda f: npz(f, y=(np.arange(60) % 3) * 499_999_999)),
        Case("y.npy claiming 1e12 labels", ("train", "fbnet_a", "--dataset", "npz:{f}/arrays", *out),
             says="not a readable .npz", prepare=lambda f: npz(f, lying_y=10 ** 12)),
        Case("an npz whose cache exceeds the free space", ("train", "fbnet_a", "--dataset", "npz:{f}/d.npz", *out),
             says="its memory-map cache", patch=SMALL_FREE,
             prepare=lambda f: npz(f, x=np.zeros((6000, 64, 64), np.float32), y=np.arange(6000) % 3)),
        Case("an N x 8 x 8 x 2 npz", ("train", "{f}/tiny.yaml", "--dataset", "npz:{f}/d.npz", "--epochs", "1", *out),
             "complete", check=in_channels(2),
             prepare=lambda f: (tiny(f), npz(f, x=np.random.default_rng(0).random((60, 8, 8, 2)).astype(np.float32)))),
        # 8. unbounded or silently accepted
        Case("train --threads 10000", ("train", "fbnet_a", "--threads", "10000", *out), says="at most"),
        Case("worker --threads 10000", ("worker", "--storage", "sqlite:///{f}/x.db", "--threads", "10000"),
             says="at most"),
        Case("bundle --calibration 100000000", ("latency", "bundle", "--space", t / "small.yaml", "--calibration",
                                                "100000000", "--out", "{f}/b.zip"), says="--calibration"),
        Case("bundle --calibration -5", ("latency", "bundle", "--space", t / "small.yaml", "--calibration", "-5",
                                         "--out", "{f}/b.zip"), says="--calibration"),
        Case("bundle --out over a file", ("latency", "bundle", "--space", t / "small.yaml", "--out", "{f}/notes.txt"),
             says="is not an hwnas bundle", prepare=lambda f: (f / "notes.txt").write_text("mine")),
        *[Case(f"latency import {name}", ("latency", "import", "{f}/results.json", "--tables-dir", "{f}/tables"),
               says=says, prepare=import_results(damage)) for name, damage, says in (
            ("Infinity", lambda d: d["blocks"][next(iter(d["blocks"]))].update(p50_ms=float("inf")), "not a finite"),
            ("1e300 ms", lambda d: d["blocks"][next(iter(d["blocks"]))].update(p50_ms=1e300), "at most"),
            ("a 1e12 ms calibration model", lambda d: d["models"][next(iter(d["models"]))].update(
                p50_ms=1e12, p90_ms=1e12), "at most"),
            ("an arch of space nope", lambda d: d["manifest"]["models"][0]["arch"].update(space="nope"),
             "not an arch of space"))],
        Case("recipe warmup_epochs > epochs", ("train", "fbnet_a", "--recipe", "{f}/r.yaml", *out),
             says="warmup_epochs (5) must be below", prepare=lambda f: (f / "r.yaml").write_text("epochs: 3\n"
                                                                                                 "warmup_epochs: 5\n")),
        Case("recipe lr: .inf", ("train", "fbnet_a", "--recipe", "{f}/r.yaml", *out), says="finite number",
             prepare=lambda f: (f / "r.yaml").write_text("lr: .inf\n")),
        Case("--storage 'sqlite:///'", (*SEARCH, "--storage", "sqlite:///", *out), says="names no SQLite file"),
        Case("--storage ''", (*SEARCH, "--storage", "", *out), says="--storage is empty"),
        Case("--study ''", (*SEARCH, "--study", "", *out), says="--study is empty"),
        Case("worker on a mistyped SQLite path", ("worker", "--storage", "sqlite:///{f}/stduy.db"),
             says="no such file"),
        Case("search status on a mistyped SQLite path", ("search", "status", "--storage", "sqlite:///{f}/stduy.db"),
             says="no such file"),
        Case("latency check --model missing", ("latency", "check", "dev", "--model", "{f}/none.onnx", "--tables-dir",
                                               t / "tables"), says="no such file"),
        Case("latency check --model not ONNX", ("latency", "check", "dev", "--model", "{f}/m.onnx", "--tables-dir",
                                                t / "tables"), says="not an ONNX model",
             prepare=lambda f: (f / "m.onnx").write_text("text")),
        Case("search status on a plain Optuna study", ("search", "status", "--storage", "sqlite:///{f}/plain.db",
                                                       "--study", "plain"), says="not made by `hwnas search`",
             prepare=plain_study),
    ]
    return c


def snapshot(folder: Path) -> dict:
    """Each file's content digest (a file rewritten with the same bytes, as a resumed run does, is unchanged)."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file() and ".npz.npy" not in str(p)}


def run_case(case: Case, timeout: float) -> tuple[str, str]:
    folder = Path(tempfile.mkdtemp(prefix="case-", dir=SHARED))
    args = [str(a).replace("{f}", str(folder)) for a in case.args]
    patch = case.patch.replace("{f}", str(folder))
    try:
        if case.prepare:
            case.prepare(folder)
        before = snapshot(folder)
        code, out, err = hwnas(args, patch, timeout)
        problem = case.check(folder, err) if case.check and code in (0, 2) else None
    finally:
        if case.cleanup:
            case.cleanup()
    errors = [" ".join(e.split()) for e in err.split("error: ")[1:]]
    if code == "hung":
        return "hung", err[-300:]
    if "Traceback" in err or code not in (0, 2):
        return "traceback", err[-600:]
    leaked = [s for s in case.secrets if s in out + err]
    if leaked:
        return "leaked", f"{leaked[0]!r} printed"
    if case.expect == "complete":
        return ("clean", "") if code == 0 and problem is None else ("accepted", problem or err[-300:])
    if code == 0:
        return "accepted", out[-300:]
    if len(errors) != 1 or case.says not in errors[0]:
        return "accepted", f"exit 2 but: {err[-300:]}"
    if problem:
        return "accepted", problem
    if case.watch and snapshot(folder) != before:
        changed = sorted(set(snapshot(folder).items()) ^ set(before.items()))
        return "left-files", str(changed[:3])
    return "clean", errors[0][:140]


def setup() -> None:
    from nas.arch.space import load_space
    from nas.latency.bundle import write_bundle
    from nas.latency.device import Device
    from nas.latency.profile import profile_items, space_profile_items

    (SHARED / "small.yaml").write_text(SMALL_SPACE)
    space = load_space(str(SHARED / "small.yaml"))
    profile_items(Device(device_id="dev"), space_profile_items(space), tables_dir=SHARED / "tables", timing=FAST)
    write_bundle(space, SHARED / "bundle.zip", calibration=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name holds this")
    parser.add_argument("--timeout", type=float, default=240, help="seconds before a case counts as hung")
    args = parser.parse_args()
    setup()
    counts = Counter()
    chosen = [c for c in cases() if args.only in c.name]
    for case in chosen:
        start = time.time()
        outcome, note = run_case(case, args.timeout)
        counts[outcome] += 1
        print(f"{outcome:10s} {time.time() - start:5.1f}s  {case.name}: {note}", flush=True)
    print(f"\n{len(chosen)} inputs and faults: " + ", ".join(
        f"{counts[k]} {k}" for k in ("clean", "traceback", "accepted", "hung", "left-files", "leaked")))


if __name__ == "__main__":
    main()
