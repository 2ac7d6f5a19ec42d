"""FBNet DNAS: Gumbel sampling, the supernet and its children, latency terms, exact decoding, loss, search, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_dnas_support import (
    TINY,
    TINY_V2,
    all_archs,
    arch_log_prob,
    digits_npz,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    profiled_space,
    randomize_bn,
    rng,
    tiny_space,
)

from nas.data.task import load_search_task
from nas.errors import DataError, LatencyTableError, SearchError
from nas.latency.layout import reorder_steps
from nas.models.builder import build_model
from nas.search.dnas.decode import attainable_range_ms, most_probable_in_band
from nas.search.dnas.distribution import ArchDistribution
from nas.search.dnas.dnas_supernet import DNASSupernet
from nas.search.dnas.latency_terms import LatencyTerms
from nas.search.dnas.search import SupernetSearch, SupernetSearchSettings
from nas.search.dnas.strategy import SearchJob, SupernetStrategy
from nas.search.gumbel import TemperatureSchedule, sample_decision
from nas.search.latency_loss import TargetController, latency_factor
from nas.search.strategy import open_run
from nas.train.recipe import Recipe


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path, tables, lm = profiled_space(tmp_path_factory, TINY, "tiny", "test-tiny")
    return {"path": path, "space": tiny_space(path), "lm": lm, "tables": tables,
            "digits": digits_npz(path.parent)}


@pytest.fixture(scope="module")
def tiny_v2(tmp_path_factory):
    path, tables, lm = profiled_space(tmp_path_factory, TINY_V2, "tiny_v2", "test-v2")
    return {"path": path, "space": tiny_space(path), "lm": lm}


def _data(tiny):
    data, _ = load_search_task(f"npz:{tiny['digits']}", str(tiny["path"]), resolution=16, width=1.0)
    return data


# ---- Gumbel ----------------------------------------------------------------------------------------------------
def test_hard_sample_is_one_hot_and_its_gradient_reaches_every_logit():
    torch.manual_seed(0)
    logits = torch.zeros(5, requires_grad=True)
    d = sample_decision(logits, 2.0, 1)
    assert d.active is not None and len(d.active) == 1
    assert torch.equal(d.weights.detach(), torch.nn.functional.one_hot(torch.tensor(d.active[0]), 5).float())
    (d.weights[d.active[0]] * 3.0).backward()
    assert (logits.grad.abs() > 0).all()


def test_top2_paths_run_two_candidates_with_weights_summing_to_one():
    torch.manual_seed(1)
    d = sample_decision(torch.randn(9), 1.0, 2)
    assert len(d.active) == 2
    assert float(d.weights.sum()) == pytest.approx(1.0)
    assert (d.weights[[i for i in range(9) if i not in d.active]] == 0).all()


def test_hard_samples_follow_the_distribution():
    torch.manual_seed(2)
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    counts = np.bincount([sample_decision(logits, 5.0, 1).active[0] for _ in range(3000)], minlength=3)
    assert np.allclose(counts / 3000, [0.7, 0.2, 0.1], atol=0.04)


def test_temperature_schedule_is_fbnets_and_the_bit_searchs_is_the_same_curve():
    fbnet = TemperatureSchedule()
    assert fbnet.at(0) == pytest.approx(5.0) and fbnet.at(10) == pytest.approx(5.0 * 0.956 ** 10)
    bits = TemperatureSchedule.between(5.0, 0.5, 8)  # the mixed-precision search: tau_start to tau_end
    assert bits.at(0) == pytest.approx(5.0) and bits.at(7) == pytest.approx(0.5) and bits.at(3) < bits.at(2)
    assert TemperatureSchedule.between(5.0, 0.5, 1).at(0) == 0.5


# ---- supernet --------------------------------------------------------------------------------------------------
def test_dnas_child_is_build_model_with_the_supernet_weights(tiny):
    space = tiny["space"]
    dist = ArchDistribution(space)
    net = DNASSupernet(dist)
    randomize_bn(net)
    net.eval()
    x = torch.randn(6, 1, 16, 16)
    for arch in [space.sample(rng(s)) for s in range(5)]:
        child = net.child(arch).eval()
        assert type(child) is type(build_model(space, arch))
        assert [type(m) for m in child] == [type(m) for m in build_model(space, arch)]
        with torch.no_grad():
            assert torch.allclose(net(x, dist.one_hot(arch)), child(x), atol=1e-5)


def test_sampled_path_runs_only_the_sampled_candidate(tiny):
    space = tiny["space"]
    dist = ArchDistribution(space)
    net = DNASSupernet(dist)
    calls = []
    for layer in net.layers:
        for i, cand in enumerate(layer.candidates):
            cand.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    torch.manual_seed(0)
    sample = dist.sample(1.0, op_paths=1)
    net(torch.randn(2, 1, 16, 16), sample)
    assert len(calls) == len(space.layers)
    assert calls == [d.active[0] for d in sample.ops]
    calls.clear()
    net(torch.randn(2, 1, 16, 16), dist.sample(1.0, op_paths=None))
    assert len(calls) == sum(len(layer.candidates) for layer in space.layers)


# ---- latency ---------------------------------------------------------------------------------------------------
def test_latency_terms_equal_the_latency_model_for_every_arch(tiny_v2):
    space, lm = tiny_v2["space"], tiny_v2["lm"]
    dist = ArchDistribution(space)
    terms = LatencyTerms(dist, lm)
    for arch in all_archs(space)[::7]:
        assert terms.arch_ms(*dist.indices(arch)) == pytest.approx(lm.predict(space, arch), rel=1e-9, abs=1e-12)


def test_expected_latency_is_the_exact_expectation_and_differentiable(tiny_v2):
    space, lm = tiny_v2["space"], tiny_v2["lm"]
    dist = ArchDistribution(space)
    with torch.no_grad():
        dist.logits.normal_(generator=torch.Generator().manual_seed(3))
    terms = LatencyTerms(dist, lm)
    archs = all_archs(space)
    probs = np.exp([arch_log_prob(dist, a) for a in archs])
    assert probs.sum() == pytest.approx(1.0, rel=1e-5)
    brute = float(np.sum(probs * [lm.predict(space, a) for a in archs]))
    expected = terms.expected_ms()
    assert float(expected.detach()) == pytest.approx(brute, rel=1e-5)
    expected.backward()
    assert dist.logits.grad.abs().sum() > 0


@pytest.mark.parametrize("per_reorder_ms", [0.0, 0.001, 0.002])
def test_attainable_range_and_band_decoding_match_brute_force(tiny_v2, per_reorder_ms, monkeypatch):
    """With the layout term on (it takes off the reorders the blocks were timed with: at 0.001 ms a reorder, a fifth
    of the median arch's latency here, arch by arch) as without: a DP that left it out found no arch in the band
    and fell back to one predicted 14-21% under the target."""
    space, lm = tiny_v2["space"], tiny_v2["lm"]
    monkeypatch.setattr(lm.correction, "per_reorder_ms", per_reorder_ms)
    dist = ArchDistribution(space)
    with torch.no_grad():
        dist.logits.normal_(generator=torch.Generator().manual_seed(4))
    terms = LatencyTerms(dist, lm)
    archs = all_archs(space)
    lat = np.array([lm.predict(space, a) for a in archs])
    lo, hi = attainable_range_ms(terms)
    assert lo == pytest.approx(lat.min(), rel=1e-9) and hi == pytest.approx(lat.max(), rel=1e-9)
    logp = np.array([arch_log_prob(dist, a) for a in archs])
    # targets are latencies of real archs (the table is measured live, so an interpolated quantile can fall in a
    # gap between archs); the decoder bins latencies, so it is exact up to its rounding margin at the band's edges
    # (its bins span the band's top down to the sum of the positions' most negative costs, layout term included)
    floor = terms.base_ms + sum(min(0.0, float(t.cost_ms.min()) + per_reorder_ms * reorder_steps(t.layout)[:2].min())
                                for t in terms.terms)
    for target in np.quantile(lat, [0.1, 0.5, 0.9], method="nearest"):
        band = (0.95 * target, 1.05 * target)
        margin = 3 * (len(terms.terms) + 2) * (band[1] - floor) / 4000 / 2
        found = most_probable_in_band(terms, *band)
        assert found is not None
        ms = terms.arch_ms(*found)
        assert band[0] <= ms <= band[1]
        clear = (lat >= band[0] + margin) & (lat <= band[1] - margin)
        assert arch_log_prob(dist, dist.arch_from_indices(*found)) >= logp[clear].max() - 1e-6


# ---- loss and target -------------------------------------------------------------------------------------------
def test_latency_weight_grows_with_alpha():
    lat = torch.tensor(2.0, requires_grad=True)
    slopes = []
    for alpha in (0.0, 0.5, 2.0, 8.0):
        lat.grad = None
        torch.log(latency_factor(lat, 1.0, alpha, 0.6)).backward()
        slopes.append(float(lat.grad))
    assert slopes[0] == 0.0 and all(a < b for a, b in zip(slopes, slopes[1:]))


def test_target_controller_raises_alpha_above_target_and_lowers_it_below():
    c = TargetController(1.0, alpha=1.0)
    assert c.update(2.0) > 1.0
    c = TargetController(1.0, alpha=1.0)
    assert c.update(0.5) < 1.0


# ---- search ----------------------------------------------------------------------------------------------------
def _search(tiny, data, epochs, checkpoint=None, on_epoch=None, **settings):
    torch.manual_seed(0)
    space, lm = tiny["space"], tiny["lm"]
    dist = ArchDistribution(space, search_channels=False, search_resolution=False)
    terms = LatencyTerms(dist, lm)
    lo, _ = attainable_range_ms(terms)
    s = SupernetSearch(DNASSupernet(dist), dist, terms, data,
                       SupernetSearchSettings(epochs=epochs, warmup_epochs=1, **settings), Recipe(batch_size=64), lo)
    return s, s.run(checkpoint, on_epoch)


def test_interrupted_search_resumes_to_the_same_result(tiny, tmp_path):
    data = _data(tiny)
    full, _ = _search(tiny, data, 3)

    def interrupt(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    ckpt = tmp_path / "search.pt"
    with pytest.raises(KeyboardInterrupt):
        _search(tiny, data, 3, ckpt, interrupt)
    resumed, history = _search(tiny, data, 3, ckpt)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert torch.allclose(resumed.dist.logits, full.dist.logits, atol=1e-6)
    assert history[-1]["expected_ms"] == pytest.approx(full.history[-1]["expected_ms"], rel=1e-6)


def test_search_with_alpha_moves_toward_faster_archs(tiny):
    _, history = _search(tiny, _data(tiny), 4, alpha=20.0, op_paths=1, arch_lr=0.1)
    assert history[-1]["expected_ms"] < history[0]["expected_ms"]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in history)
    assert {"p_L0_skip", "temperature", "alpha", "argmax_ms", "train_loss"} <= set(history[-1])


# ---- bad input -------------------------------------------------------------------------------------------------
def test_target_outside_the_attainable_range_names_the_range(tiny):
    job = SearchJob(method="dnas", space=str(tiny["path"]), device="test-tiny", resolution=16, width=1.0,
                    target_ms=1e-6, tables_dir=str(tiny["tables"]))
    with pytest.raises(SearchError, match=r"below the fastest arch .* attainable [0-9.]+-[0-9.]+ ms"):
        SupernetStrategy(job).prepare()
    job.target_ms = 1e6
    with pytest.raises(SearchError, match="above the slowest"):
        SupernetStrategy(job).prepare()


def test_big_settings_objects_take_keywords_only():
    """A 15-field job built positionally silently shifts every value after a new field; these refuse it."""
    from nas.search.capacity.strategy import CapacityJob
    from nas.search.quant.prepare import MixedPrecisionJob

    for job, args in ((SearchJob, ("dnas", "fbnet", "dev")), (MixedPrecisionJob, ("fbnet_a", "dev")),
                      (CapacityJob, ("vit", "model.pt", "dev", 1.0))):
        with pytest.raises(TypeError, match="positional"):
            job(*args)
    assert SearchJob(method="dnas", space="fbnet", device="dev").settings.epochs == 20


def test_missing_table_offers_the_profile_command(tiny, tmp_path):
    job = SearchJob(method="dnas", space=str(tiny["path"]), device="no-such-device", resolution=16, width=1.0,
                    tables_dir=str(tmp_path))
    with pytest.raises(LatencyTableError, match=r"hwnas latency profile --space .* --device no-such-device "
                                                r"--resolution 16 --width 1 --classes 10 --in-channels 1"):
        SupernetStrategy(job).prepare()


def test_dataset_too_small_for_the_split(tiny, tmp_path):
    np.savez(tmp_path / "small.npz", x=np.random.rand(12, 8, 8).astype(np.float32), y=np.arange(12) % 4)
    job = SearchJob(method="dnas", space=str(tiny["path"]), device="test-tiny", dataset=f"npz:{tmp_path / 'small.npz'}",
                    resolution=16, tables_dir=str(tiny["tables"]))
    with pytest.raises(DataError, match="too small"):
        SupernetStrategy(job).prepare()


# ---- CLI -------------------------------------------------------------------------------------------------------
def test_cli_dnas_end_to_end_then_resume_checks(cli, tiny, tmp_path):
    out = tmp_path / "run"
    args = ["search", "dnas", "--space", str(tiny["path"]), "--dataset", f"npz:{tiny['digits']}",
            "--device", "test-tiny", "--resolution", "16",
            "--width", "1.0", "--epochs", "2", "--final-epochs", "1", "--tables-dir", str(tiny["tables"]),
            "--sampled-path", "--out", str(out)]
    r = cli(*args, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    for name in ("config.json", "arch.json", "history.csv", "model.onnx", "report.json", "search_trajectory.png",
                 "arch_probabilities.png"):
        assert (out / name).is_file(), name
    for key in ("accuracy", "predicted_ms", "measured_ms", "onnx_max_abs_diff", "target_ms"):
        assert key in report
    assert report["onnx_max_abs_diff"] < 1e-3 and 0.0 <= report["accuracy"] <= 1.0
    arch = json.loads((out / "arch.json").read_text())
    assert arch["ops"] == report["dnas"]["arch"]["ops"]
    before = (out / "config.json").read_text()
    job = SearchJob(method="dnas", space=str(tiny["path"]), device="test-tiny", dataset=f"npz:{tiny['digits']}",
                    resolution=16, width=1.0, tables_dir=str(tiny["tables"]),
                    settings=SupernetSearchSettings(epochs=3, op_paths=1), recipe=Recipe(epochs=1))
    with pytest.raises(SearchError, match=r"other settings .*epochs") as e:  # the CLI prints it as one line, exit 2
        open_run(SupernetStrategy(job), SupernetStrategy(job).prepare(), out)
    assert "\n" not in str(e.value)
    assert (out / "config.json").read_text() == before


def test_same_seed_gives_the_same_search(tiny, tmp_path):
    """The supernet is seeded before it is built: rerunning a search in the same process repeats it exactly."""
    import pandas as pd

    job = SearchJob(method="dnas", space=str(tiny["path"]), device="test-tiny", dataset=f"npz:{tiny['digits']}",
                    resolution=16, width=1.0, tables_dir=str(tiny["tables"]),
                    settings=SupernetSearchSettings(epochs=2, op_paths=1), recipe=Recipe(epochs=1))
    runs = []
    for name in ("a", "b"):
        strategy = SupernetStrategy(job)
        prep = strategy.prepare()
        strategy.run(prep, open_run(strategy, prep, tmp_path / name))
        history = pd.read_csv(tmp_path / name / "history.csv")
        runs.append((json.loads((tmp_path / name / "arch.json").read_text()),
                     history[["val_accuracy", "expected_ms", "train_loss"]].to_numpy()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
