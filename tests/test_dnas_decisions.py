"""How decided a differentiable search ends: the figures its report records, the temperature schedule that anneals
whatever the search's length, and the entropy penalty that makes the searches decide."""

from __future__ import annotations

import math

import pytest
import torch
from test_dnas_support import TINY_V2, one_torch_thread, tiny_space, write_space  # noqa: F401

from nas.search.dnas.distribution import ArchDistribution
from nas.search.dnas.search import SupernetSearchSettings


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    return tiny_space(write_space(tmp_path_factory.mktemp("decide"), TINY_V2, "tiny_v2"))


def test_decidedness_of_a_uniform_and_of_a_decided_distribution(space):
    dist = ArchDistribution(space)
    uniform = dist.decidedness()
    assert set(uniform) == {"ops", "channels", "resolution"}
    ops = uniform["ops"]
    assert ops["decisions"] == len(space.layers)
    assert ops["mean_entropy_nats"] == pytest.approx(ops["uniform_entropy_nats"]) == pytest.approx(math.log(4))
    assert ops["mean_argmax_probability"] == pytest.approx(0.25) == pytest.approx(ops["uniform_argmax_probability"])
    assert ops["share_over_half"] == 0.0
    assert float(dist.relative_entropy()) == pytest.approx(1.0)
    with torch.no_grad():
        dist.logits[:dist.n_ops, 0] = 8.0  # every layer: the first op nearly certain
    decided = dist.decidedness()["ops"]
    assert decided["mean_entropy_nats"] < 0.02 and decided["min_argmax_probability"] > 0.99
    assert decided["share_over_half"] == 1.0
    assert dist.decidedness()["channels"] == uniform["channels"]  # other kinds untouched
    row = dist.probability_row()
    assert row["entropy_ops"] == pytest.approx(decided["mean_entropy_nats"])
    assert row["argmax_p_ops"] == pytest.approx(decided["mean_argmax_probability"])


def test_relative_entropy_is_differentiable_and_falls_as_one_option_wins(space):
    dist = ArchDistribution(space)
    with torch.no_grad():
        dist.logits.normal_(generator=torch.Generator().manual_seed(0))
    before = dist.relative_entropy()
    before.backward()
    assert dist.logits.grad is not None and torch.isfinite(dist.logits.grad).all()
    with torch.no_grad():  # a step down the gradient lowers it
        dist.logits -= 0.5 * dist.logits.grad
    assert float(dist.relative_entropy()) < float(before)


@pytest.mark.parametrize("epochs", [4, 10, 90])
def test_final_temperature_is_reached_at_the_last_epoch_whatever_the_length(epochs):
    s = SupernetSearchSettings(epochs=epochs, initial_temperature=5.0, final_temperature=0.5)
    assert s.temperature_schedule.at(0) == pytest.approx(5.0)
    assert s.temperature_schedule.at(epochs - 1) == pytest.approx(0.5)
    temps = [s.temperature_schedule.at(e) for e in range(epochs)]
    assert all(a > b for a, b in zip(temps, temps[1:]))
    fbnet = SupernetSearchSettings(epochs=epochs, temperature_decay=0.956)
    assert fbnet.temperature_schedule.at(3) == pytest.approx(5.0 * 0.956 ** 3)  # the paper's per-epoch decay, when asked


def test_entropy_weight_ramps_from_zero_over_the_architecture_epochs():
    s = SupernetSearchSettings(epochs=10, warmup_epochs=2, entropy_weight=0.8)
    assert s.entropy_weight_at(2) == 0.0 and s.entropy_weight_at(9) == pytest.approx(0.8)
    assert s.entropy_weight_at(5) == pytest.approx(0.8 * 3 / 7)
    assert SupernetSearchSettings(epochs=10, entropy_weight=0.0).entropy_weight_at(9) == 0.0


def test_the_entropy_factor_makes_a_search_decide(tmp_path_factory):
    """The same tiny DMasking search with and without the entropy factor: with it, the op choices end far more
    decided (and the search's expected latency meets its argmax arch's)."""
    from test_dnas_support import digits_npz, profiled_space

    from nas.search.dnas.search import SupernetSearch
    from nas.search.dnas.strategy import SearchJob, SupernetStrategy, build_supernet
    from nas.train.recipe import Recipe

    path, tables, _ = profiled_space(tmp_path_factory, TINY_V2, "tiny_v2", "test-v2")
    ended = {}
    for weight in (0.0, 4.0):
        settings = SupernetSearchSettings(epochs=6, warmup_epochs=1, entropy_weight=weight, arch_lr=0.2)
        job = SearchJob(method="dmasking", space=str(path), device="test-v2",
                        dataset=f"npz:{digits_npz(path.parent)}", resolution=16, width=1.0, tables_dir=str(tables), settings=settings, recipe=Recipe(batch_size=32))
        prep = SupernetStrategy(job).prepare()
        torch.manual_seed(0)
        SupernetSearch(build_supernet(prep), prep.dist, prep.terms, prep.data, settings, job.recipe,
                       prep.min_ms).run()
        ended[weight] = prep.dist.decidedness()["ops"]
    assert ended[4.0]["mean_argmax_probability"] > ended[0.0]["mean_argmax_probability"] + 0.15
    assert ended[4.0]["mean_entropy_nats"] < 0.7 * ended[0.0]["mean_entropy_nats"]
