"""Layout reorders (nas.latency.layout): the walk over a model's blocks gives the reorders ONNX Runtime's optimised
graph runs, its expectation is exact under a factorised distribution, and the correction weighs it."""

from __future__ import annotations

import collections
import itertools
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from nas.arch.space import Arch, load_space
from nas.errors import LatencyTableError
from nas.latency import remote_measure
from nas.latency.calibrate import export_arch
from nas.latency.correction import CalibrationPoint, fit_correction
from nas.latency.device import Device
from nas.latency.layout import (
    LAYOUT_FILE,
    PASS,
    BlockLayout,
    ExpectedReorders,
    block_layout,
    extra_reorders,
    layout_codes,
    read_layouts,
)
from nas.latency.model import LatencyModel
from nas.latency.profile import block_item, export_item, key_is_identity

STEM = BlockLayout(False, True, False, 0, 1)  # takes NCHW, hands NCHWc on
RESIDUAL = BlockLayout(True, True, True, 0, 2)  # an inverted residual in NCHWc
NARROW_GROUPS = BlockLayout(True, False, True, 1, 2)  # ends in a grouped 1x1 convolution that stays NCHW
HEAD = BlockLayout(False, False, False, 0, 0)  # pooling and a linear layer, NCHW


def test_the_walk_counts_the_reorders_a_model_runs_beyond_its_blocks_own():
    # NCHWc throughout: only the head's input is reordered (1), against 5 in the blocks timed alone
    assert extra_reorders([[b.code for b in (STEM, RESIDUAL, RESIDUAL, HEAD)]])[0] == 1 - 5
    # a narrow grouped block leaves the trunk in NCHW: it reorders the trunk for its sum and runs its own reorder,
    # and the residual block after it pays a reorder in and one out for a separate Add (4, against 5)
    assert extra_reorders([[b.code for b in (STEM, NARROW_GROUPS, RESIDUAL, HEAD)]])[0] == 4 - 5
    # an identity block passes the trunk through
    assert extra_reorders([[STEM.code, PASS, RESIDUAL.code, HEAD.code]])[0] == 1 - 3
    # a device without layouts: every block an NCHW operator without reorders, no term
    assert extra_reorders([layout_codes([], {})]).tolist() == [0.0]


def test_the_expectation_is_the_mean_over_independently_drawn_positions():
    options = [np.array([STEM.code]), np.array([RESIDUAL.code, NARROW_GROUPS.code, PASS]),
               np.array([RESIDUAL.code, NARROW_GROUPS.code]), np.array([HEAD.code])]
    probs = [torch.tensor([1.0]), torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.6, 0.4]), torch.tensor([1.0])]
    exact = sum(float(np.prod([probs[j][i] for j, i in enumerate(pick)])) *
                extra_reorders([[options[j][i] for j, i in enumerate(pick)]])[0]
                for pick in itertools.product(*(range(len(o)) for o in options)))
    assert float(ExpectedReorders(options)(probs)) == pytest.approx(exact, rel=1e-6)


def _reorders_in_ort_graph(path: Path, device: Device) -> int:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        remote_measure.open_session(ort, str(path), device.provider, 1, "all", str(Path(tmp) / "o.onnx"))
        nodes = collections.Counter(n.op_type for n in onnx.load(str(Path(tmp) / "o.onnx")).graph.node)
    return nodes["ReorderInput"] + nodes["ReorderOutput"]


def test_the_walk_gives_the_reorders_of_onnx_runtimes_optimised_graph(tmp_path):
    """Read from the blocks' own graphs, the walk gives the whole model's reorder count, on archs with and without
    the narrow grouped blocks that break the NCHWc chain (fbnet at 32 px, width 0.25)."""
    space = load_space("fbnet", resolution=32, width_multiplier=0.25, classes=10)
    device = Device(threads=1, optimization="all")
    g2 = ["ir_k3_e1_g2" if i % 4 == 1 else "ir_k3_e3" for i in range(len(space.layers))]
    archs = [Arch("fbnet", tuple(["ir_k3_e3"] * len(space.layers))), Arch("fbnet", tuple(g2)),
             Arch("fbnet", tuple("skip" if i % 3 == 2 else "ir_k5_e1_g2" for i in range(len(space.layers))))]
    layouts = {}
    for arch in archs:
        keys = LatencyModel.arch_keys(space, arch)
        for k in keys:
            if str(k) not in layouts and not key_is_identity(k):
                export_item(block_item(k), tmp_path / "b.onnx")
                layouts[str(k)] = block_layout(tmp_path / "b.onnx", device)
        codes = layout_codes(keys, layouts)
        timed = sum(c >> 8 for c in codes if c >= 0)
        whole = _reorders_in_ort_graph(export_arch(space, arch, tmp_path / "m.onnx"), device)
        assert extra_reorders([codes])[0] + timed == whole, arch.ops
    assert len({extra_reorders([layout_codes(LatencyModel.arch_keys(space, a), layouts)])[0] for a in archs}) > 1
    assert block_layout(tmp_path / "b.onnx", Device(threads=1, optimization="extended")) is None  # no NCHWc there


def test_the_correction_weighs_the_reorders_where_the_calibration_models_differ_in_them():
    rng = np.random.default_rng(0)
    points = []
    for _ in range(10):
        net, blocks, reorders = rng.uniform(0.1, 0.3), int(rng.integers(15, 22)), float(rng.integers(-30, -5))
        points.append(CalibrationPoint({"conv": net}, {"conv": blocks}, net, 0.02 + 1.1 * net + 0.0012 * reorders
                                       + 0.0001 * blocks, reorders))
    fitted = fit_correction(points, 0.0)
    assert fitted.per_reorder_ms == pytest.approx(0.0012, rel=1e-3)
    assert fitted.fit_mape < 1e-6
    # a count that costs nothing, or a negative fit (noise), leaves no reorder term
    flat = [CalibrationPoint(p.net_ms, p.blocks, p.raw_ms, 0.02 + 1.1 * p.net_ms["conv"] - 0.0005 * p.reorders,
                             p.reorders) for p in points]
    assert fit_correction(flat, 0.0).per_reorder_ms == 0.0


def test_a_corrupt_layout_file_is_one_clear_error(tmp_path):
    (tmp_path / LAYOUT_FILE).write_text("key,nchwc_in,nchwc_out,residual,internal_reorders,reorders\nk,1,0,1,x,2\n")
    with pytest.raises(LatencyTableError, match="corrupt layout row at line 2"):
        read_layouts(tmp_path)
