"""One name per concept across the CLI: each renamed option works under its new name, and its old spelling, kept
hidden, still works and prints the name to use instead.

Each case ends at an early, fast check (a bad value, an unknown name) whose message shows that the value reached
the option it stands for."""

from __future__ import annotations

import pytest
from test_predict_fixtures import BENCH_TABLE, InProcess


@pytest.fixture
def hwnas(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HWNAS_LATENCY_TABLES", str(tmp_path / "tables"))
    return InProcess(capsys, monkeypatch)


TABLE = ("search", "nars", "--space", f"table:{BENCH_TABLE}", "--objective", "val_accuracy", "--latency-column",
         "latency_ms")
# (command, the new spelling, the old spelling, the value, the error that shows where the value went)
RENAMED = [
    (("train", "fbnet_a"), "--loader-workers", "--workers", "-1", "--loader-workers must be 0 or more"),
    (("train", "fbnet_a"), "--ort-threads", "--measure-threads", "0", "--ort-threads must be at least 1"),
    (("search", "dnas", "--device", "d"), "--loader-workers", "--workers", "-1", "--loader-workers must be 0"),
    (("search", "dmasking", "--device", "d"), "--loader-workers", "--workers", "-1", "--loader-workers must be 0"),
    (("search", "mixed-precision", "--space", "fbnet_a", "--device", "d"), "--loader-workers", "--workers", "-1",
     "--loader-workers must be 0"),
    (("search", "mixed-precision", "--device", "d"), "--space", "--arch", "no_such_model", "no_such_model"),
    (("train-dynamic",), "--threads", "--torch-threads", "0", "--threads must be at least 1 (torch threads"),
    (("train-dynamic",), "--loader-workers", "--workers", "-1", "--loader-workers must be 0"),
    (("latency", "profile", "--space", "fbnet", "--device", "d", "--clock", "cpu"), "--ort-threads", "--threads", "2",
     "needs --ort-threads 1"),
    (("latency", "profile-capacity", "--device", "d", "--clock", "cpu"), "--ort-threads", "--threads", "2",
     "needs --ort-threads 1"),
    (TABLE, "--target-ms", "--latency-ms", "p40", "--target-ms 'p40': give milliseconds"),
]


@pytest.mark.parametrize("command, new, old, value, error", RENAMED, ids=lambda v: v if isinstance(v, str) else None)
def test_the_new_name_works_and_the_old_one_says_so(hwnas, command, new, old, value, error):
    for flag, noted in ((new, False), (old, True)):
        r = hwnas(*command, flag, value)
        assert r.returncode == 2 and error in r.stderr, (flag, r.stderr)
        assert (f"{old} is now {new}" in r.stderr) is noted, (flag, r.stderr)
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["show", "check"])
def test_the_device_is_an_option_and_the_old_first_argument_says_so(hwnas, command):
    new = hwnas("latency", command, "--device", "no-such-device")
    assert new.returncode == 2 and "unknown device 'no-such-device'" in new.stderr and "note:" not in new.stderr
    old = hwnas("latency", command, "no-such-device")
    assert old.returncode == 2 and "unknown device 'no-such-device'" in old.stderr
    assert "the device is now an option: --device no-such-device" in old.stderr
    both = hwnas("latency", command, "one", "--device", "other")
    assert both.returncode == 2 and "two devices given" in both.stderr


@pytest.mark.parametrize("command, shown, hidden", [
    (("train",), ("--loader-workers", "--ort-threads", "--threads"), ("--workers", "--measure-threads")),
    (("search", "dmasking"), ("--loader-workers", "--threads", "--target"), ("--workers",)),
    (("search", "mixed-precision"), ("--space", "--loader-workers", "--target"), ("--arch", "--workers")),
    (("search", "nars"), ("--workers", "--threads", "--target", "--target-ms"), ("--latency-ms",)),
    (("train-dynamic",), ("--threads", "--loader-workers"), ("--torch-threads", "--workers")),
    (("latency", "profile"), ("--ort-threads",), ("--threads",)),
    (("latency", "check"), ("--device",), ()),
])
def test_help_shows_the_new_names_only(cli, command, shown, hidden):
    text = cli(*command, "--help", env={"COLUMNS": "250"}).stdout
    flags = {word.strip("│,") for word in text.split()}
    assert set(shown) <= flags and not set(hidden) & flags, (command, sorted(f for f in flags if f.startswith("--")))


def test_the_clis_calibration_default_is_the_librarys():
    import inspect

    from cli.app import CALIBRATION_MODELS as cli_default
    from nas.latency.bundle import write_bundle
    from nas.latency.calibrate import CALIBRATION_MODELS, calibrate

    assert cli_default == CALIBRATION_MODELS  # kept in cli.app so that --help imports no torch
    for function, name in ((calibrate, "models"), (write_bundle, "calibration")):
        assert inspect.signature(function).parameters[name].default == CALIBRATION_MODELS
