"""Claims of latency tables: a space profiles in under a minute, and the LatencyModel predicts whole models within
10% (and ranks them better than FLOPs). Profiling wall time and prediction accuracy on this machine.

    .venv/bin/python benchmarks/bench_latency.py [--space fbnet] [--resolution 224] [--samples 50]
                                                 [--ort-threads 1 2] [--clock wall|cpu] [--json]

For each thread count it profiles the space into a fresh temporary device table (blocks + calibration,
timed end to end: the "< 60 s" target), then measures ``--samples`` random archs end to end and prints
within_10pct / Kendall tau / MAPE of the LatencyModel, the same for the naive sum of table p50s, FLOPs tau,
and the fallback regressor's 5-fold error on the table's own rows. Run it on a quiet machine: timings on a
shared machine are noisy (``--clock cpu`` makes 1-thread figures robust to other processes; see timing.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import harness  # first: the repository on the import path
import numpy as np

from nas.arch.space import load_space  # noqa: E402
from nas.latency.device import Device  # noqa: E402
from nas.latency.model import FallbackRegressor, LatencyModel  # noqa: E402
from nas.latency.timing import TimingConfig  # noqa: E402
from nas.latency.validate import validate  # noqa: E402
from nas.run import RunDir  # noqa: E402


def fallback_cv_mape(lm: LatencyModel, folds: int = 5) -> float:
    keys = lm.table.keys()
    rows, net = [lm.table.get(k) for k in keys], [lm.net_ms(k) for k in keys]
    idx = np.random.default_rng(0).permutation(len(keys))
    errors = []
    for f in range(folds):
        test = idx[f::folds]
        train = np.setdiff1d(idx, test)
        reg = FallbackRegressor([keys[i] for i in train], [rows[i] for i in train], [net[i] for i in train])
        predicted = reg.predict_ms([keys[i] for i in test])  # one batched prediction per fold
        errors += [abs(p - net[i]) / net[i] for p, i in zip(predicted, test)]
    return float(np.mean(errors) * 100)


def run(space_name: str, resolution: int, samples: int, threads: int, clock: str, root: Path) -> dict:
    space = load_space(space_name, resolution=resolution)
    device = f"bench-{threads}t-{clock}"
    timing = TimingConfig()
    start = time.perf_counter()
    counts, correction = harness.profile_table(Device(threads=threads, clock=clock, device_id=device), space,
                                               tables_dir=root, timing=timing, calibration=8)
    blocks_s, profile_s = counts["seconds"], time.perf_counter() - start
    lm = LatencyModel.load(device, tables_dir=root)
    run_dir = RunDir(root / f"validate-{device}", {"device": device, "samples": samples})
    summary = validate(lm, space, run_dir, samples=samples, seed=0, timing=timing)
    return {"threads": threads, "clock": clock, "keys": counts["total"], "profile_blocks_s": blocks_s,
            "profile_total_s": profile_s, "calibration_models": correction.fitted_on,
            "correction": {"base_ms": correction.base_ms, "scale": correction.scale,
                           "per_block_ms": correction.per_block_ms},
            "fallback_cv_mape": fallback_cv_mape(lm), **{k: summary[k] for k in summary if k not in
                                                          ("device", "warnings")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="fbnet")
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--ort-threads", type=int, nargs="+", default=[1, 2], help="ONNX Runtime threads")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        results = [run(args.space, args.resolution, args.samples, threads, args.clock if threads == 1 else "wall",
                       Path(tmp)) for threads in args.ort_threads]
    harness.print_figures(results, args.json,
                          lambda rs: [line for r in rs for line in lines(args.space, args.resolution, r)])


def lines(space: str, resolution: int, r: dict) -> list[str]:
    return [f"{space}@{resolution}, {r['threads']} thread(s), clock {r['clock']}: profiled {r['keys']} keys "
            f"in {r['profile_blocks_s']:.1f} s + calibration = {r['profile_total_s']:.1f} s wall",
            f"  LatencyModel over {r['samples']} archs: within_10pct {r['within_10pct']:.2f}, "
            f"kendall_tau {r['kendall_tau']:.3f}, MAPE {r['mape']:.2f}%, bias {r['mean_bias_pct']:+.2f}%, "
            f"max error {r['max_abs_error_pct']:.1f}%",
            f"  naive sum of p50s:          within_10pct {r.get('naive_within_10pct', float('nan')):.2f}, "
            f"kendall_tau {r.get('naive_kendall_tau', float('nan')):.3f}, "
            f"MAPE {r.get('naive_mape', float('nan')):.2f}%",
            f"  FLOPs kendall_tau {r['flops_kendall_tau']:.3f}; measured {r['measured_ms_range'][0]:.2f}-"
            f"{r['measured_ms_range'][1]:.2f} ms; fallback regressor 5-fold MAPE per block "
            f"{r['fallback_cv_mape']:.1f}%"]


if __name__ == "__main__":
    main()
