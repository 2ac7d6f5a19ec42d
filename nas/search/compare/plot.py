"""The comparison's one picture: test accuracy against measured latency, mean and standard deviation over seeds."""

from __future__ import annotations

from pathlib import Path

from nas.files import new_figure, save_figure

SEARCHED_COLOURS = ("tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
BASELINE_STYLES = (("tab:blue", "o"), ("tab:green", "s"), ("tab:orange", "D"), ("tab:cyan", "P"),
                   ("tab:gray", "X"))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and accuracy (higher), fastest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_comparison(rows: list[dict], path: str | Path, *, title: str) -> Path:
    """``rows``: ``summarise``'s with ``run_name`` and ``legend``. A red star (another colour per further run, or per
    group of runs) for each searched winner, one colour and marker per baseline model, grey triangles for random archs;
    error bars of one standard deviation over seeds; every point but the random and grouped ones labelled (with its
    run's name when there are several runs); the Pareto front of the means dashed; the legend outside the axes."""
    runs = list(dict.fromkeys(r["run_name"] for r in rows))
    searched = list(dict.fromkeys(r["legend"] for r in rows if r["kind"] == "searched"))
    baselines = list(dict.fromkeys(r["contender"] for r in rows if r["kind"] == "baseline"))
    fig, ax = new_figure(figsize=(11, 6))
    shown = set()
    for r in rows:
        if r["kind"] == "searched":
            colour, marker, size = SEARCHED_COLOURS[searched.index(r["legend"]) % len(SEARCHED_COLOURS)], "*", 18
        elif r["kind"] == "baseline":
            (colour, marker), size = BASELINE_STYLES[baselines.index(r["contender"]) % len(BASELINE_STYLES)], 9
        else:
            colour, marker, size = "grey", "^", 7
        ax.errorbar(r["measured_ms"], r["accuracy"], xerr=r["measured_ms_std"] or 0, yerr=r["accuracy_std"] or 0,
                    fmt=marker, color=colour, markersize=size, capsize=3, elinewidth=1, markeredgecolor="black",
                    markeredgewidth=0.6, alpha=0.7 if r["kind"] == "random" else 1.0,
                    label=r["legend"] if r["legend"] not in shown else None, zorder=3 if r["kind"] == "searched" else 2)
        shown.add(r["legend"])
        if r["kind"] != "random" and not r.get("group"):
            text = r["label"] if r["kind"] == "searched" or len(runs) == 1 else f"{r['label']} ({r['run_name']})"
            ax.annotate(text, (r["measured_ms"], r["accuracy"]), textcoords="offset points", xytext=(9, 5),
                        fontsize=9, color="black")
    front = pareto_front([(r["measured_ms"], r["accuracy"]) for r in rows])
    if len(front) > 1:
        ax.plot([rows[i]["measured_ms"] for i in front], [rows[i]["accuracy"] for i in front], linestyle="--",
                color="grey", linewidth=1, zorder=1, label="Pareto front (means)")
    ax.set_xlabel("measured latency (ms, batch 1)", fontsize=11)
    ax.set_ylabel("test accuracy", fontsize=11)
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.2, y=0.15)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return save_figure(fig, Path(path), dpi=110)
