"""What makes the predictor-guided searches sample-efficient (issue 26), and what they report spending: the
random-search expectation, evaluations to the final best, local neighbourhoods, the categorical GP kernel, the
objective transform, Thompson picks, and searches that beat random search on a table."""

import itertools
import warnings
import json

import numpy as np
import pandas as pd
import pytest

from nas.search.predict.acquisition import ObjectiveTransform, calibration, round_candidates, thompson_picks
from nas.search.blackbox.decisions import Decision, DecisionSpace
from nas.search.predict.gp import GPPredictor
from nas.search.blackbox.history import History
from nas.search.predict.nars import NarsConfig, ProxyFeatures, run_nars
from nas.search.blackbox.problem import TableProblem, parse_constraint
from nas.search.predict.convergence import (chance_best_draw_is_marked, chance_of_any_draw, expected_best_from_sample,
                                  expected_best_of_draws, expected_draws_to_hit)
from nas.search.predict.table_space import TableEvaluator, TableSpace
from test_predict_fixtures import BENCH_TABLE, InProcess  # noqa: F401

FAST_MLP = {"epochs": 150, "ensemble": 3, "pretrain_epochs": 10}


def test_random_search_expectation_is_exact():
    """The expected best of k draws without replacement, checked against every subset of a small set (with
    infeasible candidates whose draws are spent)."""
    feasible = np.asarray([3.0, 1.0, 4.0, 1.5, 5.0])
    infeasible = 2
    items = list(feasible) + [None] * infeasible
    for k in range(1, len(items) + 1):
        bests = [max(v for v in subset if v is not None) for subset in itertools.combinations(items, k)
                 if any(v is not None for v in subset)]
        assert expected_best_of_draws(feasible, k, infeasible)[k - 1] == pytest.approx(np.mean(bests))
        marked = np.asarray([True, False, False, True, False])  # 3.0 and 1.5: never the best once 4 or 5 is drawn
        subsets = list(itertools.combinations(range(len(items)), k))
        best_marked = [any(items[i] is not None for i in subset) and
                       marked[max((i for i in subset if items[i] is not None), key=lambda i: items[i])]
                       for subset in subsets]
        assert chance_best_draw_is_marked(feasible, marked, k, infeasible) == pytest.approx(np.mean(best_marked))
    assert expected_best_of_draws(feasible, 9)[-1] == 5.0  # more draws than candidates: the best
    assert chance_of_any_draw(1, 10, 3) == pytest.approx(0.3)
    assert chance_of_any_draw(2, 4, 2) == pytest.approx(1 - 1 / 6)
    assert expected_draws_to_hit(1, 9) == pytest.approx(5.0)
    sample = expected_best_from_sample(np.asarray([1.0, 2.0]), 2)
    assert sample.tolist() == pytest.approx([1.5, 1.75])


def _grid_table(tmp_path, seed=0):
    """A table of every combination of four categorical decisions (6^4 rows): an objective with main effects and
    one interaction, a few broken rows (accuracy 10), and a latency that the good options cost."""
    rng = np.random.default_rng(seed)
    options = [f"o{i}" for i in range(6)]
    main = rng.normal(0, 1, (4, 6))
    cost = rng.uniform(0.5, 2.0, (4, 6))
    inter = rng.normal(0, 0.7, (6, 6))
    rows = []
    for combo in itertools.product(range(6), repeat=4):
        acc = 90 + sum(main[j, o] for j, o in enumerate(combo)) + inter[combo[0], combo[1]]
        if combo[2] == 5 and combo[3] == 5:
            acc = 10.0  # a broken cell, as NAS-Bench-201's all-"none" ones
        rows.append({**{f"e{j}": options[o] for j, o in enumerate(combo)}, "acc": acc,
                     "ms": float(sum(cost[j, o] for j, o in enumerate(combo)))})
    path = tmp_path / "grid.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_neighbours_change_one_decision():
    space = DecisionSpace([Decision("op", "cat", ("a", "b", "c")), Decision("width", "ord", (8, 16, 32)),
                           Decision("lr", "float", low=0.01, high=0.1)])
    g = np.asarray([1.0, 0.0, 0.5])
    near = space.neighbours(g)
    changed = (np.abs(near - g) > 1e-12).sum(1)
    assert (changed == 1).all()
    assert len(near) == 2 + 1 + 2  # two other ops, one wider width, lr either side
    assert space.feature_groups().tolist() == [0, 0, 0, 1, 2]


def test_table_neighbours_are_other_rows(tmp_path):
    table = TableSpace(_grid_table(tmp_path), "acc", ["ms"])
    problem = TableProblem(table, TableEvaluator(table))
    g = table.genomes[:1]
    near = problem.neighbours(g)
    assert len(near) == 4 * 5  # every row one decision away exists in a full grid
    assert not any(np.array_equal(n, g[0]) for n in near)
    assert ((np.abs(near - g) > 0).sum(1) == 1).all()


def test_round_candidates_add_swaps_of_two_decisions_around_the_best(tmp_path):
    """An incumbent at the bound: most single moves break it, so the round also offers a sample of the feasible
    candidates two decisions away (a costlier option here paid for by a cheaper one there)."""
    table = TableSpace(_grid_table(tmp_path), "acc", ["ms"])
    problem = TableProblem(table, TableEvaluator(table))
    c = parse_constraint(f"{np.median(table.values['ms']):.6f}", ["ms"])
    ok = np.flatnonzero(c.feasible(table.latency_ms(np.arange(table.rows)), ["ms"]))
    best = table.genomes[ok[np.argmax(table.values["ms"][ok])]][None, :]  # the feasible row nearest the bound
    args = (problem, [c], best, np.zeros(1), problem.latency_ms(best), set(problem.space.keys(best)),
            np.zeros((0, best.shape[1])), np.zeros((1, 0), bool), np.zeros(0), 1, 0)
    single, _ = round_candidates(*args)
    both, masks = round_candidates(*args, swaps=60)

    def moved(g):
        return (np.abs(g - best) > 0).sum(1)

    assert set(moved(single)) == {1} and len(single) < 4 * 5  # some single moves break the bound
    assert 0 < (moved(both) == 2).sum() <= 60 and masks.all()  # feasible swaps, at most the sample
    assert set(problem.space.keys(single)) <= set(problem.space.keys(both))


def test_categorical_gp_kernel_depends_on_which_decisions_differ():
    space = DecisionSpace([Decision(f"d{j}", "cat", tuple("abcd")) for j in range(3)])
    genomes = space.sample(40, np.random.default_rng(0))
    y = (genomes[:, 0] == 1) * 2.0 + (genomes[:, 1] == 2) * 1.0
    gp = GPPredictor(iterations=50, groups=space.feature_groups()).fit(space.encode(genomes), y)
    assert gp.lengthscales.shape == (3,)  # one per decision, not one per option
    k = gp._model.covar_module
    base = space.encode(np.asarray([[0.0, 0.0, 0.0]]))
    one_off = [space.encode(np.asarray([[0.0, 0.0, float(o)]])) for o in (1, 2, 3)]
    import torch
    with torch.no_grad():
        covs = [float(k(torch.as_tensor(base, dtype=torch.float64),
                        torch.as_tensor(x, dtype=torch.float64)).to_dense()) for x in one_off]
    # the interaction part sees only that d2 differs; the main-effect part is linear in the one-hot features, so
    # which other option it takes does not matter either
    assert covs == pytest.approx([covs[0]] * 3)
    test = space.sample(200, np.random.default_rng(1))
    truth = (test[:, 0] == 1) * 2.0 + (test[:, 1] == 2) * 1.0
    assert np.corrcoef(gp.predict(space.encode(test)), truth)[0, 1] > 0.9


def test_gp_features_append_the_free_proxies_scaled_over_the_pool(tmp_path):
    table = TableSpace(_grid_table(tmp_path), "acc", ["ms"])
    problem = TableProblem(table, TableEvaluator(table))
    pool = table.genomes[::7]
    features = ProxyFeatures(problem, pool)
    x = features(pool)
    width = problem.space.encode(pool[:1]).shape[1]
    assert x.shape == (len(pool), width + 1) and (x[:, :width] == problem.space.encode(pool)).all()
    lat = problem.latency_ms(pool)
    assert x[:, -1].min() == pytest.approx(0.0) and x[:, -1].max() == pytest.approx(1.0)
    assert (np.diff(x[np.argsort(lat), -1]) >= 0).all()  # monotone in the latency (log-scaled)
    assert features(table.genomes).shape == (table.rows, width + 1)  # rows outside the pool: outside [0, 1] at most
    assert features(np.zeros((0, table.dims))).shape == (0, width + 1)


def test_objective_transform_is_monotone_and_inverts():
    y = np.asarray([10.0, 85.0, 90.0, 91.0, 92.5, 93.0, 93.9])
    tf = ObjectiveTransform().fit(y)
    z = tf(y)
    assert (np.diff(z) > 0).all()
    assert tf.inverse(z) == pytest.approx(y, abs=1e-6)
    assert abs(z.mean()) < 1e-6 and z.std() == pytest.approx(1.0, abs=1e-6)
    assert z[0] > -3.5  # the broken candidate no longer sets the scale (it would be -2.4 sd, 10 sd away raw)
    assert ObjectiveTransform().fit(np.ones(4))(np.ones(4)) == pytest.approx(np.zeros(4))
    assert ObjectiveTransform().fit(np.zeros(0)).inverse(np.zeros(0)).size == 0  # a first asynchronous fit


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_objective_transform_inverse_is_finite_and_monotone_past_the_edge_of_its_domain(sign):
    # accuracies with a long low tail fit a Yeo-Johnson lambda above 2, whose inverse has no value far below;
    # a right-skewed objective fits one below 0, with no value far above
    rng = np.random.default_rng(0)
    y = sign * np.r_[rng.normal(93, 0.5, 40), rng.uniform(10, 60, 5)]
    tf = ObjectiveTransform().fit(y)
    z = np.linspace(-20, 20, 81)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = tf.inverse(z)
        spread = tf.inverse_std(z, np.ones_like(z))
    assert np.isfinite(back).all() and np.isfinite(spread).all()
    assert (np.diff(back) >= 0).all()
    assert back.min() >= y.min() - np.ptp(y) and back.max() <= y.max() + np.ptp(y)
    assert tf.inverse(tf(y)) == pytest.approx(y, abs=1e-6)


def test_thompson_picks_are_distinct_and_meet_their_constraint():
    rng = np.random.default_rng(0)
    mean, std = np.arange(10.0), np.ones(10)
    masks = np.stack([np.arange(10) < 5, np.arange(10) >= 5])
    picks = thompson_picks(mean, std, masks, 6, rng)
    assert len(set(picks)) == 6
    assert [masks[j % 2][i] for j, i in enumerate(picks)] == [True] * 6
    assert thompson_picks(mean, np.zeros(10), masks[:1], 2, rng) == [4, 3]  # no uncertainty: greedy
    assert calibration([2.0, -2.0, 2.0, -2.0, 2.0]) == pytest.approx(2.0)
    assert calibration([1.0, 1.0]) == 1.0  # too few to judge


@pytest.mark.parametrize("predictor", ["mlp", "gp"])
def test_search_beats_random_search_on_a_table(tmp_path, predictor):
    """1,296 rows, a bound that half of them meet, 40 evaluations: every seed ends above random search's expected
    best, and the mean regret is at most half of random search's (0.98 here)."""
    table = TableSpace(_grid_table(tmp_path), "acc", ["ms"])
    lat = table.values["ms"]
    c = parse_constraint(f"{np.median(lat):.6f}", ["ms"])
    ok = c.feasible(table.latency_ms(np.arange(table.rows)), ["ms"])
    optimum = table.values["acc"][ok].max()
    random_best = expected_best_of_draws(table.values["acc"][ok], 40)[-1]
    bests = []
    for seed in range(3):
        problem = TableProblem(table, TableEvaluator(table))
        history = History(problem, 40, [c])
        run_nars(problem, [c], history, NarsConfig(budget=40, seed=seed, predictor=predictor, cv_folds=0,
                                                   predictor_kwargs=FAST_MLP if predictor == "mlp" else
                                                   {"iterations": 60}))
        assert history.used == 40 and all(r[f"feasible[{c.label}]"] for r in history.rows)
        bests.append(history.best_score_under(c))
    assert min(bests) > random_best, (bests, random_best)
    assert optimum - np.mean(bests) <= 0.5 * (optimum - random_best), (bests, optimum, random_best)


def test_report_says_what_the_search_spent(tmp_path, capsys, monkeypatch):
    cli = InProcess(capsys, monkeypatch)
    out = tmp_path / "run"
    med = float(np.median(pd.read_csv(BENCH_TABLE)["latency_ms"]))
    r = cli("search", "chamnet", "--space", f"table:{BENCH_TABLE}", "--objective", "val_accuracy",
            "--latency-column", "latency_ms", "--metric", "test_accuracy", "--latency-ms", f"{med:.4f}",
            "--budget", "12", "--init", "6", "--batch", "2", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)["chamnet"]
    history = pd.read_csv(out / "history.csv")
    label = report["constraints"][0]["label"]
    feasible = history[history[f"feasible[{label}]"]]
    best = feasible["val_accuracy"].max()
    first = int(feasible.loc[feasible["val_accuracy"] == best, "eval"].min())
    progress = report["progress"][label]
    assert progress["evaluations_to_best"] == first == report["evaluations_to_best"]
    assert report["winners"][0]["evaluations_to_best"] == first
    assert progress["random_search"] == "exact"
    table = TableSpace(BENCH_TABLE, "val_accuracy", ["latency_ms"])
    values = table.values["val_accuracy"][table.values["latency_ms"] <= float(f"{med:.4f}")]
    assert progress["random_search_expected_best"] == pytest.approx(expected_best_of_draws(values, 12)[-1])
    assert progress["best_possible"] == pytest.approx(values.max())
    assert (out / "progress.png").is_file()
