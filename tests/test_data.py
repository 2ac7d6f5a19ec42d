from pathlib import Path

import numpy as np
import pytest
import torch

from nas.data.dataset import load_dataset
from nas.errors import DataError


def test_digits_split_is_deterministic_and_stratified():
    a = load_dataset("digits", seed=1)
    b = load_dataset("digits", seed=1)
    c = load_dataset("digits", seed=2)
    assert a.sizes() == {"train": 1077, "val": 360, "test": 360}
    assert torch.equal(a.y_test, b.y_test) and not torch.equal(a.y_test, c.y_test)
    x_train = a.train.tensors()[0]
    assert x_train.shape[1:] == (1, 32, 32)  # 8x8 digits upsampled to the default minimum
    assert set(torch.bincount(a.y_test).tolist()) <= {35, 36, 37}
    assert abs(float(x_train.mean())) < 0.05


def test_npz_layouts(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    for name, x in {"nhw": rng.random((30, 12, 12)), "nchw": rng.random((30, 3, 12, 12)),
                    "nhwc": rng.random((30, 12, 12, 3))}.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        data = load_dataset(f"npz:{tmp_path / name}.npz", resolution=16)
        assert data.train.first(1).shape[1:] == ((1,) if name == "nhw" else (3,)) + (16, 16)
        assert data.classes == 3


def test_npz_images_are_read_from_the_file_as_stored_and_never_mapped(tmp_path):
    """Every layout (and a Fortran-ordered array) reads back the stored values; a C-ordered file is read with pread,
    so after a whole pass nothing of it is mapped into the process (a map's touched pages stay resident)."""
    from nas.data.npz_cache import open_arrays
    rng = np.random.default_rng(0)
    for name, x in {"nhw": rng.random((30, 12, 12)), "nchw": (rng.random((30, 3, 12, 12)) * 255).astype(np.uint8),
                    "nhwc": rng.random((30, 12, 12, 3)).astype(np.float32),
                    "fortran": np.asfortranarray(rng.random((30, 3, 12, 12)))}.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=np.repeat(np.arange(3), 10))
        rows, y, scale = open_arrays(tmp_path / f"{name}.npz")
        expected = x[:, None] if name == "nhw" else x.transpose(0, 3, 1, 2) if name == "nhwc" else x
        assert rows.shape == expected.shape and scale == (1 / 255.0 if name == "nchw" else 1.0)
        assert all(np.array_equal(rows[i], expected[i]) for i in range(30))
        assert np.array_equal(rows.read(7, 19), expected[7:19])
    if Path("/proc/self/maps").exists():
        data = load_dataset(f"npz:{tmp_path / 'nchw.npz'}", resolution=16)
        for split in (data.train, data.val, data.test):
            _ = [split[i] for i in range(len(split))]
        assert "nchw.npz.npy" not in Path("/proc/self/maps").read_text()


def test_normalisation_statistics_of_a_sample_read_in_chunks_equal_the_whole_sample():
    from nas.data.splits import STATISTICS_CHUNK, TensorSplit, channel_statistics
    x = torch.rand(3 * STATISTICS_CHUNK + 5, 3, 6, 6, dtype=torch.float64) * 0.1 + torch.tensor([3.0, 0.5, 0.0]).view(
        1, 3, 1, 1)
    mean, std = channel_statistics(TensorSplit(x, torch.zeros(len(x))), sample=len(x))
    assert np.allclose(mean, x.mean(dim=(0, 2, 3)).tolist(), rtol=1e-12)
    assert np.allclose(std, x.std(dim=(0, 2, 3)).tolist(), rtol=1e-9)


def test_folder_dataset(tmp_path):
    from PIL import Image
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(6):
            Image.fromarray(np.full((10, 10, 3), i * 20 + (label == "dog") * 100, np.uint8)).save(
                tmp_path / label / f"{i}.png")
    data = load_dataset(f"folder:{tmp_path}", resolution=8)
    assert data.classes == 2 and data.in_channels == 3 and sum(data.sizes().values()) == 12


@pytest.mark.parametrize("spec, message", [
    ("npz:/no/such/file.npz", "dataset file not found"),
    ("folder:/no/such/dir", "dataset folder not found"),
    ("mnist", "unknown dataset 'mnist'"),
])
def test_bad_datasets(spec, message):
    with pytest.raises(DataError, match=message):
        load_dataset(spec)


def test_a_negative_split_seed_is_named_not_taken_for_a_small_dataset():
    with pytest.raises(DataError, match="the data split's seed must be 0 .. 2\\*\\*32 - 1, got -1"):
        load_dataset("digits", seed=-1)


def test_dataset_too_small_for_split(tmp_path):
    np.savez(tmp_path / "tiny.npz", x=np.zeros((6, 8, 8)), y=np.array([0, 0, 0, 1, 1, 1]))
    with pytest.raises(DataError, match="too small for a train/val/test split"):
        load_dataset(f"npz:{tmp_path / 'tiny.npz'}")
    np.savez(tmp_path / "pickled.npz", x=np.array([object()]), y=np.array([0]))
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'pickled.npz'}")
