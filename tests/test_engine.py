"""The training engine: accelerators and precision, streamed folders, augmentation, bad input."""

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from nas.data.augment import augment_batch
from nas.data.dataset import Dataset, load_dataset
from nas.errors import AcceleratorError, DataError
from nas.models.onnx_io import export_onnx
from nas.train.accelerator import resolve_accelerator
from nas.train.engine import Engine, engine_for
from nas.train.recipe import Recipe
from nas.train.training import train_model


def tiny_data(n=60, classes=3, size=8) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, size, size, generator=g), torch.arange(n) % classes
    return Dataset.from_tensors("tiny", x, y, x[:12], y[:12], x[:12], y[:12], classes)


def png_folder(root, per_class=8, size=12, bad=0):
    from PIL import Image
    for label in range(2):
        d = root / f"class{label}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((size, size + 4, 3), i * 10 + label * 120, np.uint8)).save(d / f"{i}.png")
    for i in range(bad):
        (root / "class0" / f"broken{i}.png").write_bytes(b"not a png")
    return root


def test_bad_accelerator_precision_and_workers_are_one_line_errors():
    if not torch.cuda.is_available():
        with pytest.raises(AcceleratorError, match="no CUDA GPU"):
            resolve_accelerator("cuda")
    with pytest.raises(AcceleratorError, match="16-mixed needs a CUDA GPU"):
        resolve_accelerator("cpu", "16-mixed")
    with pytest.raises(AcceleratorError, match="--precision 'fp8'"):
        resolve_accelerator("cpu", "fp8")
    with pytest.raises(AcceleratorError, match="--loader-workers must be 0 or more"):
        engine_for("cpu", "32", 1, -1)
    assert resolve_accelerator("auto", "32", 3).threads == 3


def test_bf16_on_the_cpu_trains_and_exports(tmp_path):
    engine = Engine(resolve_accelerator("cpu", "bf16", 1))
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    result = train_model(model, tiny_data(), Recipe(epochs=2, batch_size=16), engine=engine)
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["train_loss"])
    path = export_onnx(result.model, (1, 8, 8), tmp_path / "m.onnx", normalization={"mean": [0.5], "std": [0.2]})
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["normalization_mean"]) == [0.5] and json.loads(props["normalization_std"]) == [0.2]


def test_a_streamed_folder_trains_through_two_workers(tmp_path):
    data = load_dataset(f"folder:{png_folder(tmp_path / 'imgs')}", resolution=8)
    assert data.in_channels == 3 and len(data.mean) == 3 and sum(data.sizes().values()) == 16
    assert not hasattr(data.train, "x")  # decoded when read, not held
    engine = Engine(resolve_accelerator("cpu", "32", 1), workers=2)
    batches = list(engine.batches(data.train, 4, torch.Generator().manual_seed(0)))
    assert sum(len(y) for _, y in batches) == len(data.train) and batches[0][0].shape[1:] == (3, 8, 8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 2))
    result = train_model(model, data, Recipe(epochs=1, batch_size=4, augment="standard"), engine=engine)
    assert np.isfinite(result.history[0]["train_loss"])


def test_a_folder_with_unreadable_images_is_refused_unless_skipped(tmp_path):
    root = png_folder(tmp_path / "imgs", bad=2)
    with pytest.raises(DataError, match=r"2 of 18 images cannot be read \(e.g. .*broken0.png\).*--skip-bad-images"):
        load_dataset(f"folder:{root}", resolution=8)
    assert sum(load_dataset(f"folder:{root}", resolution=8, skip_bad_images=True).sizes().values()) == 16


def test_augmentation_is_deterministic_for_a_seed():
    x = torch.randn(6, 3, 16, 16)
    a = augment_batch(x, "standard", torch.Generator().manual_seed(4))
    b = augment_batch(x, "standard", torch.Generator().manual_seed(4))
    c = augment_batch(x, "standard", torch.Generator().manual_seed(5))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(augment_batch(x, "none", torch.Generator()), x)


def test_resume_with_another_world_size_or_accelerator_is_an_error(tmp_path):
    from nas.errors import TrainingError
    ckpt = tmp_path / "ckpt.pt"
    recipe = Recipe(epochs=1, batch_size=16)
    train_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), tiny_data(), recipe, checkpoint=ckpt)
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "world_size": 2}, ckpt)
    with pytest.raises(TrainingError, match="saved by 2 processes, resumed with 1"):
        train_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), tiny_data(), recipe.model_copy(
            update={"epochs": 2}), checkpoint=ckpt)
    torch.save({**state, "accelerator": "cuda"}, ckpt)
    with pytest.raises(TrainingError, match="saved training on cuda, resumed on cpu"):
        train_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), tiny_data(), recipe.model_copy(
            update={"epochs": 2}), checkpoint=ckpt)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_trains_with_bf16_and_the_model_comes_back_on_the_cpu():
    engine = Engine(resolve_accelerator("cuda", "bf16", 1))
    result = train_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), tiny_data(), Recipe(epochs=1, batch_size=16),
                         engine=engine)
    assert next(result.model.parameters()).device.type == "cpu"


def test_resume_through_the_dataloader_sees_the_same_batches_as_an_uninterrupted_run(tmp_path):
    data = load_dataset(f"folder:{png_folder(tmp_path / 'imgs')}", resolution=8)
    recipe = Recipe(epochs=3, batch_size=4, augment="standard", mixup=0.2)

    def run(checkpoint=None, on_epoch=None):
        engine = Engine(resolve_accelerator("cpu", "32", 1), workers=2)
        seen = []
        batches = engine.batches
        engine.batches = lambda *a, **k: (seen.append(y.tolist()) or (x, y) for x, y in batches(*a, **k))
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(3 * 64, 2))
        return train_model(model, data, recipe, engine=engine, checkpoint=checkpoint, on_epoch=on_epoch), seen

    full, full_batches = run()

    def interrupt(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "ckpt.pt", interrupt)
    resumed, resumed_batches = run(tmp_path / "ckpt.pt")
    per_epoch = len(full_batches) // 3
    assert resumed_batches == full_batches[2 * per_epoch:]  # the third epoch's batches, in the same order
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in full.history])
    assert all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(),
                                                   resumed.model.state_dict().values()))


@pytest.mark.parametrize("args, message", [
    (["--accelerator", "cuda"], "no CUDA GPU"),
    (["--precision", "16-mixed", "--accelerator", "cpu"], "16-mixed needs a CUDA GPU"),
    (["--loader-workers", "-1"], "--loader-workers must be 0 or more"),
    (["--dataset", "folder:BAD"], "1 of 17 images cannot be read"),
])
def test_bad_training_input_is_one_line_exit_2_and_nothing_written(cli, tmp_path, args, message):
    if args[:2] == ["--accelerator", "cuda"] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    if args[-1] == "folder:BAD":
        args = ["--dataset", f"folder:{png_folder(tmp_path / 'imgs', bad=1)}"]
    r = cli("train", "fbnet_a", "--width", "0.25", "--epochs", "1", *args, "--out", str(tmp_path / "run"))
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert not (tmp_path / "run").exists()
