"""Shared by the latency-trust benchmarks (``bench_trust.py`` and the parts it runs): tables for a setting, the
proxies a table is compared with (a linear fit of ms on FLOPs, on parameters, on BitOps, fitted on the same
calibration models as the table's correction), the figures of one setting, and printing."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas.arch.space import Space  # noqa: E402
from nas.latency.calibrate import (  # noqa: E402
    CALIBRATION_MODELS,
    calibrate,
    calibration_points,
    read_calibration,
)
from nas.latency.correction import fit_correction  # noqa: E402
from nas.latency.device import Device  # noqa: E402
from nas.latency.features import analytic_cost  # noqa: E402
from nas.latency.model import LatencyModel  # noqa: E402
from nas.latency.overhead import CallOverhead  # noqa: E402
from nas.latency.profile import key_is_identity, profile_items, space_profile_items  # noqa: E402
from nas.latency.table import list_devices  # noqa: E402
from nas.latency.timing import TimingConfig  # noqa: E402
from nas.latency.validate import accuracy, arch_macs, kendall_tau  # noqa: E402

START = time.perf_counter()


def log(message: str) -> None:
    """A progress line on stderr, with the minutes since the benchmark started."""
    print(f"[{(time.perf_counter() - START) / 60:5.1f} min] {message}", file=sys.stderr, flush=True)


@dataclass
class Setting:
    """One measurement set-up: a space and how its models run (a device table is profiled for it)."""

    name: str
    space: Space
    threads: int = 1
    optimization: str = "all"
    batch: int = 1
    bits: int = 32
    clock: str = "cpu"

    @property
    def device(self) -> str:
        s = self.space
        return (f"{s.name}-r{s.resolution}-w{s.width_multiplier:g}-t{self.threads}-{self.optimization}-b{self.batch}"
                f"-{'int8' if self.bits == 8 else 'fp32'}-{self.clock}")

    def timing(self) -> TimingConfig:
        return TimingConfig(clock=self.clock)


def table_for(setting: Setting, root: Path, calibration: int = CALIBRATION_MODELS
              ) -> tuple[LatencyModel, float]:
    """The setting's device table under ``root`` (profiled and calibrated unless it is there); seconds spent."""
    start = time.perf_counter()
    if setting.device not in list_devices(root):
        log(f"profiling {setting.device}")
        device = Device(threads=setting.threads, optimization=setting.optimization, clock=setting.clock,
                        device_id=setting.device, batch=setting.batch)
        profile_items(device, space_profile_items(setting.space, (setting.bits,)), tables_dir=root,
                      timing=setting.timing())
        calibrate(device, setting.space, models=calibration, tables_dir=root, timing=setting.timing(),
                  bits=setting.bits)
    return LatencyModel.load(setting.device, root), time.perf_counter() - start


def arch_params(lm: LatencyModel, keys) -> int:
    """Parameters of a whole model: the table's per-block counts (analytic where a row lacks them)."""
    total = 0
    for key in keys:
        if key_is_identity(key):
            continue
        row = lm.table.get(key)
        total += row["params"] if row and row["params"] else analytic_cost(key)["params"]
    return total


def calibration_proxies(lm: LatencyModel, batch: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(proxy values, measured ms) of the table's calibration models, per proxy (FLOPs = MACs x batch, params)."""
    rows = read_calibration(lm.table.folder)
    ms = np.array([r["measured_ms"] for r in rows])
    return {"flops": (np.array([batch * arch_macs(lm, r["keys"]) for r in rows], dtype=np.float64), ms),
            "params": (np.array([arch_params(lm, r["keys"]) for r in rows], dtype=np.float64), ms)}


def linear_fit(x_cal: np.ndarray, y_cal: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A least-squares line of ms on a proxy, fitted on calibration models, evaluated at ``x``."""
    if np.ptp(x_cal) == 0:
        return np.full(len(x), float(np.mean(y_cal)))
    slope, intercept = np.polyfit(x_cal, y_cal, 1)
    return slope * np.asarray(x, dtype=np.float64) + intercept


@dataclass
class Figures:
    """One setting's figures: the table's and each proxy's accuracy, and the measurement's test-retest tau."""

    name: str
    samples: int
    table: dict
    proxies: dict[str, dict] = field(default_factory=dict)
    retest_tau: float = float("nan")
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    ablations: dict[str, dict] = field(default_factory=dict)  # the same table refitted without a term it fitted

    def to_dict(self) -> dict:
        return {"setting": self.name, "samples": self.samples, "table": self.table, "proxies": self.proxies,
                "retest_tau": self.retest_tau, "notes": self.notes, "seconds": self.seconds,
                "ablations": self.ablations}


ABLATION_NAMES = {"layout": "the layout term", "weights": "the weight term", "neither": "either",
                  "saved": "the saved-weight term"}  # the last: mixed precision's (trust_mixed.py)
ABLATIONS = {"layout": ("per_reorder_ms", "reorders"), "weights": ("per_weight_mb_ms", "weight_mb")}


def ablations(lm: LatencyModel) -> dict[str, LatencyModel]:
    """The table's correction refitted without each term it fitted (``ABLATIONS``: the layout term,
    ``nas.latency.layout``; the weight term, ``nas.latency.correction``) and without all of them ("neither"), on the
    same calibration models: what each term buys."""
    fitted = [name for name, (field_, _) in ABLATIONS.items() if getattr(lm.correction, field_)]
    overhead = CallOverhead.load(lm.table.folder)
    points = calibration_points(lm.table)
    out = {}
    for names in [[n] for n in fitted] + ([fitted] if len(fitted) > 1 else []):
        zeroed = {ABLATIONS[n][1]: 0.0 for n in names}
        correction = fit_correction([replace(p, **zeroed) for p in points], overhead.fixed_ms if overhead else 0.0)
        correction.precision = lm.correction.precision
        out["neither" if len(names) > 1 else names[0]] = LatencyModel(lm.table, correction, overhead)
    return out


def figures(name: str, predicted, measured, retest, proxies: dict[str, tuple], notes=(),
            ablated: dict[str, list] | None = None) -> Figures:
    """The figures of a setting. ``proxies``: name -> (values of the validation models, (calibration values,
    calibration ms)); each is judged as a linear fit of ms on it (its tau is the proxy's own ranking)."""
    measured = np.asarray(measured, dtype=np.float64)
    out = Figures(name, len(measured), accuracy(predicted, measured),
                  retest_tau=kendall_tau(measured, retest) if retest is not None else float("nan"),
                  notes=list(notes), ablations={n: accuracy(p, measured) for n, p in (ablated or {}).items()})
    for proxy, (values, (x_cal, y_cal)) in proxies.items():
        values = np.asarray(values, dtype=np.float64)
        if np.ptp(values) == 0:
            out.proxies[proxy] = {"kendall_tau": float("nan"), "note": "equal for every model"}
            continue
        out.proxies[proxy] = {**accuracy(linear_fit(np.asarray(x_cal), np.asarray(y_cal), values), measured),
                              "kendall_tau": kendall_tau(values, measured)}
    return out


def fmt(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "  n/a"
    return f"{100 * x:5.1f}" if pct else f"{x:5.3f}"


def print_figures(rows: list[Figures], file=sys.stdout) -> None:
    """One line per setting: the table's +-5% / +-10% / MAPE / tau, each proxy's tau (and its linear fit's +-10%),
    the test-retest tau, and what failed the targets."""
    print(f"{'setting':26s} {'n':>3s} {'<5%':>5s} {'<10%':>5s} {'MAPE':>5s} {'tau':>5s} {'retest':>6s} | proxies: tau "
          f"(linear fit <10%)", file=file)
    for f in rows:
        t = f.table
        proxies = ", ".join(f"{p} {fmt(v['kendall_tau'])}" + (f" ({fmt(v['within_10pct'], True)}%)"
                                                                if "within_10pct" in v else "")
                            for p, v in f.proxies.items())
        print(f"{f.name:26s} {f.samples:3d} {fmt(t['within_5pct'], True)} {fmt(t['within_10pct'], True)} "
              f"{t['mape']:5.1f} {fmt(t['kendall_tau'])} {fmt(f.retest_tau):>6s} | {proxies}"
              + "".join(f"; without {ABLATION_NAMES[n]} {fmt(a['kendall_tau'])} ({fmt(a['within_10pct'], True)}%)"
                        for n, a in f.ablations.items()) + (f"  [{'; '.join(f.notes)}]" if f.notes else ""), file=file)


def target_notes(f: Figures) -> list[str]:
    """The part-2 target for one setting: tau >= 0.9, and 0.1 above FLOPs wherever FLOPs' tau < 0.8."""
    notes = []
    tau = f.table["kendall_tau"]
    if not tau >= 0.9:
        notes.append(f"table tau {tau:.3f} < 0.9 (the measurement's own retest tau {f.retest_tau:.3f})")
    flops = f.proxies.get("flops", {}).get("kendall_tau", float("nan"))
    if flops < 0.8 and not tau >= flops + 0.1:
        notes.append(f"table tau {tau:.3f} not 0.1 above FLOPs' {flops:.3f}")
    return notes
