"""The learning-curve PNG of a training run: losses and validation accuracies per epoch."""

from __future__ import annotations

from pathlib import Path

from nas.files import new_figure, save_figure


def plot_learning_curve(history: list[dict] | str | Path, path: str | Path, title: str = "") -> Path:
    """Plot every ``*loss*`` column (left axis) and every ``*accuracy*`` column (right axis, 0-1) of the per-epoch
    rows ``history`` (each with an ``epoch``; or the CSV that holds them) against the epoch; integer epoch ticks."""
    if isinstance(history, (str, Path)):
        import pandas as pd

        history = pd.read_csv(history).to_dict("records")
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    columns = sorted({k for row in history for k in row})
    fig, ax = new_figure(figsize=(6.4, 4.2))
    accuracy_ax = ax.twinx()
    lines = []
    for col in columns:
        values = [row.get(col, float("nan")) for row in history]
        if "loss" in col:
            lines += ax.plot(epochs, values, marker=".", color=f"C{len(lines)}", label=col)
        elif "accuracy" in col:
            lines += accuracy_ax.plot(epochs, values, marker=".", linestyle="--", color=f"C{len(lines)}", label=col)
    ax.set(xlabel="epoch", ylabel="loss", title=title or "learning curve")
    accuracy_ax.set(ylabel="accuracy", ylim=(0, 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=100)
