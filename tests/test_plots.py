"""Plots (issue 17, part 6): a DNAS-only run has no channel/resolution panel; learning curves are written."""

from __future__ import annotations

from PIL import Image

from nas.arch.space import load_space
from nas.search.dnas.distribution import ArchDistribution
from nas.search.dnas.plots import plot_search
from nas.train.learning_curve import plot_learning_curve

HISTORY = [{"epoch": e, "expected_ms": 0.1, "argmax_ms": 0.11, "train_accuracy": 0.5, "val_accuracy": 0.4,
            "alpha": 1.0, "temperature": 5.0, "entropy": 1.0} for e in range(1, 4)]


def test_dnas_probabilities_have_no_empty_channel_panel(tmp_path):
    widths = {}
    for name, masks in (("fbnet", False), ("fbnet_v2", True)):
        dist = ArchDistribution(load_space(name, resolution=32), search_channels=masks, search_resolution=masks)
        paths = plot_search(HISTORY, dist, tmp_path / name, target_ms=0.1, attainable=(0.05, 0.2))
        with Image.open(paths[1]) as image:
            widths[name] = image.size[0]
    assert widths["fbnet"] < 0.7 * widths["fbnet_v2"]  # one panel against two


def test_learning_curve_png(tmp_path):
    path = plot_learning_curve([{"epoch": e, "train_loss": 1 / e, "val_accuracy": 0.5} for e in (1, 2, 3)],
                               tmp_path / "curve.png")
    assert path.stat().st_size > 5_000
