"""Predictor-guided search building blocks: decisions, recipe ranges, joint space, vectorised costs, tables,
predictors (MLP with proxy pretraining, gpytorch GP) and the evolutionary search."""

import numpy as np
import pandas as pd
import pytest
from test_predict_fixtures import BENCH_TABLE, profiled_devices, tiny_space_file  # noqa: F401

from nas.arch.space import load_space
from nas.errors import SpaceError
from nas.models.builder import build_model, count_macs, count_params
from nas.search.blackbox.decisions import Decision, DecisionSpace
from nas.search.blackbox.evolution import evolve, rank_all
from nas.search.blackbox.problem import Constraint, parse_constraint
from nas.search.predict.block_costs import BlockCostTable, block_macs, block_params
from nas.search.predict.gp import GPPredictor, expected_improvement
from nas.search.predict.joint_space import JointSpace
from nas.search.predict.predictors import ArchRecipePredictor, cross_validated_tau, kendall_tau
from nas.search.predict.recipe_space import parse_recipe_space
from nas.search.predict.table_space import TableSpace


# ---- decisions ----
def _space():
    return DecisionSpace([Decision("op", "cat", ("a", "b", "c")), Decision("ch", "ord", (8, 16, 32)),
                          Decision("lr", "float", low=1e-3, high=1e-1, log=True),
                          Decision("ep", "int", low=1, high=4)])


def test_encoding_is_one_hot_scaled_index_and_position():
    s = _space()
    g = s.genome({"op": "b", "ch": 32, "lr": 1e-2, "ep": 3})
    x = s.encode(g[None])[0]
    assert s.n_features == 6
    np.testing.assert_allclose(x, [0, 1, 0, 1.0, 0.5, 2 / 3], atol=1e-6)
    assert s.describe(g) == {"op": "b", "ch": 32, "lr": pytest.approx(1e-2), "ep": 3}


def test_genome_rejects_values_outside_the_space():
    s = _space()
    with pytest.raises(ValueError, match="'d' is not an option of 'op'"):
        s.genome({"op": "d", "ch": 8, "lr": 1e-2, "ep": 1})
    with pytest.raises(ValueError, match="'lr': 1.0 is outside"):
        s.genome({"op": "a", "ch": 8, "lr": 1.0, "ep": 1})


def test_sampling_sobol_and_mutation_stay_in_the_space():
    s = _space()
    rng = np.random.default_rng(0)
    for g in np.concatenate([s.sample(200, rng), s.sobol(100, 0)]):
        d = s.describe(g)
        assert d["op"] in "abc" and d["ch"] in (8, 16, 32) and 1e-3 <= d["lr"] <= 1e-1 and 1 <= d["ep"] <= 4
    assert len(s.sobol(100, 0)) == 100
    parents = s.sample(500, rng)
    children = s.mutate(parents, rng, prob=0.0)
    assert ((children != parents).sum(axis=1) <= 1).all()  # exactly one entry resampled (it may draw the same)
    assert (children != parents).any(axis=1).mean() > 0.5
    # Sobol points cover the categorical options evenly
    counts = np.bincount(s.sobol(64, 1)[:, 0].astype(int), minlength=3)
    assert counts.min() >= 19


# ---- recipe ranges ----
def test_recipe_space_parses_ranges_choices_and_fixed_values():
    decisions, fixed = parse_recipe_space({"lr": {"low": 0.001, "high": 0.1, "log": True}, "epochs": {"low": 2,
                                           "high": 5}, "batch_size": [128, 32, 64], "optimizer": "sgd",
                                           "ema": [0.0, 0.99]})
    kinds = {d.name: d.kind for d in decisions}
    assert kinds == {"lr": "float", "epochs": "int", "batch_size": "ord", "ema": "ord"}
    assert [d for d in decisions if d.name == "batch_size"][0].options == (32, 64, 128)
    assert fixed == {"optimizer": "sgd"}


@pytest.mark.parametrize("raw, message", [
    ({"learning_rate": [0.1]}, "recipe_space.learning_rate: unknown recipe field"),
    ({"lr": {"low": 0.1, "high": 0.01}}, r"recipe_space.lr: low \(0.1\) must be below high \(0.01\)"),
    ({"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}, "recipe_space.weight_decay: a log range needs low > 0"),
    ({"label_smoothing": [0.1, 1.5]}, "recipe_space.label_smoothing: 1.5 is not a valid label_smoothing"),
    ({"epochs": {"low": 1.5, "high": 4}}, "recipe_space.epochs: 1.5 is not a valid epochs"),
    ({"lr": {"low": 0.1, "hi": 0.2}}, "recipe_space.lr.high: Field required"),
])
def test_recipe_space_errors_name_the_key(raw, message):
    with pytest.raises(SpaceError, match=message):
        parse_recipe_space(raw)


def test_builtin_spaces_declare_valid_recipe_spaces():
    for name in ("fbnet", "fbnet_v2"):
        joint = JointSpace(load_space(name, resolution=32, width_multiplier=0.25, classes=10, in_channels=1))
        assert {"lr", "epochs", "weight_decay", "label_smoothing", "dropout", "ema", "mixup", "batch_size"} <= \
            set(joint.recipe_names)


# ---- joint space and vectorised costs ----
def test_joint_encoding_matches_space_encode_and_costs_match_the_built_model():
    space = load_space("fbnet_v2", resolution=16, width_multiplier=0.25, classes=10, in_channels=1)
    joint = JointSpace(space)
    genomes = joint.sobol(2, 3)
    macs, params = BlockCostTable(joint, block_macs).total(genomes), BlockCostTable(joint, block_params).total(genomes)
    for g, m, p in zip(genomes, macs, params):
        cand = joint.candidate(g)
        assert np.array_equal(space.encode(cand.arch), joint.encode(g[None])[0][:len(space.encode(cand.arch))])
        np.testing.assert_allclose(joint.genome_of(cand.arch, cand.recipe), g)
        model = build_model(space, cand.arch)
        assert m == count_macs(model, model.input_shape)
        assert p == count_params(model)
        assert joint.base_recipe.lr != cand.recipe.lr  # the recipe is searched too


def test_vectorised_latency_equals_the_latency_model(profiled_devices):
    from nas.latency.model import LatencyModel
    from nas.search.predict.model_costs import ModelSpaceCosts, load_latency_models

    tables, space = profiled_devices
    joint = JointSpace(space)
    costs = ModelSpaceCosts(joint, load_latency_models(["dev-a", "dev-b"], tables))
    genomes = joint.sample(40, np.random.default_rng(0))
    lat = costs.latency_ms(genomes)
    assert lat.shape == (40, 2)
    for j, device in enumerate(["dev-a", "dev-b"]):
        lm = LatencyModel.load(device, tables_dir=tables)
        expected = [lm.predict(space, joint.arch(g)) for g in genomes]
        np.testing.assert_allclose(lat[:, j], expected, rtol=1e-9)
    assert lat.std(axis=0).min() > 0
    assert costs.proxies(genomes).shape == (40, 4)


# ---- constraints ----
def test_constraints_bound_every_or_named_devices():
    lat = np.asarray([[1.0, 5.0], [3.0, 1.0], [2.0, 2.0]])
    assert parse_constraint("2.5", ["a", "b"]).feasible(lat, ["a", "b"]).tolist() == [False, False, True]
    assert parse_constraint("a=2.5", ["a", "b"]).feasible(lat, ["a", "b"]).tolist() == [True, False, True]
    c = parse_constraint("a=2.5,b=1.5", ["a", "b"])
    assert c.label == "a=2.5ms,b=1.5ms"
    assert c.feasible(lat, ["a", "b"]).tolist() == [False, False, False]
    np.testing.assert_allclose(c.violation(lat, ["a", "b"]), [3.5, 0.5, 0.5])
    from nas.errors import SearchError
    with pytest.raises(SearchError, match="device 'c' is not one of the searched devices"):
        parse_constraint("c=3", ["a", "b"])
    with pytest.raises(SearchError, match="must be positive"):
        parse_constraint("0", ["a"])


# ---- tables ----
def _table(tmp_path, frame, **kw):
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    return TableSpace(path, kw.pop("objective", "val_accuracy"), kw.pop("latency", ["latency_ms"]), **kw)


def test_table_space_reads_decisions_and_merges_repeated_rows(tmp_path):
    bench = pd.read_csv(BENCH_TABLE)
    frame = pd.concat([bench.head(30), bench.head(2)])  # two repeated rows
    t = _table(tmp_path, frame, metric_columns=["test_accuracy", "predicted_latency_ms", "train_seconds"],
               proxy_columns=["macs", "params"])
    assert t.rows == 30 and "2 rows repeat" in t.warnings[0]
    assert {d.name for d in t.decisions} >= {"op_0", "lr", "batch_size"}
    assert {d.name: d.kind for d in t.decisions}["op_0"] == "cat"
    rows = t.row_of(t.genomes)
    assert rows.tolist() == list(range(30))
    np.testing.assert_allclose(t.values["val_accuracy"], bench["val_accuracy"].head(30))


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.drop(columns=["val_accuracy"]), "no column 'val_accuracy'"),
    (lambda f: f.assign(val_accuracy=["x"] + list(f.val_accuracy[1:])),
     r"metric column 'val_accuracy', row 1 \(line 2\): 'x' is not a number"),
    (lambda f: f.assign(latency_ms=list(f.latency_ms[:3]) + [None] + list(f.latency_ms[4:])),
     r"metric column 'latency_ms', row 4 \(line 5\): is empty"),
])
def test_table_space_errors_name_the_column_and_row(tmp_path, edit, message):
    frame = edit(pd.read_csv(BENCH_TABLE).head(10))
    with pytest.raises(SpaceError, match=message):
        _table(tmp_path, frame)


# ---- predictors ----
def _learnable(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 12)).astype(np.float32)
    y = 2 * x[:, 0] - x[:, 1] + np.sin(3 * x[:, 2]) + 0.05 * rng.standard_normal(n)
    return x, y


def test_mlp_predictor_ranks_held_out_candidates():
    x, y = _learnable(160, 0)
    p = ArchRecipePredictor(epochs=200, ensemble=2).fit(x[:100], y[:100])
    assert kendall_tau(p.predict(x[100:]), y[100:]) > 0.6
    assert cross_validated_tau(lambda: ArchRecipePredictor(epochs=100, ensemble=1), x[:60], y[:60], folds=3) > 0.3


def test_proxy_pretraining_learns_the_proxies_and_keeps_fit_working():
    x, y = _learnable(600, 1)
    proxies = np.exp(np.column_stack([x[:, 0] + x[:, 3], x[:, 1] * 2]))  # positive, like MACs
    p = ArchRecipePredictor(epochs=100, ensemble=1, pretrain_epochs=20).pretrain(x, proxies)
    assert p.is_pretrained and p.pretrain_loss < 0.2  # standardised MSE: 1.0 is predicting the mean
    p.fit(x[:40], y[:40])
    assert np.isfinite(p.predict(x[40:])).all()


def test_gp_mean_std_and_expected_improvement():
    x, y = _learnable(60, 2)
    gp = GPPredictor(iterations=60).fit(x[:40], y[:40])
    mean, std = gp.predict_mean_std(x[40:])
    assert kendall_tau(mean, y[40:]) > 0.4
    assert (std > 0).all()
    assert gp.predict_std(x[:5]).mean() < gp.predict_std(np.full((5, 12), 3.0, np.float32)).mean()
    assert gp.lengthscales.shape == (12,)  # ARD: one lengthscale per feature
    ei = expected_improvement(np.asarray([0.0, 1.0, 1.0]), np.asarray([1.0, 1.0, 0.0]), best=0.5)
    assert ei[1] > ei[0] > 0 and ei[2] == pytest.approx(0.5)


# ---- evolutionary search ----
def test_evolution_finds_the_constrained_optimum_of_a_known_function():
    space = DecisionSpace([Decision(f"x{i}", "cat", ("a", "b", "c", "d")) for i in range(12)])
    value = np.asarray([0.0, 1.0, 2.0, 3.0])
    cost = np.asarray([0.0, 1.0, 3.0, 6.0])

    def score(g):
        return value[g.astype(int)].sum(1)

    def latency(g):
        return cost[g.astype(int)].sum(1, keepdims=True)

    constraints = [Constraint(((None, 12.0),)), Constraint(((None, 30.0),))]
    res = evolve(space, score, latency, constraints, ["d"], rng=np.random.default_rng(0), population=512,
                 generations=30)
    # optimum under 12: twelve "b" (value 12, cost 12); under 30: e.g. 6 "c" + 6 "b" ... value 18 at cost 24
    assert res.scores[0][0] == 12.0 and latency(res.genomes[0][:1])[0, 0] <= 12
    assert res.scores[1][0] >= 17.0 and (latency(res.genomes[1]) <= 30).all()
    assert res.scored == 512 * 31
    exact = rank_all(space.sample(5000, np.random.default_rng(1)), score, latency, constraints, ["d"])
    assert (latency(exact.genomes[0]) <= 12).all() and np.all(np.diff(exact.scores[0]) <= 0)


# ---- train-and-test evaluator ----
def test_train_evaluator_depends_on_the_candidate_alone(tiny_space_file):
    import torch

    from nas.data.dataset import load_dataset
    from nas.search.predict.evaluators import TrainEvaluator

    joint = JointSpace(load_space(str(tiny_space_file)))
    data = load_dataset("digits", resolution=8, seed=0)
    evaluator = TrainEvaluator(joint, data)
    g = joint.sobol(1, 5)[0]
    first = evaluator.evaluate(joint.candidate(g))
    torch.manual_seed(123)  # the global RNG state must not leak into the weight init
    torch.rand(1000)
    second = evaluator.evaluate(joint.candidate(g))
    assert first["val_accuracy"] == second["val_accuracy"] and first["test_accuracy"] == second["test_accuracy"]
    assert first["epochs_trained"] == 1 and first["macs"] > 0
