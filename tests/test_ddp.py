"""Data parallelism: two gloo processes, spawned here, search a tiny supernet and must agree on everything."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from ddp_support import end_rank, free_port, torchrun_env
from test_dnas_support import TINY, digits_npz, profiled_space, tiny_space

DEVICE_ID = "test-ddp"


def _search_rank(rank: int, size: int, port: int, space_path, tables, data_path, out) -> None:
    torchrun_env(rank, size, port)
    from nas.data.task import load_search_task
    from nas.latency.model import LatencyModel
    from nas.search.dnas.decode import attainable_range_ms
    from nas.search.dnas.distribution import ArchDistribution
    from nas.search.dnas.dnas_supernet import DNASSupernet
    from nas.search.dnas.latency_terms import LatencyTerms
    from nas.search.dnas.search import SupernetSearch, SupernetSearchSettings
    from nas.train.engine import engine_for
    from nas.train.recipe import Recipe

    engine = engine_for("cpu", "32", 1, 0)
    assert engine.world.size == size and engine.world.rank == rank
    data, _ = load_search_task(f"npz:{data_path}", str(space_path), resolution=16, width=1.0)
    data.train.labels = data.train.labels[:150]  # a few steps are enough
    torch.manual_seed(0)
    space = tiny_space(space_path)
    arch_dist = ArchDistribution(space, search_channels=False, search_resolution=False)
    terms = LatencyTerms(arch_dist, LatencyModel.load(DEVICE_ID, tables))
    supernet = DNASSupernet(arch_dist)
    search = SupernetSearch(supernet, arch_dist, terms, data, SupernetSearchSettings(epochs=2, warmup_epochs=1),
                            Recipe(batch_size=32, dropout=0.1), attainable_range_ms(terms)[0], engine)
    search.run(out / "search.pt")
    torch.save({"logits": arch_dist.logits.detach(), "weights": dict(supernet.named_parameters()),
                "buffers": {k: b for k, b in supernet.named_buffers() if b.is_floating_point()}},
               out / f"rank{rank}.pt")
    end_rank()


def test_two_gloo_ranks_agree_on_architecture_logits_and_weights(tmp_path_factory, tmp_path):
    space_path, tables, _ = profiled_space(tmp_path_factory, TINY, "tiny_ddp", DEVICE_ID)
    data_path = digits_npz(space_path.parent)
    mp.spawn(_search_rank, args=(2, free_port(), space_path, tables, data_path, tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert torch.equal(ranks[0]["logits"], ranks[1]["logits"])
    assert not torch.equal(ranks[0]["logits"], torch.zeros_like(ranks[0]["logits"]))  # the logits did train
    assert ranks[0]["weights"].keys() == ranks[1]["weights"].keys()
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in ranks[0]["weights"])
    # batch-norm running statistics come from the whole global batch's moments: the same on every rank
    assert ranks[0]["buffers"] and ranks[0]["buffers"].keys() == ranks[1]["buffers"].keys()
    assert all(torch.equal(ranks[0]["buffers"][k], ranks[1]["buffers"][k]) for k in ranks[0]["buffers"])
    assert any(not torch.equal(b, torch.zeros_like(b)) for k, b in ranks[0]["buffers"].items() if "mean" in k)
    state = torch.load(tmp_path / "search.pt", weights_only=True)  # written by rank 0 alone
    assert state["world_size"] == 2


def _train_rank(rank: int, size: int, port: int, out) -> None:
    """A small conv net with batch norm and dropout trained on digits with ``size`` processes (a world of one when
    ``size`` is 1)."""
    if size > 1:
        torchrun_env(rank, size, port)
    from torch import nn

    from nas.data.dataset import load_dataset
    from nas.data.splits import TensorSplit
    from nas.train.engine import engine_for
    from nas.train.recipe import Recipe
    from nas.train.training import train_model

    engine = engine_for("cpu", "32", 1, 0)
    data = load_dataset("digits", resolution=8)
    data.train = TensorSplit(data.train.x[:512], data.train.labels[:512])  # every global batch splits evenly
    torch.manual_seed(0)
    # (no bias before batch norm, as in the blocks: its gradient is floating-point noise, which an adaptive
    # optimiser turns into steps of its own)
    model = nn.Sequential(nn.Conv2d(data.in_channels, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Dropout(0.3), nn.Linear(8 * 64, 10))
    result = train_model(model, data, Recipe(epochs=2, batch_size=32, lr=0.05, dropout=0.3), engine=engine,
                         evaluate_val=False)
    if rank == 0:
        torch.save({"state": result.model.state_dict(), "train_loss": [r["train_loss"] for r in result.history],
                    "classes": sorted({type(m).__name__ for m in result.model.modules()})}, out / f"world{size}.pt")
    if size > 1:
        end_rank()


def test_two_gloo_processes_train_like_one_with_batch_norm_and_dropout(tmp_path):
    """Each rank takes its share of every global batch; batch norm normalises with the whole batch's moments and
    dropout applies the rank's rows of one mask for the whole batch (nas.train.sync_layers): 2 processes follow 1
    process's trajectory up to floating-point summation order, running statistics and the reported loss included."""
    _train_rank(0, 1, 0, tmp_path)
    mp.spawn(_train_rank, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    one, two = (torch.load(tmp_path / f"world{n}.pt", weights_only=True) for n in (1, 2))
    for k, w in one["state"].items():
        assert torch.allclose(w.float(), two["state"][k].float(), rtol=1e-4, atol=1e-4), k
    assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-5)  # the whole epoch's, on rank 0
    assert two["classes"] == one["classes"] and "BatchNorm2d" in one["classes"]  # the shared classes are undone
    initial = torch.nn.Linear(8 * 64, 10)  # the weights moved: the comparison is not between two untrained models
    assert not torch.allclose(one["state"]["5.weight"], initial.weight, atol=1e-2)
    assert not torch.equal(one["state"]["1.running_mean"], torch.zeros(8))


def test_batch_moments_keep_the_variance_of_a_channel_far_from_zero():
    """Two passes: a channel at mean 3 and std 0.05 keeps its variance to float precision (``E[x^2] - E[x]^2`` in
    float32 is off by about 1e-3 there); position weights give the weighted moments."""
    from nas.train.sync_layers import batch_moments

    torch.manual_seed(0)
    x = (torch.randn(64, 6, 16, 16) * 0.05 + 3.0).contiguous(memory_format=torch.channels_last)
    mean, var, count = batch_moments(x)
    ref_var, ref_mean = torch.var_mean(x.double(), (0, 2, 3), unbiased=False)
    assert torch.allclose(var.double(), ref_var, rtol=1e-5) and torch.allclose(mean.double(), ref_mean, rtol=1e-6)
    assert count == 64 * 16 * 16
    positions = torch.zeros(16, 16)
    positions[::2, ::2] = 1 / 64  # the pixels of an 8 x 8 option inside the 16 x 16 map
    mean, var, count = batch_moments(x, positions)
    ref_var, ref_mean = torch.var_mean(x[:, :, ::2, ::2].double(), (0, 2, 3), unbiased=False)
    assert torch.allclose(var.double(), ref_var, rtol=1e-5) and torch.allclose(mean.double(), ref_mean, rtol=1e-6)
    assert count == pytest.approx(64 * 64)


def _nan_rank(rank: int, size: int, port: int, out) -> None:
    """A linear model trained on data with one NaN image, which lands in one rank's share of its batch."""
    torchrun_env(rank, size, port)
    from torch import nn

    from nas.data.dataset import Dataset
    from nas.train.engine import engine_for
    from nas.train.recipe import Recipe
    from nas.train.training import train_model

    engine = engine_for("cpu", "32", 1, 0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 4, 4, generator=g), torch.arange(64) % 2
    val = x[:8].clone()
    x[5] = float("nan")
    data = Dataset.from_tensors("nan", x, y, val, y[:8], val, y[:8], 2)
    torch.manual_seed(0)
    result = train_model(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), data, Recipe(epochs=2, batch_size=16),
                         engine=engine)
    torch.save({"state": result.model.state_dict(), "skipped": [r["skipped_steps"] for r in result.history]},
               out / f"nan{rank}.pt")
    end_rank()


def test_a_non_finite_loss_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    mp.spawn(_nan_rank, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"nan{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [1, 1]  # the batch with the NaN image, on both ranks
    assert all(torch.equal(ranks[0]["state"][k], ranks[1]["state"][k]) for k in ranks[0]["state"])
    assert all(torch.isfinite(w).all() for w in ranks[0]["state"].values())
