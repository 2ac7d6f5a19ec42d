"""Issue 28, items 6 and 7: bad data is found when the dataset is opened (one line naming the file), not
mid-training: truncated JPEGs, huge first images, empty class folders; npz labels out of range or huge, label
headers that claim more than the file holds, caches that do not fit the disk, and ambiguous array layouts."""

import shutil
import tracemalloc
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import nas.data.dataset
from nas.data.dataset import load_dataset, readable_image
from nas.data.splits import ImageFolderSplit
from nas.train.loader import SplitLoader
from nas.errors import DataError
from nas.data.npz_cache import cache_folder

Usage = namedtuple("Usage", "total used free")


def image_folder(root: Path, classes=("a", "b"), n=8, size=(40, 40), suffix=".jpg") -> Path:
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = (np.random.default_rng(i).random((size[1], size[0], 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}{suffix}")
    return root


def truncate(path: Path) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[:len(raw) // 2])
    return path


# ---- 6. image folders --------------------------------------------------------------------------------------------
def test_a_truncated_jpeg_is_found_when_the_folder_is_listed(tmp_path):
    root = image_folder(tmp_path / "imgs")
    broken = truncate(root / "a" / "3.jpg")
    assert not readable_image(broken) and readable_image(root / "a" / "4.jpg")
    with pytest.raises(DataError, match=rf"1 of 16 images cannot be read \(e.g. {broken}\).*--skip-bad-images"):
        load_dataset(f"folder:{root}")
    data = load_dataset(f"folder:{root}", skip_bad_images=True)
    assert sum(data.sizes().values()) == 15
    assert broken not in data.train.base.files + data.val.base.files + data.test.base.files


def test_an_image_that_fails_to_decode_mid_epoch_is_one_line_naming_it(tmp_path):
    root = image_folder(tmp_path / "imgs", classes=("a",), n=3)
    broken = truncate(root / "a" / "1.jpg")
    split = ImageFolderSplit(sorted((root / "a").iterdir()), np.zeros(3, int), 32)
    for workers in (0, 1):  # in this process, and re-raised from a DataLoader worker process
        with pytest.raises(DataError) as e:
            list(SplitLoader(split, workers=workers).batches(3))
        message = str(e.value)
        assert message.startswith(f"{broken}: cannot decode this image (") and "\n" not in message, message
        assert "Traceback" not in message


def test_a_huge_first_image_asks_for_a_resolution_instead_of_allocating_it(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "imgs", n=6, suffix=".png")
    Image.new("RGB", (100_000, 4)).save(root / "a" / "0.png")  # the first image, sorted
    monkeypatch.setattr(nas.data.dataset, "channel_statistics", lambda *a, **k: pytest.fail("decoded at 100000 px"))
    with pytest.raises(DataError, match=r"0.png\) is 100000 x 4 px, more than the 1024 px .* pass --resolution"):
        load_dataset(f"folder:{root}")
    with pytest.raises(DataError, match="resolution 100000 px is above the 4096 px"):
        load_dataset(f"folder:{root}", resolution=100_000)


def test_a_class_folder_without_images_is_an_error_naming_it(tmp_path):
    root = image_folder(tmp_path / "imgs", n=6)
    (root / "zebra").mkdir()  # sorted last: its label would have been dropped without a word
    (root / "zebra" / "notes.txt").write_text("todo")
    with pytest.raises(DataError, match=r"class folder zebra holds no images \(1 of 3 classes\)"):
        load_dataset(f"folder:{root}")
    (root / "zebra" / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"zebra \(its images cannot be read\) holds no images"):
        load_dataset(f"folder:{root}", skip_bad_images=True)
    shutil.rmtree(root / "zebra")
    (root / ".ipynb_checkpoints").mkdir()  # a hidden folder is not a class
    assert load_dataset(f"folder:{root}").classes == 2


# ---- 7. npz arrays -----------------------------------------------------------------------------------------------
def images(n=60, shape=(8, 8)) -> np.ndarray:
    return np.random.default_rng(0).random((n, *shape)).astype(np.float32)


def test_negative_labels_are_a_data_error(tmp_path):
    np.savez(tmp_path / "d.npz", x=images(), y=np.arange(60) % 3 - 1)
    with pytest.raises(DataError, match=r"labels must be 0..K-1 .*from -1 to 1 over 60 samples"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_huge_labels_are_refused_before_anything_is_allocated_for_them(tmp_path):
    np.savez(tmp_path / "d.npz", x=images(), y=(np.arange(60) % 3) * 100_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=r"from 0 to 200000000 over 60 samples"):
            load_dataset(f"npz:{tmp_path / 'd.npz'}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, peak  # counting classes up to the largest label would take 1.6 GB


def _lying_labels(path: Path, claimed: int) -> None:
    """A y.npy whose header claims ``claimed`` labels; the file holds 60."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (claimed,)})
        f.write((np.arange(60) % 3).astype("<i8").tobytes())


def test_a_label_header_claiming_a_trillion_entries_allocates_nothing(tmp_path):
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "x.npy", images())
    _lying_labels(folder / "y.npy", 10 ** 12)
    with pytest.raises(DataError, match="not a readable .npz file"):
        load_dataset(f"npz:{folder}")
    x = images()
    with open(tmp_path / "x.npy", "wb") as f:
        np.save(f, x)
    _lying_labels(tmp_path / "y.npy", 10 ** 12)
    import zipfile
    with zipfile.ZipFile(tmp_path / "d.npz", "w") as z:
        z.write(tmp_path / "x.npy", "x.npy")
        z.write(tmp_path / "y.npy", "y.npy")
    with pytest.raises(DataError, match=r"not a readable .npz file \(array 'y' declares shape \(1000000000000,\)"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert not cache_folder(tmp_path / "d.npz").exists()  # checked before extracting anything


def test_an_npz_whose_cache_does_not_fit_the_disk_is_refused_before_extracting(tmp_path, monkeypatch):
    np.savez_compressed(tmp_path / "d.npz", x=np.zeros((600, 64, 64), np.float32), y=np.arange(600) % 3)
    assert (tmp_path / "d.npz").stat().st_size < 100_000  # 9.8 MB of zeros, compressed
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10 ** 9, 10 ** 9 - 50_000_000, 50_000_000))
    with pytest.raises(DataError, match=r"memory-map cache .* needs 9.8 MB \(the arrays uncompressed\) and 50.0 MB "
                                        r"are free"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert not cache_folder(tmp_path / "d.npz").exists()
    monkeypatch.undo()
    assert load_dataset(f"npz:{tmp_path / 'd.npz'}").sizes()["train"] == 360  # with room, it extracts


def test_channels_last_arrays_with_few_channels_are_read_as_such(tmp_path):
    np.savez(tmp_path / "d.npz", x=images(shape=(8, 8, 2)), y=np.arange(60) % 3)
    data = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert data.in_channels == 2 and data.native_resolution == 8  # not 8 channels of 8 x 2 images
    np.savez(tmp_path / "e.npz", x=images(shape=(3, 8, 8)), y=np.arange(60) % 3)
    assert load_dataset(f"npz:{tmp_path / 'e.npz'}").in_channels == 3
    np.savez(tmp_path / "f.npz", x=images(shape=(16, 24, 3)), y=np.arange(60) % 3)  # non-square, channels last
    assert load_dataset(f"npz:{tmp_path / 'f.npz'}").in_channels == 3
    np.savez(tmp_path / "g.npz", x=images(shape=(2, 5, 3)), y=np.arange(60) % 3)
    with pytest.raises(DataError, match=r"shape \(60, 2, 5, 3\): neither N x C x H x W nor N x H x W x C is clear"):
        load_dataset(f"npz:{tmp_path / 'g.npz'}")
