"""Plots of a capacity search: accuracy against predicted and measured latency, and prediction quality."""

from __future__ import annotations

from pathlib import Path

from nas.files import new_figure, save_figure
from nas.search.capacity.comparison import front


def plot_search(rows: list[dict], target_ms: float, winner: dict | None, folder: str | Path) -> list[Path]:
    """``pareto.png`` (validation accuracy vs predicted / measured ms) and ``predicted_vs_measured.png``."""
    folder = Path(folder)
    written = []
    measured = all("measured_ms" in r for r in rows)
    fig, axes = new_figure(1, 2 if measured else 1, figsize=(11 if measured else 6, 4.2), squeeze=False)
    for ax, col, title in zip(axes[0], ("predicted_ms", "measured_ms"), ("predicted", "measured")):
        ax.scatter([r[col] for r in rows], [r["val_accuracy"] for r in rows], s=18, alpha=0.7, label="configs tried")
        if winner is not None:
            ax.scatter([winner[col]], [winner["val_accuracy"]], s=90, marker="*", color="red", label="chosen")
        ax.axvline(target_ms, color="gray", linestyle="--", label=f"target {target_ms:g} ms")
        ax.set_xlabel(f"{title} latency (ms)")
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"accuracy vs {title} latency")
        ax.legend(fontsize=8)
    written.append(save_figure(fig, folder / "pareto.png"))
    if measured:
        fig, ax = new_figure(figsize=(4.8, 4.4))
        p = [r["predicted_ms"] for r in rows]
        m = [r["measured_ms"] for r in rows]
        ax.scatter(p, m, s=18)
        lo, hi = min(p + m), max(p + m)
        ax.plot([lo, hi], [lo, hi], color="gray", linewidth=1)
        ax.fill_between([lo, hi], [0.9 * lo, 0.9 * hi], [1.1 * lo, 1.1 * hi], color="gray", alpha=0.15, label="±10%")
        ax.set_xlabel("predicted ms")
        ax.set_ylabel("measured ms")
        ax.legend(fontsize=8)
        written.append(save_figure(fig, folder / "predicted_vs_measured.png"))
    return written


def plot_curves(curves: dict[str, list[tuple[float, float]]], path: str | Path, xlabel: str = "measured latency (ms)",
                ylabel: str = "accuracy") -> Path:
    """Accuracy-latency points per family, with each family's Pareto front (best accuracy at or under each
    latency) drawn as a step line. Used by the benchmark: dynamic configs against dense models."""
    fig, ax = new_figure(figsize=(6.4, 4.4))
    for name, points in curves.items():
        points = sorted(points)
        line = ax.scatter([p[0] for p in points], [p[1] for p in points], s=22, label=name)
        best = front(points)
        if best:
            ax.step([p[0] for p in best], [p[1] for p in best], where="post", color=line.get_facecolor()[0],
                    linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_comparison(candidates: list[dict], targets_ms: dict[str, float], path: str | Path, title: str = "") -> Path:
    """Test accuracy against measured latency for every candidate (``nas.search.capacity.comparison.Candidate``
    dicts), one colour per family and one marker per seed, each family's front over all seeds as a step line, and
    the targets as dashed lines."""
    fig, ax = new_figure(figsize=(7.2, 4.8))
    colours = {"dynamic": "tab:red", "dense": "tab:blue"}
    markers = "os^Dv<>"
    seeds = sorted({c["seed"] for c in candidates})
    for family, colour in colours.items():
        mine = [c for c in candidates if c["family"] == family]
        for i, seed in enumerate(seeds):
            points = [(c["measured_ms"], c["test_accuracy"]) for c in mine if c["seed"] == seed]
            ax.scatter([p[0] for p in points], [p[1] for p in points], s=24, color=colour, marker=markers[i % 7],
                       alpha=0.75, label=f"{family}, seed {seed}")
        best = front([(c["measured_ms"], c["test_accuracy"]) for c in mine])
        if best:
            ax.step([p[0] for p in best], [p[1] for p in best], where="post", color=colour, linewidth=1.0, alpha=0.6)
    for name, ms in targets_ms.items():
        ax.axvline(ms, color="gray", linestyle="--", linewidth=1)
        ax.annotate(name, (ms, 0.02), xycoords=("data", "axes fraction"), rotation=90, fontsize=7, color="gray",
                    ha="right")
    ax.set_xlabel("measured latency (ms, ONNX Runtime, batch 1)")
    ax.set_ylabel("test accuracy")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)
