"""Shared by the latency tests: quick timing settings and a small space."""

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
