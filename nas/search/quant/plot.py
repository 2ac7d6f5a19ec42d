"""PNG of a per-layer bit assignment."""

from __future__ import annotations

from pathlib import Path

from nas.files import new_figure, save_figure
from nas.search.quant.graph import QuantGraph
from nas.search.quant.mixed import BitOption


def plot_bits(graph: QuantGraph, assignment: list[BitOption], path: str | Path, title: str = "") -> Path:
    n = len(graph.layers)
    xs = list(range(n))
    levels = sorted({o.w_bits for o in assignment} | {o.a_bits for o in assignment} | {2, 4, 8, 32})
    level = {b: i + 1 for i, b in enumerate(levels)}  # evenly spaced, whatever the bit-widths
    colours = {32: "#9e9e9e", 8: "#1f77b4", 4: "#ff7f0e", 2: "#d62728"}
    fig, ax = new_figure(figsize=(max(6.0, 0.22 * n + 2), 3.8))
    for bits in sorted({o.w_bits for o in assignment}):
        idx = [i for i, o in enumerate(assignment) if o.w_bits == bits]
        ax.bar(idx, [level[bits]] * len(idx), color=colours.get(bits, "#2ca02c"),
               label="fp32 (weights and activations)" if bits == 32 else f"{bits}-bit weights (int8 in ONNX Runtime)")
    ax.plot(xs, [level[o.a_bits] for o in assignment], "k_", markersize=9, markeredgewidth=2, linestyle="none",
            label="activation bits")
    ax.set_yticks([level[b] for b in levels])
    ax.set_yticklabels([("32 (fp32)" if b == 32 else str(b)) for b in levels])
    ax.set_ylim(0, len(levels) + 0.8)
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{layer.name} {layer.kind}" for layer in graph.layers], rotation=90, fontsize=6)
    ax.set_ylabel("bits")
    ax.set_title(title or "per-layer bits", fontsize=9)
    ax.legend(fontsize=7, loc="upper right", ncol=3)
    return save_figure(fig, path)
