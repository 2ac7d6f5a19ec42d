"""A model that does not fit its data warns (issue 17, part 4); folder: data loads at the images' own size."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from nas.arch.space import arch_document, load_space
from nas.data.dataset import load_dataset
from nas.data.mismatch import mismatch_warnings


def image_folder(root, size: int, per_class: int) -> str:
    """A ``folder:`` dataset of two classes of random ``size`` x ``size`` colour images."""
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (root / label).mkdir()
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / label / f"{i}.png")
    return f"folder:{root}"


def test_a_224px_3_channel_arch_on_8px_grey_digits_warns_twice(tmp_path):
    space = load_space("fbnet", resolution=224)
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(arch_document(space, space.sample(np.random.default_rng(0)))))
    data = load_dataset("digits", resolution=224)
    fitted = load_space("fbnet", resolution=224, in_channels=1, classes=10)
    warnings = mismatch_warnings(data, fitted, str(arch))
    assert len(warnings) == 2
    assert "224 px" in warnings[0] and "8 px" in warnings[0] and "--resolution 32" in warnings[0]
    assert "3-channel" in warnings[1]


def test_a_model_at_the_datas_own_size_does_not_warn():
    data = load_dataset("digits")
    assert mismatch_warnings(data, load_space("fbnet", resolution=data.resolution, in_channels=1)) == []
    assert mismatch_warnings(data, load_space("fbnet", resolution=48, in_channels=1)) == []  # within 2x
    native = load_space("fbnet", resolution=data.native_resolution, in_channels=1)  # 8 px: nothing is resized
    assert mismatch_warnings(data, native) == []


def test_a_model_far_below_the_images_size_warns_that_it_loses_detail(tmp_path):
    data = load_dataset(image_folder(tmp_path, 96, per_class=6))
    (warning,) = mismatch_warnings(data, load_space("fbnet", resolution=32))
    assert "96 px" in warning and "shrinking them 0.33x loses detail" in warning and "--resolution 96" in warning


def test_folder_data_defaults_to_the_images_own_size(tmp_path):
    data = load_dataset(image_folder(tmp_path, 48, per_class=8))
    assert data.resolution == 48 and data.native_resolution == 48
