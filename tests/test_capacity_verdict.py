"""Dynamic capacity against dense ViTs: gate-ranked experts, the comparison at equal latency, the diagnostics."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_capacity import TINY

from nas.data.dataset import load_dataset
from nas.latency.model import LatencyModel
from nas.latency.table import DeviceManifest, LatencyTable
from nas.search.capacity import training
from nas.search.capacity.comparison import Candidate, best_under, compare_at_target, front, relative_targets
from nas.search.capacity.config import StaticPlan, capacity_factor_plan
from nas.search.capacity.diagnostics import expert_choice_overlap, latency_breakdown, selection_accuracy
from nas.search.capacity.latency import plan_keys, predict_plan, space_keys
from nas.search.capacity.plots import plot_comparison
from nas.search.capacity.space import dense_variant, load_capacity_space
from nas.search.capacity.training import plan_accuracy, train_dynamic
from nas.search.capacity.vit import DynamicViT
from nas.train.recipe import Recipe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "vit_tiny.yaml"
    path.write_text(TINY)
    return load_capacity_space(str(path), in_channels=1, classes=10)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", resolution=16, seed=0)


@pytest.fixture(scope="module")
def trained(tiny, digits):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = train_dynamic(DynamicViT(tiny), digits, Recipe(epochs=2, lr=0.005, batch_size=32)).model
    torch.set_num_threads(threads)
    return model


# ---- MoE experts rank tokens by their gates ---------------------------------------------------------------------
def test_experts_take_their_highest_gated_tokens_whatever_the_capacity_predictor_says(tiny):
    torch.manual_seed(0)
    block = DynamicViT(tiny).eval().mlp[tiny.moe_blocks[0]]
    x = torch.randn(2, tiny.tokens, tiny.spec.dim)
    k = 3
    with torch.no_grad():
        out = block.forward_static(x, k)
        h, gates, _ = block.route.parts(x)
        ex = block.experts
        expected = x.clone()
        for b in range(len(x)):
            for e in range(gates.shape[-1]):
                top = gates[b, :, e].topk(k).indices
                y = F.gelu(h[b, top] @ ex.w1[e] + ex.b1[e]) @ ex.w2[e] + ex.b2[e]
                expected[b, top] += gates[b, top, e, None] * y
        assert torch.allclose(out, expected, atol=1e-5)
        for p in block.route.predictor.parameters():  # the predictor sizes the capacity; it does not pick tokens
            p.copy_(torch.randn_like(p))
        assert torch.equal(block.forward_static(x, k), out)


# ---- the comparison at equal measured latency -------------------------------------------------------------------
def _c(name, family, seed, val, test, ms):
    return Candidate(name, family, seed, val, test, ms)


def test_each_family_is_chosen_on_validation_under_the_target_and_compared_on_test():
    cands = [_c("dyn a", "dynamic", 0, 0.90, 0.80, 1.0), _c("dyn b", "dynamic", 0, 0.85, 0.95, 0.9),
             _c("dyn fast", "dynamic", 0, 0.70, 0.70, 0.5), _c("dyn too slow", "dynamic", 0, 0.99, 0.99, 1.5),
             _c("d4", "dense", 0, 0.80, 0.78, 0.8), _c("d6", "dense", 0, 0.95, 0.93, 1.4),
             _c("dyn a", "dynamic", 1, 0.91, 0.84, 1.0), _c("d4", "dense", 1, 0.82, 0.80, 0.8),
             _c("dyn fast", "dynamic", 2, 0.7, 0.7, 0.5)]  # seed 2 has no dense model under the target
    assert best_under(cands, "dynamic", 0, 1.0).name == "dyn a"  # best validation, not best test
    assert best_under(cands, "dynamic", 0, 0.95).name == "dyn b"
    assert best_under(cands, "dense", 0, 0.4) is None
    tie = [_c("slow", "dense", 0, 0.8, 0.8, 0.9), _c("fast", "dense", 0, 0.8, 0.8, 0.7)]
    assert best_under(tie, "dense", 0, 1.0).name == "fast"
    result = compare_at_target(cands, 1.0, [0, 1, 2])
    assert result["seeds_compared"] == 2 and result["per_seed"][2]["dense"] is None
    assert result["dynamic_test_mean"] == pytest.approx(0.82) and result["dense_test_mean"] == pytest.approx(0.79)
    assert result["difference_mean"] == pytest.approx(0.03)
    assert result["difference_std"] == pytest.approx(math.sqrt(2) * 0.01)  # differences 0.02 and 0.04
    assert result["dynamic_wins"] == 2
    alone = compare_at_target(cands, 1.0, [0])
    assert math.isnan(alone["difference_std"]) and alone["difference_mean"] == pytest.approx(0.02)


def test_relative_targets_and_front():
    assert relative_targets(2.0, [0.75, 0.9], "dense d6 w64") == {"0.75x dense d6 w64": 1.5, "0.9x dense d6 w64": 1.8}
    assert front([(2.0, 0.9), (1.0, 0.8), (1.5, 0.7), (3.0, 0.9)]) == [(1.0, 0.8), (2.0, 0.9)]


def test_comparison_plot_is_written(tmp_path):
    cands = [_c("a", "dynamic", s, 0.8, 0.8 + 0.01 * s, 1.0 + s / 10) for s in range(2)] + \
            [_c("d4", "dense", s, 0.8, 0.79, 0.9) for s in range(2)]
    path = plot_comparison([c.to_dict() for c in cands], {"0.75x ref": 0.95}, tmp_path / "c.png", title="t")
    assert path.stat().st_size > 5000


# ---- diagnostics ----------------------------------------------------------------------------------------------
def test_token_selection_rules_leave_the_model_alone_and_own_is_the_exported_rule(trained, tiny, digits):
    pruned = capacity_factor_plan(tiny, [0.5, 0.5], 1.0)
    scorers = [s for s in trained.scorers]
    assert selection_accuracy(trained, pruned, digits.val, "own") == plan_accuracy(trained, pruned, digits.val)
    first = selection_accuracy(trained, pruned, digits.val, "random", seed=1)
    assert selection_accuracy(trained, pruned, digits.val, "random", seed=1) == first
    assert 0.0 <= selection_accuracy(trained, pruned, digits.val, "cls_attention") <= 1.0
    assert list(trained.scorers) == scorers  # the model keeps its learned scorers
    full = capacity_factor_plan(tiny, [1.0, 1.0], 1.0)  # nothing pruned: the rule does not matter
    expected = plan_accuracy(trained, full, digits.val)
    assert all(selection_accuracy(trained, full, digits.val, how) == expected for how in ("random", "cls_attention"))
    with pytest.raises(ValueError, match="selection 'best' is not one of own, random, cls_attention"):
        selection_accuracy(trained, full, digits.val, "best")


def test_predictor_and_gates_agree_fully_when_experts_take_every_token(trained, tiny, digits):
    x = digits.train.first(16)
    kept = tiny.kept_patches([1.0, 1.0])
    assert expert_choice_overlap(trained, x, kept, [tiny.tokens]) == [1.0]
    share = expert_choice_overlap(trained, x, tiny.kept_patches([0.5, 0.5]), [2])[0]
    assert 0.0 <= share <= 1.0


def test_latency_breakdown_sums_to_the_prediction(tiny, tmp_path):
    """A synthetic table (each unit 1 us per token): the parts add up and pruning moves time to the pruned blocks."""
    table = LatencyTable.open_for_writing(DeviceManifest.for_this_machine("synthetic"), tmp_path)
    for key in space_keys(tiny):
        ms = 0.001 * key.tokens
        table.append(key, {"p50_ms": ms, "p90_ms": ms, "mean_ms": ms, "count": 10, "stable": True})
    lm = LatencyModel(LatencyTable.open("synthetic", tmp_path), allow_fallback=False)
    for plan in (capacity_factor_plan(tiny, [1.0, 1.0], 1.0), capacity_factor_plan(tiny, [0.5, 0.5], 0.5)):
        parts = latency_breakdown(lm, tiny, plan)
        assert sum(parts.values()) == pytest.approx(predict_plan(lm, tiny, plan).ms)
        pruned = min(plan.kept_patches) < tiny.patches
        assert (parts["token select"] > 0) == pruned and (parts["blocks after pruning"] > 0) == pruned
        assert parts["moe route"] > 0 and parts["moe experts"] > 0
        assert len(plan_keys(tiny, plan)) > 4
    none = StaticPlan((16, 16), (0,))  # no expert takes a token: the block's experts are skipped
    assert latency_breakdown(lm, tiny, none)["moe experts"] == 0.0


# ---- training -------------------------------------------------------------------------------------------------
def test_a_dense_epoch_runs_one_validation_pass(tiny, digits, monkeypatch):
    calls = []
    real = training.plan_accuracy
    monkeypatch.setattr(training, "plan_accuracy", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    dense = dense_variant(tiny, depth=1)
    history = train_dynamic(DynamicViT(dense), digits, Recipe(epochs=1, batch_size=64)).history
    assert len(calls) == 1 and history[0]["val_accuracy_full"] == history[0]["val_accuracy_keep0.7"]
    calls.clear()
    train_dynamic(DynamicViT(tiny), digits, Recipe(epochs=1, batch_size=64))
    assert len(calls) == 2  # the dynamic model: the full config and the pruned one
