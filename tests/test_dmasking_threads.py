"""Searches and trainings on several torch threads: the strided 1x1 convolution that corrupted the heap.

oneDNN's multi-threaded weight gradient of a strided 1x1 convolution (channels-last input, < 16 channels, an odd
batch) writes past its buffers in this torch build (``nas.models.conv``). A DMasking search hits it in the ``skip`` op
of a down-sampling layer on the last, partial batch of an epoch. These runs crash within a few steps without the
work-around, so they run in a subprocess, and the test asserts that it exits cleanly.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F

from nas.models.blocks import ConvBNReLU
from nas.models.conv import Conv2d, conv2d
from nas.models.onnx_io import export_onnx

# a space whose down-sampling layers have a strided 1x1 skip conv of 8 channels
STRIDED_SKIP = """
name: strided_skip
resolution: 16
in_channels: 1
classes: 10
stem: [conv_k3, 8, 1]
candidates: [ir_k3_e1, ir_k3_e3, skip]
stages:
  - {channels: 8, repeat: 1, stride: 2}
  - {channels: 8, repeat: 2, stride: 2}
channel_options: [0.5, 1.0]
resolution_options: [12, 16]
head: [conv_k1, 16]
dropout: 0.0
"""

PATTERN = """
import sys
import torch
import torch.nn.functional as F
torch.set_num_threads(2)
from nas.models.builder import build_model
from nas.models.conv import conv2d
from nas.search.dnas.distribution import ArchDistribution
from nas.search.dnas.dmasking_supernet import DMaskingSupernet
from nas.arch.space import Arch, load_space

torch.manual_seed(0)
for n in (3, 53):  # the bare pattern: channels-last, 8 channels, odd batch, weight gradient
    x = torch.randn(n, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 8, 1, 1).contiguous(memory_format=torch.channels_last).requires_grad_()
    for _ in range(5):
        conv2d(x, w, None, 2).sum().backward()
space = load_space(sys.argv[1], resolution=16, classes=10, in_channels=1)
dist = ArchDistribution(space)
net = DMaskingSupernet(dist).train().to(memory_format=torch.channels_last)
x = torch.randn(53, 1, 16, 16).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (53,))
for step in range(4):  # soft ops, channels and resolutions (--soft-resolution), then the weights frozen (arch step)
    net.requires_grad_(step < 2)
    F.cross_entropy(net(x, dist.sample(2.0, None, None, None)), y).backward()
    F.cross_entropy(net(x, dist.sample(2.0, 1, None, 1)), y).backward()
arch = dist.argmax_arch()
skips = Arch(arch.space, tuple("skip" for _ in arch.ops), arch.channels, arch.resolution)
child = build_model(space, skips).train().to(memory_format=torch.channels_last)
for _ in range(4):
    F.cross_entropy(child(x), y).backward()
print("ok")
"""


def test_strided_pointwise_conv_matches_f_conv2d_in_values_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(5, 6, 9, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(4, 6, 1, 1).requires_grad_()
    b = torch.randn(4).requires_grad_()
    grads = []
    for fn in (conv2d, F.conv2d):
        y = fn(x, w, b, 2)
        grads.append((y.detach(), *torch.autograd.grad((y * torch.arange(y.numel()).view_as(y)).sum(), (x, w, b))))
    assert grads[0][0].shape == (5, 4, 5, 5)
    for ours, reference in zip(*grads):
        assert torch.allclose(ours, reference, atol=1e-5)


def test_a_strided_skip_exports_as_one_strided_conv(tmp_path):
    block = ConvBNReLU(8, 8, 1, 2)
    assert isinstance(block[0], Conv2d) and set(block[0].state_dict()) == {"weight"}
    model = onnx.load(export_onnx(block, (8, 6, 6), tmp_path / "skip.onnx"))
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    assert "Slice" not in {node.op_type for node in model.graph.node} and len(convs) == 1
    assert [a.ints for a in convs[0].attribute if a.name == "strides"] == [[2, 2]]


def test_dmasking_steps_and_a_child_with_strided_skips_run_on_two_threads(tmp_path):
    space = tmp_path / "strided_skip.yaml"
    space.write_text(STRIDED_SKIP)
    script = tmp_path / "pattern.py"
    script.write_text(textwrap.dedent(PATTERN))
    root = Path(__file__).resolve().parents[1]
    for _ in range(2):
        done = subprocess.run([sys.executable, str(script), str(space)], capture_output=True, text=True, cwd=root,
                              env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
