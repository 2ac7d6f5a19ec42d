"""Dynamic configs against dense models at equal measured latency: the verdict of the capacity benchmark.

A *candidate* is one trained model at one static plan, for one seed: a dynamic config of the once-for-all ViT, or a
dense ViT shrunk in depth or width. Targets are relative to the device: fractions of the measured latency of a
reference model (the full-size dense ViT), so that they mean the same on a slow and a fast machine. At each target
and for each seed, each family's entry is its candidate with the best *validation* accuracy among those whose
measured latency is at or under the target (choosing on test accuracy would favour the family with more
candidates); the verdict compares their *test* accuracies, as mean and standard deviation over the seeds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

FAMILIES = ("dynamic", "dense")


@dataclass(frozen=True)
class Candidate:
    name: str  # "dense d4 w64", "dynamic keep=0.8,0.8,0.8 thr=0.3"
    family: str  # dynamic | dense
    seed: int
    val_accuracy: float
    test_accuracy: float
    measured_ms: float

    def to_dict(self) -> dict:
        return asdict(self)


def best_under(candidates: list[Candidate], family: str, seed: int, target_ms: float) -> Candidate | None:
    """The family's candidate of ``seed`` with the best validation accuracy at or under ``target_ms`` (ties: the
    faster); None when none is that fast."""
    fitting = [c for c in candidates if c.family == family and c.seed == seed and c.measured_ms <= target_ms]
    return max(fitting, key=lambda c: (c.val_accuracy, -c.measured_ms), default=None)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for the deviation of a single value)."""
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def compare_at_target(candidates: list[Candidate], target_ms: float, seeds: list[int]) -> dict:
    """Per seed, each family's best candidate under ``target_ms``; the test accuracies' mean and deviation over
    the seeds where both families have one, and the dynamic minus dense difference (mean, deviation, how many
    seeds dynamic wins)."""
    per_seed = []
    for seed in seeds:
        picks = {family: best_under(candidates, family, seed, target_ms) for family in FAMILIES}
        per_seed.append({"seed": seed, **{family: None if c is None else c.to_dict() for family, c in picks.items()}})
    paired = [row for row in per_seed if row["dynamic"] and row["dense"]]
    result = {"target_ms": target_ms, "per_seed": per_seed, "seeds_compared": len(paired)}
    for family in FAMILIES:
        result[f"{family}_test_mean"], result[f"{family}_test_std"] = mean_std(
            [row[family]["test_accuracy"] for row in paired])
    diffs = [row["dynamic"]["test_accuracy"] - row["dense"]["test_accuracy"] for row in paired]
    result["difference_mean"], result["difference_std"] = mean_std(diffs)
    result["dynamic_wins"] = sum(d > 0 for d in diffs)
    return result


def relative_targets(reference_ms: float, fractions: list[float], reference: str) -> dict[str, float]:
    """``{"0.75x dense d6 w64": 0.75 * reference_ms, ...}``: targets as fractions of a reference model's measured
    latency on this device."""
    return {f"{f:g}x {reference}": f * reference_ms for f in fractions}


def front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (latency, accuracy) points no faster point beats or equals in accuracy, fastest first."""
    out, best = [], -math.inf
    for ms, acc in sorted(points):
        if acc > best:
            out.append((ms, acc))
            best = acc
    return out


def verdict_markdown(comparisons: dict[str, dict], reference: str, reference_ms: float) -> str:
    """A markdown table of ``compare_at_target`` results keyed by target name: each family's test accuracy (mean ±
    standard deviation over the seeds) and the difference in points."""
    lines = [f"Reference: {reference}, measured {reference_ms:.3f} ms.", "",
             "| target | ms | best dynamic (test) | best dense (test) | dynamic - dense (points) | dynamic wins |",
             "|---|---|---|---|---|---|"]
    for name, c in comparisons.items():
        lines.append(f"| {name} | {c['target_ms']:.3f} | {c['dynamic_test_mean']:.4f} ± {c['dynamic_test_std']:.4f} "
                     f"| {c['dense_test_mean']:.4f} ± {c['dense_test_std']:.4f} | {100 * c['difference_mean']:+.2f} ± "
                     f"{100 * c['difference_std']:.2f} | {c['dynamic_wins']} of {c['seeds_compared']} |")
    return "\n".join(lines) + "\n"
