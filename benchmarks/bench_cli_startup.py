"""Claim: the CLI starts in well under a second. How long ``hwnas --help`` takes from a cold interpreter.

    .venv/bin/python benchmarks/bench_cli_startup.py [--runs 5] [--compare OTHER_CHECKOUT] [--json]

Runs ``python -m cli.main --help`` ``--runs`` times in fresh processes and prints the median wall time (target:
under 1 s). ``--compare`` times another checkout the same way (e.g. one from before the lazy imports).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import harness  # first: the repository on the import path



def median_help_seconds(repo: Path, runs: int, args: tuple[str, ...] = ("--help",)) -> float:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=repo, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="another checkout to time the same way")
    parser.add_argument("--json", action="store_true")
    a = parser.parse_args()
    result = {"runs": a.runs, "help_s": median_help_seconds(harness.ROOT, a.runs),
              "search_help_s": median_help_seconds(harness.ROOT, a.runs, ("search", "nars", "--help"))}
    if a.compare:
        result["compare"] = str(a.compare)
        result["compare_help_s"] = median_help_seconds(a.compare.resolve(), a.runs)
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(f"hwnas --help: median {result['help_s']:.3f} s of {a.runs} cold starts (target < 1 s)")
    print(f"hwnas search nars --help: median {result['search_help_s']:.3f} s")
    if a.compare:
        print(f"{a.compare}: hwnas --help median {result['compare_help_s']:.3f} s")


if __name__ == "__main__":
    main()
