"""Evaluation streams: accuracies, ONNX parity and calibration samples read a split batch by batch (or only the
images they need), never decode it whole, and give the figures the same data gives in memory."""

import dataclasses
import itertools

import numpy as np
import torch
from test_dnas_support import FAST
from torch import nn

from nas.arch.space import load_space
from nas.data.dataset import load_dataset
from nas.data.splits import Normalised, Split, TensorSplit
from nas.latency.device import Device
from nas.latency.measurement import MeasuringDevice
from nas.models.onnx_io import export_onnx, run_onnx
from nas.run import RunDir
from nas.search.capacity.evaluate import calibration_images
from nas.search.finalize import train_export_measure
from nas.train.accelerator import resolve_accelerator
from nas.train.engine import Engine
from nas.train.evaluation import split_accuracy, split_parity
from nas.train.recipe import Recipe


class StreamedSplit(Split):
    """Images served one at a time, as a ``folder:`` or ``npz:`` split serves them, counting every read; decoding
    it whole (``tensors``) is an error."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.labels, self.reads = x, y, 0

    def __getitem__(self, i: int):
        self.reads += 1
        return self.x[i], self.labels[i]

    def tensors(self):
        raise AssertionError("the whole split was decoded")


class ReadsAtForward(nn.Module):
    """``model``, recording at every forward pass how many images ``split`` had decoded and the batch size."""

    def __init__(self, model: nn.Module, split: StreamedSplit):
        super().__init__()
        self.model, self.split, self.seen = model, split, []

    def forward(self, x):
        self.seen.append((self.split.reads, len(x)))
        return self.model(x)


def centroid_classifier(split: Split, classes: int = 10) -> nn.Module:
    """Nearest class mean as a linear layer: a deterministic, accurate model without training."""
    x, y = split.tensors()
    flat = x.flatten(1)
    means = torch.stack([flat[y == c].mean(0) for c in range(classes)])
    linear = nn.Linear(flat.shape[1], classes)
    with torch.no_grad():
        linear.weight.copy_(means)
        linear.bias.copy_(-0.5 * (means * means).sum(1))
    return nn.Sequential(nn.Flatten(), linear).eval()


def digits16():
    return load_dataset("digits", resolution=16, seed=0)


def test_accuracy_reads_a_streamed_split_one_batch_at_a_time():
    data = digits16()
    model = centroid_classifier(data.train)
    x, y = data.test.tensors()
    streamed = StreamedSplit(x, y)
    probe = ReadsAtForward(model, streamed)
    accuracy = split_accuracy(probe, streamed, batch_size=64)
    assert accuracy == split_accuracy(model, TensorSplit(x, y), batch_size=64) > 0.8  # chance is 0.1
    sizes = [n for _, n in probe.seen]
    assert sizes == [64] * 5 + [40] and streamed.reads == len(y) == 360  # every image read once
    # when the model runs on a batch, only the batches up to it have been decoded
    assert [reads for reads, _ in probe.seen] == list(itertools.accumulate(sizes))


def test_onnx_parity_is_one_streamed_pass_with_the_in_memory_figures(tmp_path):
    data = digits16()
    model = centroid_classifier(data.train)
    path = export_onnx(model, (1, 16, 16), tmp_path / "m.onnx")
    x, y = data.test.tensors()
    streamed = StreamedSplit(x, y)
    probe = ReadsAtForward(model, streamed)
    parity = split_parity(probe, {"m": path}, streamed, batch_size=100)
    assert parity == split_parity(model, {"m": path}, data.test, batch_size=100)  # as in memory
    assert streamed.reads == len(y) and max(n for _, n in probe.seen) == 100  # torch and ONNX read each batch once
    figures = parity.files["m"]
    assert figures["onnx_max_abs_diff"] < 1e-3 and figures["onnx_top1_agreement"] == 1.0  # logits in the hundreds
    assert figures["accuracy_onnx"] == parity.accuracy == split_accuracy(model, data.test, batch_size=100) > 0.8


def test_an_npz_split_streams_through_dataloader_workers_with_the_in_memory_accuracy(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits
    digits = load_digits()
    np.savez(tmp_path / "digits.npz", x=(digits.images / 16.0).astype(np.float32), y=digits.target)
    data = load_dataset(f"npz:{tmp_path / 'digits.npz'}", resolution=16, seed=0)
    assert isinstance(data.test, Normalised)  # read from the file, normalised as read
    model = centroid_classifier(data.train)
    in_memory = split_accuracy(model, TensorSplit(*data.test.tensors()), batch_size=64)

    def decoded_whole(self):
        raise AssertionError("the whole split was decoded")

    monkeypatch.setattr(Normalised, "tensors", decoded_whole)
    engine = Engine(resolve_accelerator("cpu", "32", 1), workers=2)
    assert split_accuracy(model, data.test, engine, batch_size=64) == in_memory > 0.8


def test_training_evaluates_in_batches_of_its_own_batch_size():
    """Validation reads the split in the recipe's batches (never more images at once than a training step holds),
    so the memory of evaluation does not grow with the split."""
    from nas.train.training import train_model
    data = digits16()
    val = StreamedSplit(*data.val.tensors())
    data = dataclasses.replace(data, train=TensorSplit(data.train.first(64), data.y_train[:64]), val=val)
    probe = ReadsAtForward(nn.Sequential(nn.Flatten(), nn.Linear(256, 10)), val)
    train_model(probe, data, Recipe(epochs=1, batch_size=16))
    assert val.reads == len(val) == 360 and max(n for _, n in probe.seen) == 16


def test_calibration_decodes_only_its_images():
    data = digits16()
    x, y = data.train.tensors()
    train = StreamedSplit(x, y)
    images = calibration_images(dataclasses.replace(data, train=train), 32)
    assert torch.equal(images, x[:32]) and train.reads == 32


def test_finalize_reports_accuracy_and_parity_of_a_streamed_test_split(tmp_path, monkeypatch):
    data = digits16()
    x_test, y_test = data.test.tensors()
    test = StreamedSplit(x_test, y_test)
    data = dataclasses.replace(data, train=TensorSplit(data.train.first(64), data.y_train[:64]), test=test)
    space = load_space("fbnet_a", resolution=16, width_multiplier=0.25, classes=10, in_channels=1)
    real_time_file = Device.time_file
    monkeypatch.setattr(Device, "time_file", lambda self, path, timing=None: real_time_file(self, path, FAST))
    run = RunDir(tmp_path / "run", {"test": "streamed evaluation"})
    report = train_export_measure(space, space.fixed_arch(), data, Recipe(epochs=1, batch_size=64), run,
                                  measure_on=MeasuringDevice(Device()))
    assert test.reads == len(y_test)  # one pass: torch and ONNX Runtime share every decoded batch
    in_memory = float((run_onnx(run.file("model.onnx"), x_test).argmax(1) == y_test.numpy()).mean())
    assert report["accuracy_onnx"] == in_memory
    assert report["onnx_max_abs_diff"] < 1e-4 and abs(report["accuracy"] - report["accuracy_onnx"]) <= 0.01
