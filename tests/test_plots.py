"""Plots (issue 17, part 6): a DNAS-only run has no channel/resolution panel; learning curves are written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

from nas.arch.space import load_space
from nas.search.dnas.distribution import ArchDistribution
from nas.search.dnas.plots import plot_search
from nas.train.learning_curve import plot_learning_curve

ROOT = Path(__file__).resolve().parent.parent
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


def test_plots_draw_with_agg_and_no_pyplot(tmp_path):
    """The backend is chosen in one place (``nas.files.save_figure``, Agg): no module touches pyplot's global
    state, so a plot neither needs a display nor leaves a figure open."""
    code = ("import sys; from nas.train.learning_curve import plot_learning_curve; "
            "plot_learning_curve([{'epoch': 1, 'train_loss': 1.0}, {'epoch': 2, 'train_loss': 0.5}], sys.argv[1]); "
            "print('matplotlib.pyplot' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.png")], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-1000:]
    with Image.open(tmp_path / "c.png") as image:
        assert image.format == "PNG"
