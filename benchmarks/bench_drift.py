"""Claim: ``hwnas latency check --recalibrate`` (one global rescale) restores a drifted table's predictions. A table
validated right after profiling, then after the machine drifted, before and after the rescale.

    .venv/bin/python benchmarks/bench_drift.py [--space fbnet] [--resolution 224] [--width 1.0] [--samples 30]
                                               [--slowdown 1.05 | --device ID --tables-dir DIR] [--json]

Without ``--device`` it profiles the space into a fresh temporary table (blocks + calibration, which keeps the
reference models), validates it at once (``--samples`` random archs: within +-10%, MAPE, bias), then simulates a
machine that runs ``--slowdown`` x slower (every timing multiplied) and prints the drift ``latency check`` reads,
the validation before the rescale and after it. With ``--device`` (a table profiled hours ago, on this machine) it
skips profiling and the simulation: a real later re-timing, before and after the rescale (the table's correction
is rescaled in place). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import tempfile
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import harness  # first: the repository on the import path

from nas.arch.space import load_space  # noqa: E402
from nas.latency.device import Device  # noqa: E402
from nas.latency.drift import check_drift, recalibrate  # noqa: E402
from nas.latency.model import LatencyModel  # noqa: E402
from nas.latency.table import LatencyTable  # noqa: E402
from nas.latency.timing import TimingConfig  # noqa: E402
from nas.latency.validate import validate  # noqa: E402
from nas.run import RunDir  # noqa: E402


@contextmanager
def slower_machine(factor: float):
    """Every timing of every Device multiplied by ``factor`` (a machine that drifted)."""
    real = Device.time_sessions

    def time_sessions(self, sessions, timing=None, on_round=None):
        return [replace(s, p50_ms=factor * s.p50_ms, p90_ms=factor * s.p90_ms, mean_ms=factor * s.mean_ms,
                        std_ms=factor * s.std_ms) for s in real(self, sessions, timing, on_round)]

    Device.time_sessions = time_sessions
    try:
        yield
    finally:
        Device.time_sessions = real


def validation(device: str, root: Path, space, samples: int, name: str, timing: TimingConfig) -> dict:
    lm = LatencyModel.load(device, root)
    s = validate(lm, space, RunDir(Path(tempfile.mkdtemp(prefix=f"bench-drift-{name}-")), {"phase": name}),
                 samples=samples, seed=0, timing=timing)
    return {"within_10pct": s["within_10pct"], "mape": s["mape"], "bias_pct": s["mean_bias_pct"],
            "kendall_tau": s["kendall_tau"]}


def run(args) -> dict:
    space = load_space(args.space, resolution=args.resolution, width_multiplier=args.width)
    timing = TimingConfig(max_seconds=args.max_seconds, clock=args.clock)
    out: dict = {"space": space.name, **space.space_args(), "samples": args.samples}
    if args.device:
        root, device = Path(args.tables_dir) if args.tables_dir else None, args.device
    else:
        root, device = Path(tempfile.mkdtemp(prefix="bench-drift-tables-")), "bench-drift"
        harness.profile_table(Device(clock=args.clock, device_id=device), space, tables_dir=root, timing=timing,
                              calibration=args.calibration)
        out["right_after_profiling"] = validation(device, root, space, args.samples, "fresh", timing)
    table = LatencyTable.open(device, root)
    with slower_machine(args.slowdown if not args.device else 1.0):
        check = check_drift(table, timing=timing)
        out["drift_pct"] = check.drift_pct
        out["before_recalibrate"] = validation(device, root, space, args.samples, "drifted", timing)
        corr = recalibrate(table, check)
        out["rescale"] = corr.rescale
        out["after_recalibrate"] = validation(device, root, space, args.samples, "rescaled", timing)
        out["drift_after_pct"] = check_drift(table, timing=timing).drift_pct
    out["simulated_slowdown"] = None if args.device else args.slowdown
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="fbnet")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--calibration", type=int, default=8)
    p.add_argument("--slowdown", type=float, default=1.05, help="simulated: every timing x this factor")
    p.add_argument("--device", help="an existing table (a real later re-timing instead of the simulation)")
    p.add_argument("--tables-dir")
    p.add_argument("--clock", default="wall", choices=("wall", "cpu"))
    p.add_argument("--max-seconds", type=float, default=3.0, help="timing cap per item")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    out = run(args)
    harness.print_figures(out, args.json, lines)


def lines(out: dict) -> list[str]:
    text = [f"{out['space']} at {out['resolution']}px x{out['width_multiplier']:g}, {out['samples']} random archs"]
    for phase in ("right_after_profiling", "before_recalibrate", "after_recalibrate"):
        if phase in out:
            v = out[phase]
            text.append(f"  {phase:22s} {100 * v['within_10pct']:5.1f}% within +-10%, MAPE {v['mape']:.1f}%, "
                        f"bias {v['bias_pct']:+.1f}%, Kendall tau {v['kendall_tau']:.3f}")
    how = f"simulated slowdown x{out['simulated_slowdown']:g}" if out["simulated_slowdown"] else "real re-timing"
    text.append(f"  drift read by `latency check` ({how}): {out['drift_pct']:+.1f}%; rescale {out['rescale']:.4f}; "
                f"drift after --recalibrate {out['drift_after_pct']:+.1f}%")
    return text


if __name__ == "__main__":
    main()
