"""FBNetV2 DMaskingNAS: masked shared-weight supernet (ops, channels, resolution), exact children, search, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_dnas_support import (
    TINY,
    TINY_V2,
    all_archs,
    digits_npz,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    profiled_space,
    randomize_bn,
    rng,
    tiny_space,
    write_space,
)
from torch.utils.flop_counter import FlopCounterMode

from nas.arch.space import load_space
from nas.errors import SearchError
from nas.search.dnas.distribution import ArchDistribution
from nas.search.dnas.dmasking_supernet import DMaskingSupernet
from nas.search.dnas.resolution_loss import ResolutionLosses
from nas.search.dnas.search import SupernetSearch, SupernetSearchSettings
from nas.search.dnas.strategy import SearchJob, SupernetStrategy, build_supernet
from nas.search.strategy import open_run
from nas.train.evaluation import fit_input
from nas.train.recipe import Recipe
from nas.train.training import set_dropout


@pytest.fixture(scope="module")
def tiny_v2(tmp_path_factory):
    path, tables, lm = profiled_space(tmp_path_factory, TINY_V2, "tiny_v2", "test-v2")
    return {"path": path, "space": tiny_space(path), "lm": lm, "tables": tables, "folder": path.parent,
            "digits": digits_npz(path.parent)}


def _soft_path(sample):
    """The same one-hot weights, but through the mask-mixing code path (no candidate / option skipped)."""
    for d in [*sample.ops, *sample.channels, sample.resolution]:
        d.active = None
    return sample


@pytest.mark.parametrize("path", ["sliced", "masked"])
def test_one_hot_supernet_is_exactly_the_child(tiny_v2, path):
    space = tiny_v2["space"]
    dist = ArchDistribution(space)
    net = DMaskingSupernet(dist)
    randomize_bn(net, 1)
    net.eval()
    x = torch.randn(5, 1, 16, 16)
    archs = all_archs(space)
    for arch in [archs[i] for i in rng(0).choice(len(archs), 12, replace=False)]:
        child = net.child(arch).eval()
        sample = dist.one_hot(arch) if path == "sliced" else _soft_path(dist.one_hot(arch))
        with torch.no_grad():
            assert torch.allclose(net(x, sample), child(fit_input(x, child)), atol=1e-5), arch


def test_one_hot_supernet_matches_the_child_in_training_mode_too(tiny_v2):
    """Batch statistics too: resolution masks weight BN statistics by each option's pixels."""
    space = tiny_v2["space"]
    dist = ArchDistribution(space)
    net = DMaskingSupernet(dist, dropout=0.0).train()
    x = torch.randn(8, 1, 16, 16)
    for arch in [space.sample(rng(s)) for s in range(4)]:
        child = net.child(arch).train()
        set_dropout(child, 0.0)
        for sample in (dist.one_hot(arch), _soft_path(dist.one_hot(arch))):
            assert torch.allclose(net(x, sample), child(fit_input(x, child)), atol=1e-4)


def test_real_fbnet_v2_children_are_exact():
    space = load_space("fbnet_v2", resolution=32, width_multiplier=0.5, classes=10, in_channels=1)
    dist = ArchDistribution(space)
    net = DMaskingSupernet(dist).eval()
    randomize_bn(net, 2)
    x = torch.randn(2, 1, 32, 32)
    for arch in [space.sample(rng(s)) for s in range(3)]:
        with torch.no_grad():
            assert torch.allclose(net(x, dist.one_hot(arch)), net.child(arch).eval()(fit_input(x, net.child(arch))),
                                  atol=1e-5)


def test_gradients_reach_op_channel_and_resolution_logits(tiny_v2):
    space = tiny_v2["space"]
    dist = ArchDistribution(space)
    net = DMaskingSupernet(dist)
    for m in net.modules():  # residual blocks start as the identity (zero-gamma): as after the warm-up epochs
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    x = torch.randn(4, 1, 16, 16)
    torch.manual_seed(0)
    for resolution_paths in (None, 1):  # interleaved weighted sum of resolutions, or one sampled resolution
        dist.logits.grad = None
        net(x, dist.sample(2.0, None, None, resolution_paths)).square().mean().backward()
        ops, channels, res = dist.rows(dist.logits.grad)
        assert all(g.abs().sum() > 0 for g in ops)
        assert all(g.abs().sum() > 0 for g, o in zip(channels, dist.channel_options) if len(o) > 1)
        assert res.abs().sum() > 0


def test_running_resolution_losses_average_then_fade_and_fill_the_unmeasured():
    losses = ResolutionLosses(3, rate=0.25)
    probs = torch.tensor([0.2, 0.3, 0.5], requires_grad=True)
    assert float(losses.expected(probs).detach()) == 0  # nothing measured: no push either way
    losses.observe(0, 1.0)
    losses.observe(0, 2.0)  # a plain mean over the first 1 / rate steps
    assert losses.loss[0] == pytest.approx(1.5)
    losses.observe(0, 2.0)
    losses.observe(0, 2.0)
    assert losses.loss[0] == pytest.approx(1.75)  # (1 + 2 + 2 + 2) / 4
    losses.observe(0, 5.75)  # then an exponential mean: the newest step weighs ``rate``
    assert losses.loss[0] == pytest.approx(2.75)
    losses.observe(2, 3.0)
    expected = losses.expected(probs)
    fill = (losses.loss[0] + 3.0) / 2  # resolution 1 never ran: it counts at the mean of the others
    assert float(expected.detach()) == pytest.approx(0.2 * losses.loss[0] + 0.3 * fill + 0.5 * 3.0)
    expected.backward()
    assert probs.grad.tolist() == pytest.approx([losses.loss[0], fill, 3.0])
    again = ResolutionLosses(3)
    again.load(losses.state())
    assert again.loss == losses.loss and again.steps == losses.steps


def test_one_sampled_resolution_is_steered_by_the_resolutions_measured_losses(tiny_v2):
    """One resolution per step: the straight-through weight scaling the logits carries no gradient (it pushed by the
    sign of d loss / d logit scale, not by which resolution classifies better); the resolution's logits move by
    ``p_r (L_r - E[L])`` of the running losses, and the supernet trains every resolution alike."""
    job = SearchJob(method="dmasking", space=str(tiny_v2["path"]), device="test-v2", dataset=f"npz:{tiny_v2['digits']}",
                    resolution=16, width=1.0, tables_dir=str(tiny_v2["tables"]),
                    settings=SupernetSearchSettings(epochs=2, alpha=0.0, entropy_weight=0.0),
                    recipe=Recipe(epochs=1, batch_size=16))
    prep = SupernetStrategy(job).prepare()
    torch.manual_seed(0)
    search = SupernetSearch(build_supernet(prep), prep.dist, prep.terms, prep.data, job.settings, job.recipe,
                            prep.min_ms)
    assert prep.dist.resolution_options == [12, 16] and search.resolution_losses is not None
    picked = [search._sample().resolution.active[0] for _ in range(400)]
    assert 0.4 < np.mean(picked) < 0.6  # uniform, whatever the distribution says
    items = [prep.data.train[i] for i in range(16)]
    x = torch.stack([torch.as_tensor(item[0]) for item in items]).float()
    y = torch.as_tensor([int(item[1]) for item in items])
    for measured in ([1.0, 1.0], [0.5, 1.5]):
        search.resolution_losses.loss, search.resolution_losses.steps = list(measured), [10_000, 10_000]
        with torch.no_grad():
            prep.dist.logits.zero_()
        prep.dist.logits.grad = None
        loss, _ = search._arch_loss(x, y)
        loss.backward()
        grad = prep.dist.rows(prep.dist.logits.grad)[2]
        running = search.resolution_losses.loss  # this step's loss joined its resolution's mean
        mean = sum(running) / 2
        assert grad.tolist() == pytest.approx([0.5 * (running[0] - mean), 0.5 * (running[1] - mean)], abs=1e-6)
    assert float(grad[0]) < 0 < float(grad[1])  # the resolution that measured the lower loss gains


def test_an_interrupted_search_resumes_with_the_resolutions_running_losses(tiny_v2, tmp_path):
    job = SearchJob(method="dmasking", space=str(tiny_v2["path"]), device="test-v2", dataset=f"npz:{tiny_v2['digits']}",
                    resolution=16, width=1.0, tables_dir=str(tiny_v2["tables"]),
                    settings=SupernetSearchSettings(epochs=3, warmup_epochs=1), recipe=Recipe(epochs=1, batch_size=64))

    def search(checkpoint=None, on_epoch=None):
        prep = SupernetStrategy(job).prepare()
        torch.manual_seed(0)
        s = SupernetSearch(build_supernet(prep), prep.dist, prep.terms, prep.data, job.settings, job.recipe,
                           prep.min_ms)
        return s, s.run(checkpoint, on_epoch)

    full, _ = search()

    def interrupt(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(tmp_path / "search.pt", interrupt)
    resumed, history = search(tmp_path / "search.pt")
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert resumed.resolution_losses.loss == pytest.approx(full.resolution_losses.loss, rel=1e-6)
    assert resumed.resolution_losses.steps == full.resolution_losses.steps
    assert torch.allclose(resumed.dist.logits, full.dist.logits, atol=1e-6)


def test_a_search_does_not_resume_in_a_space_whose_options_changed(tiny_v2, tmp_path):
    """Reordered candidates keep the logits' shape: without the space's fingerprint in the run's config the
    checkpoint would load and its choices read back shifted."""
    path = write_space(tmp_path, TINY_V2, "tiny_v2")
    job = SearchJob(method="dmasking", space=str(path), device="test-v2", dataset=f"npz:{tiny_v2['digits']}",
                    resolution=16, width=1.0, tables_dir=str(tiny_v2["tables"]),
                    settings=SupernetSearchSettings(epochs=2), recipe=Recipe(epochs=1))
    run = open_run(SupernetStrategy(job), SupernetStrategy(job).prepare(), tmp_path / "run")
    run.write_json("arch.json", {})  # an output: the folder is a run to resume
    again = open_run(SupernetStrategy(job), SupernetStrategy(job).prepare(), tmp_path / "run")
    assert again.resumed
    write_space(tmp_path, TINY_V2.replace("[ir_k3_e1, ir_k3_e1_g2, ir_k3_e3, skip]",
                                          "[ir_k3_e3, ir_k3_e1, ir_k3_e1_g2, skip]"), "tiny_v2")
    with pytest.raises(SearchError, match="other settings .*space_fingerprint"):
        open_run(SupernetStrategy(job), SupernetStrategy(job).prepare(), tmp_path / "run")
    # a run started before the fingerprint was recorded resumes as it did then
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    del config["space_fingerprint"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    assert open_run(SupernetStrategy(job), SupernetStrategy(job).prepare(), tmp_path / "run").resumed


def test_the_split_seed_holds_the_data_split_while_the_seed_changes_the_search(tiny_v2, tmp_path):
    """Search seeds compared on one split: ``split_seed`` fixes the train / val / test split (and compare reads it
    from the run's config to train every contender on that split); without it the seed moves the split too."""
    def job(seed, split_seed=None):
        return SearchJob(method="dmasking", space=str(tiny_v2["path"]), device="test-v2",
                         dataset=f"npz:{tiny_v2['digits']}", resolution=16, width=1.0,
                         tables_dir=str(tiny_v2["tables"]), seed=seed, split_seed=split_seed,
                         settings=SupernetSearchSettings(epochs=2), recipe=Recipe(epochs=1))

    def test_x(j):
        return SupernetStrategy(j).prepare().data.test.tensors()[0]

    assert torch.equal(test_x(job(1, split_seed=0)), test_x(job(0)))
    assert not torch.equal(test_x(job(1)), test_x(job(0)))
    assert job(1, split_seed=0).config(tiny_v2["space"])["split_seed"] == 0
    assert job(1).config(tiny_v2["space"])["split_seed"] == 1


def _options_space(tmp_path, n: int):
    text = TINY_V2.replace("channel_options: [0.5, 1.0]",
                           f"channel_options: [{', '.join(str((i + 1) / n) for i in range(n))}]")
    text = text.replace("{channels: 16,", "{channels: 64,").replace("{channels: 32,", "{channels: 256,")
    return tiny_space(write_space(tmp_path, text, f"opts{n}"))


def test_channel_options_share_one_set_of_weights_and_one_pass(tmp_path):
    nets, flops = [], []
    for n in (4, 32):
        space = _options_space(tmp_path, n)
        assert len(space.stages[1].channel_options) == n
        dist = ArchDistribution(space)
        net = DMaskingSupernet(dist)
        nets.append(sum(p.numel() for p in net.parameters()))
        torch.manual_seed(0)
        with FlopCounterMode(display=False) as counter:
            net(torch.randn(64, 1, 16, 16), dist.sample(1.0, None, None, 1))
        convs = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "convolution" in str(k))
        flops.append((convs, counter.get_total_flops()))
    assert nets[0] == nets[1]  # the same weights serve 4 or 32 options
    assert flops[0][0] == flops[1][0]  # the same convolutions run
    assert flops[1][1] <= 1.1 * flops[0][1]  # mixing more masks costs next to nothing


def test_dmasking_search_lands_within_ten_percent_of_the_target(tiny_v2, tmp_path):
    lm = tiny_v2["lm"]
    space = tiny_v2["space"]
    lat = sorted(lm.predict(space, a) for a in all_archs(space))
    job = SearchJob(method="dmasking", space=str(tiny_v2["path"]), device="test-v2", dataset=f"npz:{tiny_v2['digits']}",
                    resolution=16, width=1.0, target="p33", tables_dir=str(tiny_v2["tables"]),
                    settings=SupernetSearchSettings(epochs=3, warmup_epochs=1), recipe=Recipe(epochs=1, batch_size=64))
    strategy = SupernetStrategy(job)
    prep = strategy.prepare()
    target = prep.target.ms  # the space's 33rd percentile on this table: whatever this machine measured
    assert prep.min_ms == pytest.approx(lat[0]) and prep.max_ms == pytest.approx(lat[-1])
    assert np.mean(np.asarray(lat) <= target) == pytest.approx(0.33, abs=0.1)  # a third of all archs meet it
    report = strategy.run(prep, open_run(strategy, prep, tmp_path / "run"))
    assert report["within_target"] is (report["measured_ms"] <= target) and report["judged_on"] == "measured"
    assert report["target"] == "p33" and report["target_ms"] == target
    assert 0.9 * target <= report["predicted_ms"] <= target  # the pick: the most probable arch at most 10% under
    assert report["predicted_ms"] == pytest.approx(lm.predict(space, space.validate(
        type(space.fixed_arch()).from_dict(report["dmasking"]["arch"]))))
    assert report["onnx_max_abs_diff"] < 1e-3 and report["measured_ms"] > 0
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    assert len(history) == 4 and {"p_S1_c16", "p_S1_c32", "p_res12", "p_res16", "expected_ms", "alpha",
                                  "temperature", "val_accuracy", "val_loss_res12", "val_loss_res16"} <= set(header)
    last = dict(zip(header, history[-1].split(",")))
    assert float(last["val_loss_res12"]) > 0 and float(last["val_loss_res16"]) > 0  # both measured, as they run
    for name in ("search_trajectory.png", "arch_probabilities.png", "model.onnx", "arch.json"):
        assert (tmp_path / "run" / name).stat().st_size > 0


def test_profile_flag_measures_a_missing_table_reading_its_manifest_once_per_step(tmp_path, monkeypatch):
    """--profile on a new device, then on new keys of it: the table is profiled, calibrated and loaded once each, so
    device.json is read once per step (it was read 4 and 8 times), and the LatencyModel loaded once."""
    import nas.latency.table as table_module

    reads = []
    read = table_module._read_manifest_file
    monkeypatch.setattr(table_module, "_read_manifest_file", lambda path: reads.append(path) or read(path))
    space_path = write_space(tmp_path, TINY, "tiny")
    for width, most_reads in ((1.0, 2), (0.5, 3)):  # a new device: calibrate + load; new keys: + profile
        reads.clear()
        job = SearchJob(method="dmasking", space=str(space_path), device="fresh-device", resolution=16, width=width,
                        tables_dir=str(tmp_path / "tables"), profile=True, settings=SupernetSearchSettings(epochs=2))
        prep = SupernetStrategy(job).prepare()
        assert (tmp_path / "tables" / "fresh-device" / "device.json").is_file()
        assert prep.terms.estimated_keys() == [] and prep.min_ms < prep.max_ms
        assert len(reads) == most_reads, reads
    assert prep.lm.correction.fitted_on > 0  # the refreshed model carries the refitted correction


def test_cli_target_out_of_range_is_one_line_and_writes_nothing(cli, tiny_v2, tmp_path):
    out = tmp_path / "run"
    r = cli("search", "dmasking", "--space", str(tiny_v2["path"]), "--device", "test-v2", "--resolution", "16",
            "--width", "1.0", "--tables-dir", str(tiny_v2["tables"]), "--target-ms", "1000", "--out", str(out))
    assert r.returncode == 2
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "above the slowest" in lines[0] and "attainable" in lines[0]
    assert not out.exists()
