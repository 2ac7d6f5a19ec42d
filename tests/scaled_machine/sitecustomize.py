"""A machine N times slower (or faster): every Python process that finds this folder on PYTHONPATH imports this
file at start-up, and with ``HWNAS_TEST_TIME_SCALE=N`` set, every latency hwnas measures is N times what this
machine measured. It wraps the one timing algorithm (``nas.latency.remote_measure.time_interleaved``), which
profiling, calibration, drift checks and the shipped model's measurement all go through, so tables, corrections,
references and verdicts all see the same slower (N > 1) or faster (N < 1) device. ``tests/test_readme.py`` runs
the README's tour on such machines."""

import os

_SCALE = float(os.environ.get("HWNAS_TEST_TIME_SCALE") or 1.0)
if _SCALE != 1.0:
    from nas.latency import remote_measure

    _measured = remote_measure.time_interleaved
    _MS = ("p50_ms", "p90_ms", "mean_ms", "std_ms")

    def _scaled(runs, timing=None, on_round=None):
        return [{**stats, **{k: stats[k] * _SCALE for k in _MS}} for stats in _measured(runs, timing, on_round)]

    remote_measure.time_interleaved = _scaled
