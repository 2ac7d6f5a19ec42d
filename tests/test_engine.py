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


# ---- the one training loop: the non-finite-loss policy, the loss scaler's checkpoint, several step kinds ---------
def nan_image_data(n=60, classes=3, size=8, bad=(5,)) -> Dataset:
    """``tiny_data`` whose train split holds NaN images at ``bad`` (validation and test are clean)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, size, size, generator=g), torch.arange(n) % classes
    clean = x[:12].clone()
    for i in bad:
        x[i] = float("nan")
    return Dataset.from_tensors("tiny", x, y, clean, y[:12], clean, y[:12], classes)


def test_a_non_finite_loss_skips_its_step_counts_it_and_training_goes_on(tmp_path):
    """The documented policy (nas.train.engine): the batch holding a NaN image is skipped (no optimiser step, the
    schedule advances), counted in the epoch's skipped_steps, and the other steps train."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    initial = model[1].weight.detach().clone()
    result = train_model(model, nan_image_data(), Recipe(epochs=3, batch_size=16), checkpoint=tmp_path / "c.pt")
    assert [row["skipped_steps"] for row in result.history] == [1, 1, 1]  # one batch of four each epoch
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    assert all(torch.isfinite(p).all() for p in result.model.parameters())
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert int(state["optimizer"]["state"][0]["step"]) == 3 * 4 - 3  # the skipped steps were not applied
    assert state["scheduler"]["last_epoch"] == 3 * 4  # ... but the schedule kept pace with the batches
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]  # the other steps trained
    assert not torch.allclose(result.model[1].weight, initial, atol=1e-3)


def test_training_stops_after_three_non_finite_steps_in_a_row_or_an_epoch_without_a_finite_one():
    from nas.errors import TrainingError
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        model[1].weight[0, 0] = float("inf")  # every loss is NaN from the first step
    with pytest.raises(TrainingError, match=r"became nan in epoch 1 \(3 steps in a row not finite, skipped"):
        train_model(model, tiny_data(), Recipe(epochs=2, batch_size=16))  # four steps an epoch
    with pytest.raises(TrainingError, match="not finite at any of the 2 steps of epoch 1"):
        train_model(model, tiny_data(n=30), Recipe(epochs=2, batch_size=16))  # two steps an epoch


@pytest.mark.parametrize("kind, precision", [("cpu", "32"), ("cuda", "16-mixed")])
def test_a_checkpoint_under_loss_scaling_resumes_with_the_scalers_state(tmp_path, kind, precision):
    """16-mixed's GradScaler (on the CPU too), on a fake scale near float32's limit: it grows every step until the
    scaled gradients overflow, then skips that optimiser step and backs off, so which steps apply depends on its
    state. A run interrupted after epoch 2 resumes with the saved scale and ends where the uninterrupted run ends."""
    if kind == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (the CPU case runs the same scaler)")

    def run(checkpoint=None, on_epoch=None):
        engine = Engine(resolve_accelerator(kind, precision, 1))
        engine.scaler = torch.amp.GradScaler(kind, init_scale=2.0 ** 120, growth_interval=1)
        data = tiny_data()
        data.train.x = data.train.x * 10  # gradients large enough to overflow at the largest scales
        torch.manual_seed(0)
        result = train_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), data, Recipe(epochs=4, batch_size=16),
                             engine=engine, checkpoint=checkpoint, on_epoch=on_epoch)
        return result, engine.scaler

    full, full_scaler = run(tmp_path / "full.pt")
    applied = int(torch.load(tmp_path / "full.pt", weights_only=True)["optimizer"]["state"][0]["step"])
    assert 0 < applied < 4 * 4  # the scaler did skip steps: the test exercises it

    def interrupt(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "ckpt.pt", interrupt)
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)["grad_scaler"]
    assert saved["scale"] != 2.0 ** 120
    resumed, resumed_scaler = run(tmp_path / "ckpt.pt")
    assert resumed_scaler.state_dict() == full_scaler.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()))
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]


def test_two_kinds_of_step_on_every_batch_each_with_its_optimiser_and_frozen_parameters():
    """A DARTS-style pass: on every batch a weight step, then an architecture step with the weights frozen."""
    from nas.train.engine import OptimizerStep
    data = tiny_data()
    weights = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    temperature = nn.Parameter(torch.ones(()))
    w_opt = torch.optim.SGD(weights.parameters(), lr=0.1)
    a_opt = torch.optim.Adam([temperature], lr=0.1)
    trainable = {"weight": [], "arch": []}  # whether the weights took gradients, per step

    def weight_loss(x, y):
        trainable["weight"].append(weights[1].weight.requires_grad)
        loss = nn.functional.cross_entropy(weights(x) / temperature.detach(), y)
        return loss, {"train_loss": loss.item() * len(y)}

    def arch_loss(x, y):
        trainable["arch"].append(weights[1].weight.requires_grad)
        loss = nn.functional.cross_entropy(weights(x) / temperature, y)
        return loss, {"arch_loss": loss.item() * len(y)}

    engine = Engine(resolve_accelerator("cpu", "32", 1))
    before = weights[1].weight.detach().clone()
    figures = engine.train_pass(data.train, 16, torch.Generator().manual_seed(0), [
        OptimizerStep(weight_loss, w_opt), OptimizerStep(arch_loss, a_opt, frozen=list(weights.parameters()))])
    assert set(figures) == {"train_loss", "arch_loss"} and figures.samples == len(data.train)
    assert trainable == {"weight": [True] * 4, "arch": [False] * 4}  # frozen in the architecture steps alone
    assert all(p.requires_grad for p in weights.parameters())  # and trainable again after the pass
    assert not torch.equal(weights[1].weight, before) and float(temperature) != 1.0  # both trained
    assert int(a_opt.state[temperature]["step"]) == 4  # one architecture step per batch


def test_dataloader_workers_persist_across_epochs_and_evaluation():
    """Every pass over a streamed split (training epochs, evaluation) is served by the same two worker processes."""
    from nas.data.splits import Split
    from nas.train.evaluation import split_accuracy

    class WhoDecoded(Split):
        """Images whose first pixel is the id of the process that decoded them."""

        def __init__(self, n: int):
            self.labels = torch.arange(n) % 2

        def __getitem__(self, i):
            import os
            x = torch.zeros(1, 4, 4)
            x[0, 0, 0] = os.getpid()
            return x, self.labels[i]

    split = WhoDecoded(24)
    engine = Engine(resolve_accelerator("cpu", "32", 1), workers=2)
    pids = set()
    for epoch in range(3):
        for x, _ in engine.batches(split, 4, torch.Generator().manual_seed(epoch)):
            pids.update(int(v) for v in x[:, 0, 0, 0])

    class Probe(nn.Module):
        def forward(self, x):
            pids.update(int(v) for v in x[:, 0, 0, 0])
            return torch.zeros(len(x), 2)

    split_accuracy(Probe(), split, engine, batch_size=4)
    assert len(pids) == 2  # the two workers of the first pass, no others
    import os
    assert os.getpid() not in pids
