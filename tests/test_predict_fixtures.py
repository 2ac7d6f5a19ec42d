"""Shared fixtures of the predictor-search tests (test_predict.py, test_predict_search.py): a tiny model space
profiled for real on two devices, and the shipped benchmark table (real trainings and timings)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH_TABLE = ROOT / "benchmarks" / "data" / "digits_joint.csv"

TINY_SPACE_YAML = """\
name: tiny_predict
resolution: 8
in_channels: 1
classes: 10
stem: [conv_k3, 8, 1]
candidates: [ir_k3_e1, ir_k3_e3, skip]
stages:
  - {channels: 8, repeat: 1, stride: 1}
  - {channels: 16, repeat: 2, stride: 2}
channel_options: [0.5, 1.0]
head: [conv_k1, 32]
dropout: 0.0
recipe_space:
  lr: {low: 0.003, high: 0.03, log: true}
  epochs: [1]
  batch_size: [64, 128]
"""


@pytest.fixture(scope="session")
def tiny_space_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny_predict.yaml"
    path.write_text(TINY_SPACE_YAML)
    return path


@pytest.fixture(scope="session")
def profiled_devices(tiny_space_file, tmp_path_factory):
    """Latency tables of the tiny space for devices ``dev-a`` and ``dev-b`` (real ONNX Runtime timings, short)."""
    from nas.arch.space import load_space
    from nas.latency.device import Device
    from nas.latency.profile import profile_items, space_profile_items
    from nas.latency.timing import TimingConfig

    tables = tmp_path_factory.mktemp("tables")
    space = load_space(str(tiny_space_file))
    timing = TimingConfig(warmup=2, min_rounds=2, max_rounds=3, max_seconds=0.3)
    for device in ("dev-a", "dev-b"):
        profile_items(Device(device_id=device), space_profile_items(space), tables_dir=tables, timing=timing)
    return tables, space


class InProcess:
    """The CLI's main() in this process: exit code, stdout and stderr as a user sees them (saves a subprocess's
    import time per case)."""

    def __init__(self, capsys, monkeypatch):
        self.capsys, self.monkeypatch = capsys, monkeypatch

    def __call__(self, *args):
        from cli.main import main
        self.monkeypatch.setattr(sys, "argv", ["hwnas", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code
        out, err = self.capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)


def error_line(r: subprocess.CompletedProcess, *fragments: str) -> str:
    """The CLI's one red line of a refused command (joined where the terminal wrapped it), checked for exit code
    2, no traceback and ``fragments``."""
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    errors = r.stderr.split("error: ")
    assert len(errors) == 2, r.stderr
    line = " ".join(errors[1].split())
    for f in fragments:
        assert f in line, line
    return line
