"""The README's tour runs as written, on any machine: every `hwnas ...` and `python ...` line of its code blocks is
run, shrunk, on a simulated machine 2x slower and on one 2x faster than this one.

The lines are parsed from README.md itself, so the docs and the code cannot drift. Each line runs in a temporary
folder (with ``benchmarks/`` and ``examples/`` linked in and ``$HWNAS_LATENCY_TABLES`` pointing at a fresh tables
folder), in README order, so that later lines use what earlier ones made (arch.json, my.npz, the local-cpu table,
results/vit/model.pt). The only rewrite is ``SHRINK``: options *appended* to a line (fewer epochs, a smaller budget,
a tiny width and resolution) -- typer takes the last value of a repeated option. A line that is not run at all is
listed in ``NOT_RUN`` with its reason; the test fails on any other line it does not know.

The slower and faster machines: ``tests/scaled_machine/sitecustomize.py`` multiplies every latency hwnas measures
(profiling, calibration, drift checks, the shipped model) by ``$HWNAS_TEST_TIME_SCALE``. A target in milliseconds
that one machine reaches is out of reach on the other; the README's targets are relative to the device's table
(``nas.search.targets``), so the tour passes on both.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from nas.search.targets import parse_target
from tests.conftest import ROOT

README = ROOT / "README.md"
SCALED_MACHINE = ROOT / "tests" / "scaled_machine"  # its sitecustomize.py scales every measured latency
MACHINES = {"2x-slower": 2.0, "2x-faster": 0.5}
TINY = ("--resolution", "32", "--width", "0.25")
# (the words a line starts with, options appended to it); the first matching rule applies
SHRINK: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("hwnas", "train"), ("--epochs", "1")),
    # searches keep their width: the README's latency targets are for the default width
    (("hwnas", "search", "dnas"), ("--epochs", "2", "--final-epochs", "1")),
    (("hwnas", "search", "dmasking"), ("--epochs", "2", "--final-epochs", "1")),
    (("hwnas", "search", "nars"), ("--budget", "3", "--max-epochs", "1", "--pool", "64", "--generations", "2",
                                   "--population", "64", "--export", "none")),
    (("hwnas", "search", "chamnet"), ("--budget", "3", "--max-epochs", "1", "--pool", "64", "--generations", "2",
                                      "--population", "64", "--export", "none")),
    (("hwnas", "search", "optuna"), ("--budget", "6")),
    (("hwnas", "train-dynamic"), ("--epochs", "1")),
    (("hwnas", "latency", "profile-capacity"), ("--calibration", "0")),
    (("hwnas", "search", "capacity"), ("--trials", "3", "--no-measure")),
    (("hwnas", "search", "mixed-precision"), ("--epochs", "1", "--pretrain-epochs", "1", "--finetune-epochs", "0",
                                              "--fit-models", "0")),
    (("hwnas", "latency", "profile", "--space", "fbnet_a"), ("--calibration", "2")),
    (("hwnas", "latency", "profile"), (*TINY, "--calibration", "4")),
    (("hwnas", "latency", "predict"), TINY),
    (("hwnas", "latency", "validate"), (*TINY, "--samples", "3")),
    (("hwnas", "latency", "bundle"), (*TINY, "--calibration", "2")),
]
NOT_RUN = {
    "hwnas train fbnet_a --dataset folder:~/images --accelerator cuda --precision bf16 --loader-workers 8 "
    "--recipe r.yaml":
        "an example for a GPU and the user's own image folder (tests/test_engine.py streams a generated folder: "
        "with 2 workers and trains bf16 on the CPU; its CUDA test runs where a GPU is present)",
    "hwnas latency import results.json --device phone":
        "needs results.json, measured on the device by the bundle's measure.py (tests/test_latency_remote.py runs "
        "bundle -> measure.py -> import)",
}


def tour_lines(text: str) -> list[str]:
    """The command lines of the README's fenced code blocks (continuations joined, comments dropped)."""
    lines, block, pending = [], False, ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            block = not block
            continue
        if not block:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if line.split(" ", 1)[0] in ("hwnas", "python"):  # other blocks (the layout) are not commands
            lines.append(" ".join(shlex.split(line, comments=True)))
    return lines


def shrunk(words: list[str]) -> list[str]:
    for prefix, extra in SHRINK:
        if tuple(words[:len(prefix)]) == prefix:
            return words + list(extra)
    return words


def test_the_tour_is_parsed_and_every_line_is_accounted_for():
    lines = tour_lines(README.read_text())
    assert any(line.startswith("hwnas search dnas") for line in lines) and len(lines) >= 25
    assert set(NOT_RUN) <= set(lines), "NOT_RUN names a line the README no longer has"


def _option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def test_the_readme_gives_device_targets_relative_to_the_device():
    """A search costed on a device table gives its target relative to that device (pN, Fx:MODEL); milliseconds
    only for a table: space, whose latency column is data measured once, wherever."""
    searches = [shlex.split(line) for line in tour_lines(README.read_text()) if line.startswith("hwnas search")]
    targeted = [w for w in searches if "--target" in w or "--target-ms" in w]
    assert len(targeted) >= 5
    for words in targeted:
        table_space = (_option(words, "--space") or "").startswith("table:")
        assert "--target-ms" not in words or table_space, " ".join(words)
        if "--target" in words and not table_space:
            assert parse_target(_option(words, "--target")).relative, " ".join(words)


def test_the_scaled_machine_scales_what_hwnas_measures():
    """The simulated machines are real: the same timing, 1000x slower under HWNAS_TEST_TIME_SCALE=1000."""
    code = ("from nas.latency.timing import TimingConfig, time_interleaved; import numpy as np; "
            "print(time_interleaved([lambda: np.ones(200_000).sum()], TimingConfig(clock='cpu', max_rounds=3))[0]"
            ".p50_ms)")
    ms = {}
    for scale in ("1", "1000"):
        env = {**os.environ, "PYTHONPATH": f"{SCALED_MACHINE}{os.pathsep}{ROOT}", "HWNAS_TEST_TIME_SCALE": scale}
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        ms[scale] = float(r.stdout)
    assert ms["1000"] > 50 * ms["1"]


@pytest.mark.parametrize("machine", list(MACHINES))
def test_the_readme_tour_runs_on_a_slower_and_a_faster_machine(tmp_path, machine):
    for folder in ("benchmarks", "examples"):
        (tmp_path / folder).symlink_to(ROOT / folder)
    env = {**os.environ, "PYTHONPATH": f"{SCALED_MACHINE}{os.pathsep}{ROOT}", "COLUMNS": "200",
           "HWNAS_TEST_TIME_SCALE": str(MACHINES[machine]), "HWNAS_LATENCY_TABLES": str(tmp_path / "latency_tables")}
    timings = []
    for line in tour_lines(README.read_text()):
        if line in NOT_RUN:
            continue
        words = shrunk(shlex.split(line))
        argv = [sys.executable, "-m", "cli.main", *words[1:]] if words[0] == "hwnas" else [sys.executable, *words[1:]]
        start = time.perf_counter()
        r = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        timings.append((time.perf_counter() - start, line))
        assert r.returncode == 0, (f"README line failed on the {machine} machine: {line}\n(run as: {' '.join(words)})"
                                   f"\n{r.stderr[-3000:]}")
        if words[:2] == ["hwnas", "search"] and words[2] in ("dnas", "dmasking", "mixed-precision", "capacity"):
            last = r.stdout.strip().splitlines()[-1]
            assert last.startswith("next step: deploy") and "hwnas latency check --device" in last, r.stdout
    report = json.loads((tmp_path / "results" / "dm" / "report.json").read_text())  # a search judged on its target
    assert report["target"] == "p40" and report["target_ms"] > 0 and report["judged_on"] == "measured"
    print("\n".join(f"{s:6.1f} s  {line}" for s, line in timings))
