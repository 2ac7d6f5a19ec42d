"""Shared by the latency tests: quick timing settings, a small space, the CLI run in-process."""

import sys

import pytest

from nas.latency.timing import TimingConfig

FAST = TimingConfig(warmup=2, round_ms=1.0, min_runs=3, max_runs=10, min_rounds=2, max_rounds=3, max_seconds=0.2)
SMALL_SPACE = """
name: small
resolution: 32
classes: 10
stem: [conv_k3, 8, 2]
candidates: [ir_k3_e1, ir_k3_e3, skip]
stages:
  - {channels: 8, repeat: 2, stride: 1}
  - {channels: 16, repeat: 2, stride: 2}
head: [conv_k1, 32]
dropout: 0.0
"""


def run_hwnas(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process, as the console script does: (exit code, stdout, stderr)."""
    from cli.main import main

    monkeypatch.setattr(sys, "argv", ["hwnas", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main()
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err
