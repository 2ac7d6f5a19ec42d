"""Which statistic of an item's timed runs repeats? Whole fbnet models timed again and again in interleaved rounds
(``nas.latency.remote_measure.timed_rounds``, as every table, validation and search measurement is), each set of
runs summarised by several statistics of the same runs.

    .venv/bin/python benchmarks/bench_timing.py [--resolutions 32 224] [--archs 30] [--repeats 6] [--clock cpu|wall]
                                                [--json OUT]

Prints, per resolution and statistic, the test-retest Kendall tau of the archs between repeats (mean and lowest
over the pairs of repeats) and how far an arch's figure moves between repeats once each repeat's global speed is
removed (90th percentile of |log ratio|). ``uncontended`` is the tables' statistic (``uncontended_ms``, the median
of the fastest twentieth of the runs); ``lowest round median`` the one before it. Fbnet at 32 px is width 0.25 (the
README's regime: models of about 0.1 ms), at other resolutions width 1.0. About 1 min per resolution on a 2-core VM.
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
from nas.latency import remote_measure  # noqa: E402
from nas.latency.calibrate import export_arch  # noqa: E402
from nas.latency.device import Device  # noqa: E402
from nas.latency.validate import kendall_tau, validation_archs  # noqa: E402

STATISTICS = {
    "uncontended (fastest 20th)": lambda times, medians: remote_measure.uncontended_ms(times),
    "fastest tenth": lambda times, medians: remote_measure.uncontended_ms(times, 0.1),
    "fastest fifth": lambda times, medians: remote_measure.uncontended_ms(times, 0.2),
    "lowest round median": lambda times, medians: min(medians),
    "median of all runs": lambda times, medians: float(np.median(times)),
    "fastest run": lambda times, medians: float(np.min(times)),
}


def repeated_figures(resolution: int, archs: int, repeats: int, clock: str) -> dict[str, np.ndarray]:
    """Per statistic, a (repeats x archs) array of figures from the same timed runs."""
    space = load_space("fbnet", resolution=resolution, width_multiplier=0.25 if resolution <= 32 else 1.0,
                       classes=10)
    device = Device(device_id="timing", clock=clock)
    with tempfile.TemporaryDirectory(prefix="bench-timing-") as tmp:
        chosen = validation_archs(space, archs, 11)
        paths = [export_arch(space, a, Path(tmp) / f"m{i}.onnx") for i, a in enumerate(chosen)]
        sessions = [device.open(p) for p in paths]
        runs = [lambda s=s: s.session.run(None, s.feeds) for s in sessions]
        figures = {name: [] for name in STATISTICS}
        for _ in range(repeats):
            samples, medians, _ = remote_measure.timed_rounds(runs, {"clock": clock})
            for name, statistic in STATISTICS.items():
                figures[name].append([statistic(t, m) for t, m in zip(samples, medians)])
    return {name: np.asarray(rows) for name, rows in figures.items()}


def repeatability(x: np.ndarray) -> dict[str, float]:
    taus = [kendall_tau(x[i], x[j]) for i, j in combinations(range(len(x)), 2)]
    r = np.log(x / np.median(x, axis=0))
    moves = np.abs(r - np.median(r, axis=1, keepdims=True))
    return {"retest_tau_mean": float(np.mean(taus)), "retest_tau_min": float(np.min(taus)),
            "arch_move_p90_pct": float(np.percentile(moves, 90) * 100)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 224])
    parser.add_argument("--archs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    out = {}
    for res in args.resolutions:
        figures = repeated_figures(res, args.archs, args.repeats, args.clock)
        out[res] = {name: repeatability(x) for name, x in figures.items()}
        print(f"fbnet {res} px, {args.archs} archs timed {args.repeats} times ({args.clock} clock):")
        for name, f in out[res].items():
            print(f"  {name:28s} retest tau {f['retest_tau_mean']:.3f} (lowest {f['retest_tau_min']:.3f}), "
                  f"an arch moves {f['arch_move_p90_pct']:.1f}% (90th pct)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
