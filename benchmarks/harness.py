"""What the scripts in benchmarks/ share: the repository's paths, the import path (set up once, here), "profile a
device table, then calibrate it", and printing figures. A script imports it before anything from the repository::

    import harness  # noqa: F401  (first: puts the repository on the import path)

The scripts are of three kinds, named by prefix, and each runs as ``.venv/bin/python benchmarks/<script>.py``:

- ``bench_*``: benchmarks; they print performance figures (timings on a shared machine are noisy: say so);
- ``sweep_*``: sweeps; they run many inputs and print how many behave (``sweep_bad_inputs``);
- ``make_*``: data builders; they write a data file (``make_predict_table`` builds ``data/digits_joint.csv``,
  ``make_cluttered_digits`` and ``make_fashion_mnist`` write ``npz:`` datasets).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]  # the repository
BENCHMARKS = ROOT / "benchmarks"
DATA = BENCHMARKS / "data"
JOINT_TABLE = DATA / "digits_joint.csv"  # the predictor benchmarks' table space (make_predict_table.py)
TESTS = ROOT / "tests"  # the tests' fixtures (tiny spaces, tables), for scripts that reuse them

for _path in (TESTS, BENCHMARKS, ROOT):  # the import path: ROOT first, then benchmarks/ and tests/
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess that runs this checkout (``python -m cli.main``, ``-c "import ..."``): this
    process's, with the repository and benchmarks/ on ``PYTHONPATH``, and ``extra``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCHMARKS)]), **extra}


def profile_table(device, space, *, tables_dir: str | Path | None, timing=None, bits: tuple[int, ...] = (32,),
                  calibration: int = 0, on_progress=None) -> tuple[dict, object | None]:
    """Profile every block of ``space`` on ``device`` (a ``nas.latency.Device`` naming the table) into
    ``tables_dir``, then, with ``calibration`` > 0, measure that many whole models and fit the table's correction.

    ``space``: a YAML space (its blocks, at each precision in ``bits``) or a capacity space (its token-count
    units). Returns ``(profile_items' counts, the Correction or None)``."""
    from nas.latency.calibrate import calibrate
    from nas.latency.profile import profile_items, space_profile_items
    from nas.search.capacity.space import CapacitySpace

    capacity = isinstance(space, CapacitySpace)
    if capacity:
        from nas.search.capacity.latency import calibrate_capacity, capacity_profile_items
        items = capacity_profile_items(space)
    else:
        items = space_profile_items(space, bits)
    counts = profile_items(device, items, tables_dir=tables_dir, timing=timing, on_progress=on_progress)
    if calibration <= 0:
        return counts, None
    if capacity:
        return counts, calibrate_capacity(device, space, models=calibration, tables_dir=tables_dir)
    return counts, calibrate(device, space, models=calibration, tables_dir=tables_dir, timing=timing)


def print_figures(figures, as_json: bool, lines: Callable[..., Iterable[str]]) -> None:
    """The figures: as strict JSON (``--json``: NaN and infinities as null), or as the text ``lines(figures)``."""
    if as_json:
        from nas.files import finite_json

        print(json.dumps(finite_json(figures), indent=2))
        return
    for line in lines(figures):
        print(line)


def progress(stage: str, done: int, total: int | None, note: str) -> None:
    """A ``nas.progress.Progress`` that keeps one line on stderr per stage."""
    end = "\n" if total is not None and done >= total else ""
    print(f"\r  {stage}: {done}/{total if total is not None else '?'} {note[:60]:60s}", end=end, file=sys.stderr,
          flush=True)
