"""Pareto utilities: the non-dominated set, the family of winners (one per latency constraint), and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nas.files import new_figure, save_figure
from nas.search.blackbox.history import History
from nas.search.blackbox.problem import Constraint


def pareto_mask(scores: np.ndarray, latency_ms: np.ndarray) -> np.ndarray:
    """True for candidates no other candidate dominates (score higher-is-better, every latency lower-is-better)."""
    scores = np.asarray(scores, float)
    lat = np.asarray(latency_ms, float).reshape(len(scores), -1)
    n = len(scores)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        better_eq = (scores >= scores[i]) & (lat <= lat[i]).all(axis=1)
        strictly = (scores > scores[i]) | (lat < lat[i]).any(axis=1)
        if (better_eq & strictly).any():
            mask[i] = False
    return mask


def family(history: History, constraints: list[Constraint]) -> pd.DataFrame:
    """One row per constraint: the best evaluated candidate meeting it (the Pareto family of pareto.csv)."""
    problem = history.problem
    rows = []
    for k, c in enumerate(constraints):
        i = history.best_under(c)
        row = {"constraint": c.label, **{f"limit_ms[{d or '*'}]": ms for d, ms in c.limits}}
        if i is None:
            row["found"] = False
        else:
            h = history.rows[i]
            row.update({"found": True, "eval": h["eval"], problem.objective: h[problem.objective]})
            row.update({f"latency_ms[{d}]": h[f"latency_ms[{d}]"] for d in problem.devices})
            row[f"predicted_{problem.objective}"] = h.get(f"predicted_{problem.objective}")
            row.update(problem.describe(history.genomes[i]))
        rows.append(row)
    return pd.DataFrame(rows)


def plot_pareto(path: str | Path, history: History, constraints: list[Constraint], title: str = "") -> Path:
    """Objective against latency on the first device: every evaluation by phase, the front, the winners."""
    problem = history.problem
    frame = history.frame()
    obj = problem.objective
    fig, ax = new_figure(figsize=(7, 4.5), dpi=120)
    if problem.devices:
        dev = problem.devices[0]
        x = frame[f"latency_ms[{dev}]"].to_numpy(float)
        xlabel = f"predicted latency (ms) on {dev}" if problem.kind == "model" else f"{dev} (ms)"
    else:
        x = frame["eval"].to_numpy(float)
        xlabel = "evaluation"
    y = frame[obj].to_numpy(float)
    phases = frame["phase"].map(lambda p: "round" if str(p).startswith("round") else str(p))
    for phase, marker in (("init", "o"), ("round", "."), ("evolution", "*"), ("optuna", ".")):
        sel = (phases == phase).to_numpy()
        if sel.any():
            ax.scatter(x[sel], y[sel], s=60 if marker == "*" else 16, marker=marker, alpha=0.7, label=phase)
    mask = pareto_mask(history.scores(), x[:, None])
    order = np.argsort(x[mask])
    ax.step(x[mask][order], y[mask][order], where="post", color="k", lw=1, label="Pareto front")
    winners: dict[int, list[str]] = {}  # one label per winner: constraints sharing a winner share its label
    for c in constraints:
        i = history.best_under(c)
        bound = c.bound(problem.devices)[0] if problem.devices else np.inf
        if np.isfinite(bound):
            ax.axvline(bound, color="gray", ls="--", lw=0.8)
        if i is not None:
            winners.setdefault(int(i), []).append(c.label)
    for rank, (i, labels) in enumerate(sorted(winners.items(), key=lambda item: (x[item[0]], y[item[0]]))):
        ax.scatter([x[i]], [y[i]], s=140, facecolors="none", edgecolors="red", linewidths=1.5)
        # neighbours alternate above and below their point, so that labels of close winners do not overlap
        ax.annotate(", ".join(labels), (x[i], y[i]), textcoords="offset points", fontsize=7, color="red",
                    xytext=(6, 8 if rank % 2 == 0 else -14), bbox={"boxstyle": "round,pad=0.15", "fc": "white",
                                                                    "ec": "none", "alpha": 0.7})
    ax.set_xlabel(xlabel)
    ax.set_ylabel(obj)
    ax.set_title(title or f"{len(frame)} evaluations; red: best under each constraint", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=120)


def plot_predictions(path: str | Path, history: History, title: str = "") -> Path | None:
    """Predicted (before evaluation) against actual objective, for the evaluations a predictor chose."""
    obj = history.problem.objective
    frame = history.frame()
    col = f"predicted_{obj}"
    if col not in frame or frame[col].isna().all():
        return None
    sel = frame[col].notna()
    fig, ax = new_figure(figsize=(4.5, 4.5), dpi=120)
    ax.scatter(frame.loc[sel, col], frame.loc[sel, obj], s=14)
    lo = float(min(frame.loc[sel, col].min(), frame.loc[sel, obj].min()))
    hi = float(max(frame.loc[sel, col].max(), frame.loc[sel, obj].max()))
    ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8)
    ax.set_xlabel(f"predicted {obj} (before evaluation)")
    ax.set_ylabel(f"actual {obj}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    return save_figure(fig, path, dpi=120)
