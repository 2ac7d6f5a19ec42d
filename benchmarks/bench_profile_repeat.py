"""Does a profiled table repeat? The same space profiled again and again in one process, each into a fresh table,
alternately in two passes (the default: each key keeps the faster of two timings a segment apart,
``nas.latency.profile``) and in one.

    .venv/bin/python benchmarks/bench_profile_repeat.py [--space fbnet] [--resolution 224] [--width 1.0]
                                                        [--repeats 4] [--clock cpu|wall] [--json OUT]

Prints, for each way, how far two of its profiles' rows disagree once one global scale between them is removed
(90th percentile of |log ratio| over the keys, mean over the pairs of profiles), and the seconds a profile took.
``--repeats`` profiles each way; about 16 s (two passes) and 8 s (one) per profile of fbnet at 224 px on a 2-core
VM.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from itertools import combinations
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nas.arch.space import load_space  # noqa: E402
from nas.latency.device import Device  # noqa: E402
from nas.latency.profile import profile_items, space_profile_items  # noqa: E402
from nas.latency.table import LatencyTable  # noqa: E402
from nas.latency.timing import TimingConfig  # noqa: E402


def profile_once(space, clock: str, passes: int) -> tuple[dict[str, float], float]:
    """One fresh table: its rows' p50 and the seconds its profile took."""
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as root:
        counts = profile_items(Device(device_id="repeat", clock=clock), space_profile_items(space), tables_dir=root,
                               timing=TimingConfig(clock=clock), passes=passes)
        return {str(k): row["p50_ms"] for k, row in LatencyTable.open("repeat", root).rows.items()}, counts["seconds"]


def disagreement(tables: list[dict[str, float]]) -> float:
    """Mean over pairs of profiles of the 90th percentile of |log ratio| of their rows, beside one global scale."""
    keys = list(tables[0])
    spreads = []
    for a, b in combinations(tables, 2):
        r = np.log([b[k] / a[k] for k in keys])
        spreads.append(float(np.percentile(np.abs(r - np.median(r)), 90)))
    return float(np.mean(spreads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="fbnet")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.repeats < 2:
        parser.error("--repeats must be at least 2")
    space = load_space(args.space, resolution=args.resolution, width_multiplier=args.width)
    tables, seconds = {2: [], 1: []}, {2: [], 1: []}
    for i in range(args.repeats):
        for passes in (2, 1):
            rows, s = profile_once(space, args.clock, passes)
            tables[passes].append(rows)
            seconds[passes].append(s)
        print(f"profile {i + 1} of {args.repeats} each way", flush=True)
    result = {"space": args.space, "resolution": args.resolution, "width": args.width,
              **{f"p90_disagreement_{p}_pass": disagreement(tables[p]) for p in (2, 1)},
              **{f"seconds_{p}_pass": float(np.mean(seconds[p])) for p in (2, 1)}}
    print(f"rows of two profiles differ by (90th percentile, beside one global scale): "
          f"{100 * result['p90_disagreement_2_pass']:.1f}% in two passes ({result['seconds_2_pass']:.1f} s a "
          f"profile), {100 * result['p90_disagreement_1_pass']:.1f}% in one ({result['seconds_1_pass']:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
