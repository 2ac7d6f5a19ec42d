"""Plots of a capacity search: accuracy against predicted and measured latency, and prediction quality."""

from __future__ import annotations

from pathlib import Path

from nas.files import new_figure, save_figure


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
        front, best = [], float("-inf")
        for ms, acc in points:
            if acc > best:
                front.append((ms, acc))
                best = acc
        if front:
            ax.step([p[0] for p in front], [p[1] for p in front], where="post", color=line.get_facecolor()[0],
                    linewidth=1.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
