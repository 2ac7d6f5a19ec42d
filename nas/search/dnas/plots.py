"""PNG plots of a differentiable search: its trajectory and the final architecture probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nas.files import new_figure, save_figure
from nas.search.dnas.distribution import ArchDistribution


def plot_search(history: list[dict], dist: ArchDistribution, folder: str | Path, *, target_ms: float | None = None,
                attainable: tuple[float, float] | None = None) -> list[Path]:
    """Write ``search_trajectory.png`` and ``arch_probabilities.png`` into ``folder``; return their paths.

    The channel / resolution panel is drawn only when the search chose channels or resolution (not for DNAS);
    epoch and layer ticks are integers; the attainable range's lines are labelled."""
    from matplotlib.ticker import MaxNLocator
    folder = Path(folder)
    epochs = [r["epoch"] for r in history]
    fig, axes = new_figure(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot(epochs, [r["expected_ms"] for r in history], label="expected latency")
    ax.plot(epochs, [r["argmax_ms"] for r in history], label="argmax arch", linestyle="--")
    if target_ms is not None:
        ax.axhspan(0.9 * target_ms, target_ms, color="green", alpha=0.15,
                   label="target (final arch: at most 10% under)")
    if attainable is not None:
        for bound, name in zip(attainable, ("fastest", "slowest")):
            ax.axhline(bound, color="grey", linewidth=0.8, linestyle=":", label=f"{name} attainable ({bound:.3g} ms)")
    ax.set(xlabel="epoch", ylabel="predicted latency (ms)", title="latency")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(epochs, [r["train_accuracy"] for r in history], label="train (sampled archs)")
    ax.plot(epochs, [r["val_accuracy"] for r in history], label="val (sampled archs)")
    ax.set(xlabel="epoch", ylabel="accuracy", title="supernet accuracy", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.semilogy(epochs, [r["alpha"] for r in history], label="alpha")
    ax.semilogy(epochs, [r["temperature"] for r in history], label="temperature")
    ax.plot(epochs, [max(r["entropy"], 1e-3) for r in history], label="mean entropy (nats)")
    if "argmax_p_ops" in history[-1]:
        ax.plot(epochs, [r["argmax_p_ops"] for r in history], label="ops: mean argmax probability")
    ax.set(xlabel="epoch", title="alpha, temperature, how decided")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    paths = [save_figure(fig, folder / "search_trajectory.png", dpi=90)]

    probs = dist.probs()
    ops = sorted({op for options in dist.op_options for op in options})
    grid = np.full((len(ops), len(dist.op_options)), np.nan)
    for layer, (options, p) in enumerate(zip(dist.op_options, probs.ops)):
        for op, value in zip(options, p.detach().numpy()):
            grid[ops.index(op), layer] = value
    extra = [(f"S{s} channels", o, p) for s, (o, p) in enumerate(zip(dist.channel_options, probs.channels))
             if len(o) > 1]
    if len(dist.resolution_options) > 1:
        extra.append(("resolution", dist.resolution_options, probs.resolution))
    if extra:
        fig, axes = new_figure(1, 2, figsize=(15, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax = new_figure(figsize=(9, 4.5))
        axes = [ax]
    image = axes[0].imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axes[0].set(yticks=range(len(ops)), yticklabels=ops, xlabel="layer", title="final op probabilities")
    axes[0].set_xticks(range(len(dist.op_options)))
    fig.colorbar(image, ax=axes[0])
    if extra:
        _plot_choices(axes[1], extra)
    paths.append(save_figure(fig, folder / "arch_probabilities.png", dpi=90))
    return paths


def _plot_choices(ax, extra: list[tuple[str, list, object]]) -> None:
    """Horizontal bars of the channel / resolution probabilities."""
    y = 0
    for name, options, p in extra:
        for option, value in zip(options, p.detach().numpy()):
            ax.barh(y, value, color="tab:blue")
            ax.text(value + 0.01, y, f"{name}={option}", va="center", fontsize=7)
            y += 1
        y += 0.5
    ax.set(xlim=(0, 1.3), yticks=[], xlabel="probability", title="channel / resolution probabilities")

