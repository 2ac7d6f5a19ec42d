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


def test_dataset_too_small_for_split(tmp_path):
    np.savez(tmp_path / "tiny.npz", x=np.zeros((6, 8, 8)), y=np.array([0, 0, 0, 1, 1, 1]))
    with pytest.raises(DataError, match="too small for a train/val/test split"):
        load_dataset(f"npz:{tmp_path / 'tiny.npz'}")
    np.savez(tmp_path / "pickled.npz", x=np.array([object()]), y=np.array([0]))
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(f"npz:{tmp_path / 'pickled.npz'}")
