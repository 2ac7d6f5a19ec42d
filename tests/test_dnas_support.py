"""Shared helpers of the DNAS / DMasking tests: tiny spaces and a really profiled tiny latency table."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from nas.arch.space import Arch, Space, load_space
from nas.latency.device import Device
from nas.latency.model import LatencyModel
from nas.latency.profile import profile_items, space_profile_items
from nas.latency.timing import TimingConfig

FAST = TimingConfig(warmup=2, round_ms=1.0, min_runs=3, max_runs=10, min_rounds=2, max_rounds=3, max_seconds=0.2)

TINY_V2 = """
name: tiny_v2
resolution: 16
in_channels: 1
classes: 10
stem: [conv_k3, 8, 2]
candidates: [ir_k3_e1, ir_k3_e1_g2, ir_k3_e3, skip]
stages:
  - {channels: 16, repeat: 1, stride: 1}
  - {channels: 32, repeat: 2, stride: 2}
channel_options: [0.5, 1.0]
resolution_options: [12, 16]
head: [conv_k1, 32]
dropout: 0.0
"""

TINY = """
name: tiny
resolution: 16
in_channels: 1
classes: 10
stem: [conv_k3, 8, 2]
candidates: [ir_k3_e1, ir_k3_e1_g2, ir_k5_e3, skip]
stages:
  - {channels: 8, repeat: 1, stride: 1}
  - {channels: 16, repeat: 2, stride: 2}
head: [conv_k1, 32]
dropout: 0.0
"""


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One PyTorch thread, as the speed fixture of these tests (tiny models: more threads only contend on a shared machine)."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_TABLES: dict[tuple[str, str], tuple[Path, Path, LatencyModel]] = {}


def profiled_space(tmp_path_factory, text: str, name: str, device: str) -> tuple[Path, Path, LatencyModel]:
    """(space YAML, tables folder, LatencyModel) of a tiny space, profiled once per test session."""
    key = (text, device)
    if key not in _TABLES:
        folder = tmp_path_factory.mktemp(name)
        path = write_space(folder, text, name)
        _TABLES[key] = (path, folder / "tables", profile_tiny(tiny_space(path), device, folder / "tables"))
    return _TABLES[key]


def digits_npz(folder: Path, n: int = 480, seed: int = 0) -> Path:
    """A stratified ``n``-image subset of sklearn's digits as ``npz:`` data (small, so that searches are quick)."""
    from sklearn.datasets import load_digits
    d = load_digits()
    order = np.random.default_rng(seed).permutation(len(d.target))
    keep = np.sort(np.concatenate([order[d.target[order] == c][:n // 10] for c in range(10)]))
    path = folder / f"digits{n}.npz"
    if not path.is_file():
        np.savez(path, x=d.images[keep].astype(np.float32) / 16.0, y=d.target[keep].astype(np.int64))
    return path


def write_space(folder: Path, text: str, name: str) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def tiny_space(path: Path, **args) -> Space:
    return load_space(str(path), **{"resolution": 16, "classes": 10, "in_channels": 1, **args})


def profile_tiny(space: Space, device: str, tables: Path) -> LatencyModel:
    """Measure every key of ``space`` (fast timing) into ``tables``; no whole-model calibration."""
    profile_items(Device(device_id=device), space_profile_items(space), tables_dir=tables, timing=FAST)
    return LatencyModel.load(device, tables)


def all_archs(space: Space) -> list[Arch]:
    """Every arch of a (tiny) space."""
    ops = [layer.candidates for layer in space.layers]
    channels = [s.channel_options for s in space.stages] if space.searches_channels else [[None]]
    resolutions = space.resolution_options if space.searches_resolution else [None]
    out = []
    for o in itertools.product(*ops):
        for c in itertools.product(*channels):
            for r in resolutions:
                out.append(Arch(space.name, tuple(o), None if c == (None,) else tuple(c), r))
    return out


def arch_log_prob(dist, arch: Arch) -> float:
    ops, channels, res = dist.indices(arch)
    lp_ops, lp_ch, lp_res = dist.log_probs()
    return float(sum(lp[i] for lp, i in zip(lp_ops, ops)) + sum(lp[i] for lp, i in zip(lp_ch, channels))
                 + lp_res[res])


def randomize_bn(model, seed: int = 0) -> None:
    import torch
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
