"""One way to cost an arch: block positions -> the LatencyModel's cost table, and every view of it agrees."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from test_dnas_support import (
    TINY_V2,
    all_archs,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    profiled_space,
    tiny_space,
)

from nas.arch.opkey import OpKey
from nas.latency.calibrate import append_precision_row, fit_precision, refit_precision
from nas.latency.correction import Correction, PrecisionTerms
from nas.latency.layout import extra_reorders
from nas.latency.profile import space_layer_keys
from nas.models.builder import build_model
from nas.models.onnx_io import export_onnx
from nas.search.dnas.distribution import ArchDistribution
from nas.search.dnas.latency_terms import LatencyTerms
from nas.search.predict.block_costs import BlockCostTable
from nas.search.predict.joint_space import JointSpace
from nas.search.predict.model_costs import ModelSpaceCosts
from nas.search.quant.graph import attach_onnx, trace_layers
from nas.search.quant.mixed import BitOption, MixedPrecisionNet
from nas.search.quant.pipeline import make_cost
from nas.search.quant.profile import layer_key, precision_graph, transition_key

FP32, INT8 = BitOption(32, 32), BitOption(8, 8)


@pytest.fixture(scope="module")
def tiny_v2(tmp_path_factory):
    path, tables, lm = profiled_space(tmp_path_factory, TINY_V2, "tiny_v2", "test-v2")
    return tiny_space(path), lm


def _one_hot_probs(dist: ArchDistribution, arch):
    sample = dist.one_hot(arch)
    return type(dist.probs())([d.weights for d in sample.ops], [d.weights for d in sample.channels],
                              sample.resolution.weights)


def test_block_positions_give_every_arch_its_blocks_and_the_profiler_its_keys(tiny_v2):
    space, _ = tiny_v2
    positions = space.block_positions()
    assert [p.role for p in positions] == ["stem", *["layer"] * len(space.layers), "head", "classifier"]
    assert [p.dims for p in positions[1:4]] == [[("op", 0), ("ch", 0), ("res",)],
                                                [("op", 1), ("ch", 0), ("ch", 1), ("res",)],
                                                [("op", 2), ("ch", 1), ("res",)]]
    dist = ArchDistribution(space)
    keys = {str(k) for k in space_layer_keys(space)}
    for arch in all_archs(space)[::5]:
        ops, channels, res = dist.indices(arch)
        pick = {"op": ops, "ch": channels}
        picked = [p.block(tuple(res if d[0] == "res" else pick[d[0]][d[1]] for d in p.dims)) for p in positions]
        assert picked == space.resolve(arch)
    assert sum(int(np.prod(p.shape)) for p in positions) >= len(keys)
    assert {str(OpKey.from_block(b)) for p in positions for _, b in p.blocks()} == keys


@pytest.mark.parametrize("per_reorder_ms,per_weight_mb_ms", [(0.0, 0.0), (0.001, 0.0), (0.001, 0.02)])
def test_prediction_expected_latency_and_population_costs_agree_fp32(tiny_v2, per_reorder_ms, per_weight_mb_ms,
                                                                     monkeypatch):
    space, lm = tiny_v2
    monkeypatch.setattr(lm.correction, "per_reorder_ms", per_reorder_ms)  # the layout term, off and on
    monkeypatch.setattr(lm.correction, "per_weight_mb_ms", per_weight_mb_ms)  # the weight term, off and on
    dist = ArchDistribution(space)
    with torch.no_grad():
        dist.logits.normal_(generator=torch.Generator().manual_seed(1))
    terms = LatencyTerms(dist, lm)
    joint = JointSpace(space)
    costs = ModelSpaceCosts(joint, {"dev": lm})
    table, layout = BlockCostTable.latency(joint, lm)
    archs = all_archs(space)[::9]
    genomes = np.stack([joint.genome_of(a) for a in archs])
    population = costs.latency_ms(genomes)[:, 0]
    gathered = lm.total_ms(table.per_block(genomes), layout.per_block(genomes).astype(np.int64))
    reorders = extra_reorders(np.stack([lm.layout_codes(lm.arch_keys(space, a)) for a in archs]))
    assert lm.layouts and len(set(reorders)) > 1  # the profile read the blocks' layouts, and they matter here
    for arch, pop, gat in zip(archs, population, gathered):
        predicted = lm.predict(space, arch)
        keys = lm.arch_keys(space, arch)
        parts = lm.predict_keys(keys)  # what `latency predict` prints: base + blocks + the layout term
        assert parts.ms == pytest.approx(lm.base_ms + lm.block_costs_ms(keys).sum() + parts.layout_ms, abs=1e-12)
        assert (parts.layout_ms != 0) == bool(per_reorder_ms and extra_reorders([lm.layout_codes(keys)])[0])
        # float32 tensors against float64 sums: the layout term subtracts from the blocks, so the tolerance is absolute
        assert float(terms.expected_ms(_one_hot_probs(dist, arch))) == pytest.approx(predicted, rel=1e-5, abs=1e-7)
        assert terms.arch_ms(*dist.indices(arch)) == pytest.approx(predicted, rel=1e-12, abs=1e-12)
        assert pop == pytest.approx(predicted, rel=1e-12, abs=1e-12) and gat == pytest.approx(predicted, abs=1e-12)


def _mixed_cost(space, lm, tmp_path):
    arch = space.fixed_arch()
    net = MixedPrecisionNet(build_model(space, arch), [INT8, FP32])
    layers = trace_layers(net.model, net.names, net.input_shape)
    path = tmp_path / "fp32.onnx"
    export_onnx(net.float_model([FP32] * len(layers)), net.input_shape, path)
    graph = attach_onnx(layers, path)
    return arch, graph, make_cost("latency", graph, [INT8, FP32], lm, space, arch)


def test_mixed_precision_cost_is_the_latency_model_at_all_fp32_and_all_int8(tiny_v2, tmp_path, monkeypatch):
    space, lm = tiny_v2
    before = lm.correction.precision
    lm.correction.precision = PrecisionTerms(1.2, 0.8, 0.003, 0.05, fitted_on=3)  # as a device's fit would set it
    # the weight term: in the fp32 model's prediction, not in the per-layer deltas (fitted on fp32 models, it
    # would credit int8 layers with a saving their smaller weights do not make); the saving they do make has its
    # own weight (0.05 ms per MB saved), fitted on mixed models
    monkeypatch.setattr(lm.correction, "per_weight_mb_ms", 0.02)
    try:
        arch, graph, cost = _mixed_cost(space, lm, tmp_path)
        assert cost.table.precision.coef == (1.2, 0.8, 0.003, -0.05)
        n = len(graph.layers)
        assert cost.of([FP32] * n) == pytest.approx(lm.predict(space, arch, 32), rel=1e-6)
        # all int8: every layer's own int8 time without the Q/DQ pair halves it was measured with, plus the
        # transitions an all-int8 model still has (into the first layer, out to float readers), weighted by the fit
        keys = precision_graph(graph).keys()
        assert all(lm.weight_ms(layer_key(layer, 32)) > 0 for layer in graph.layers)
        own = {str(k): lm.block_cost_ms(k) - lm.weight_ms(k) for k in keys}
        half = {t.name: own[str(transition_key(t))] / 2 for t in graph.tensors if t.shape}
        compute = sum(own[str(layer_key(layer, 8))] - own[str(layer_key(layer, 32))]
                      - half.get(layer.input_tensor, 0.0) - half.get(layer.output_tensor, 0.0) for layer in graph.layers)
        quantize = [t for t in graph.tensors if t.producer is None and t.consumers]
        dequantize = [t for t in graph.tensors if t.producer is not None and t.float_consumers]
        transition_ms = sum(half.get(t.name, 0.0) for t in quantize + dequantize)
        saved_mb = sum(layer.weight_params * 3 / 1e6 for layer in graph.layers)  # 4 bytes a weight at fp32, 1 at int8
        assert saved_mb > 0
        expected = lm.predict(space, arch, 32) + 1.2 * compute + 0.8 * transition_ms \
            + 0.003 * (len(quantize) + len(dequantize)) - 0.05 * saved_mb
        assert cost.of([INT8] * n) == pytest.approx(expected, rel=1e-5)
    finally:
        lm.correction.precision = before


def test_latency_model_costs_every_assignment_as_mixed_precision_search_does(tiny_v2, tmp_path):
    space, lm = tiny_v2
    before = lm.correction.precision
    lm.correction.precision = PrecisionTerms(0.9, 1.3, 0.002, fitted_on=2)
    try:
        arch, graph, cost = _mixed_cost(space, lm, tmp_path)
        table = lm.precision_costs(lm.arch_keys(space, arch, 32), precision_graph(graph))
        n = len(graph.layers)
        rng = random.Random(0)
        assignments = [[FP32] * n, [INT8] * n] + [[rng.choice([INT8, FP32]) for _ in range(n)] for _ in range(8)]
        for assignment in assignments:
            assert table.ms([o.runs_int8 for o in assignment]) == cost.of(assignment)
        assert table.ms([False] * n) == pytest.approx(lm.predict(space, arch, 32), rel=1e-6)
        assert len({table.ms([o.runs_int8 for o in a]) for a in assignments}) > 2  # the assignments cost apart
    finally:
        lm.correction.precision = before


def test_precision_terms_are_fitted_per_device_and_old_corrections_still_load(tmp_path):
    (tmp_path / "correction.json").write_text(json.dumps({"base_ms": 0.5, "scale": 1.1, "per_block_ms": 0.0,
                                                         "fitted_on": 4}))  # written before precision existed
    old = Correction.load(tmp_path)
    assert old.precision == PrecisionTerms() and old.base_ms == 0.5
    assert fit_precision(tmp_path) == PrecisionTerms()  # nothing measured: the table's terms as they are
    truth = (0.7, 1.5, 0.02, -0.03)  # as ``coef`` signs them: a saved weight MB takes 0.03 ms away
    rng = np.random.default_rng(0)
    none = {"compute_delta_ms": 0.0, "transition_ms": 0.0, "transitions": 0.0, "weight_saved_mb": 0.0}
    for model in ("a", "b"):
        append_precision_row(tmp_path, {"model_id": model, "assignment": "fp32", "int8_layers": 0,
                                        "measured_ms": 2.0, "fp32_measured_ms": 2.0, **none})
        for i in range(4):
            terms = rng.uniform(0.05, 1.0, 4)
            append_precision_row(tmp_path, {"model_id": model, "assignment": f"mix{i}", "int8_layers": 3,
                                            "measured_ms": 2.0 + float(np.dot(truth, terms)), "fp32_measured_ms": 2.0,
                                            "compute_delta_ms": terms[0], "transition_ms": terms[1],
                                            "transitions": terms[2], "weight_saved_mb": terms[3]})
    assert not append_precision_row(tmp_path, {"model_id": "a", "assignment": "fp32", "int8_layers": 0,
                                               "measured_ms": 9.0, "fp32_measured_ms": 9.0, **none})  # measured already
    (tmp_path / "precision_calibration.csv").write_text("model_id,assignment\nold,fp32\n")  # an earlier version's
    saved = refit_precision(tmp_path)
    assert saved.precision.coef == pytest.approx(truth, rel=1e-6) and saved.precision.fitted_on == 2
    again = Correction.load(tmp_path)
    assert again.precision == saved.precision and again.base_ms == 0.5 and again.scale == 1.1
