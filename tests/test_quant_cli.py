"""`hwnas search mixed-precision` end to end on a tiny model: run directory, ONNX parity, resume, bad input."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from nas.data.dataset import load_dataset
from nas.models.onnx_io import run_onnx

TINY = """name: qtiny
resolution: 16
in_channels: 1
classes: 10
stem: [conv_k3, 8, 2]
blocks:
  - [ir_k3_e2, 8, 1, 1]
  - [ir_k3_e2, 16, 2, 1]
head: [conv_k1, 32]
dropout: 0.0
"""
FAST = ("--resolution", "16", "--epochs", "2", "--pretrain-epochs", "1", "--finetune-epochs", "1")


@pytest.fixture
def env(tmp_path):
    (tmp_path / "qtiny.yaml").write_text(TINY)
    return {"HWNAS_LATENCY_TABLES": str(tmp_path / "tables"), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def hwnas(monkeypatch, capsys, env):
    """The CLI in this process (``cli.main.main``: exit codes and one-line errors included), without paying a new
    interpreter's imports for every call; ``cli`` (a subprocess) is used once to check the real entry point."""
    import torch

    from cli.main import main

    monkeypatch.setenv("HWNAS_LATENCY_TABLES", env["HWNAS_LATENCY_TABLES"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["hwnas", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code or 0
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)

    yield run
    torch.set_num_threads(threads)


def one_error_line(r, message):
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip() and "━" not in line]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_size_search_writes_a_run_that_resumes(hwnas, tmp_path):
    out = tmp_path / "run"
    args = ("search", "mixed-precision", "--space", str(tmp_path / "qtiny.yaml"), "--device", "nowhere",
            "--cost", "size", "--target-mb", "0.004", *FAST, "--out", str(out))
    r = hwnas(*args)
    assert r.returncode == 0, r.stderr
    for name in ("config.json", "bits.json", "history.csv", "model.onnx", "report.json", "bits.png",
                 "baseline_fp32.onnx", "baseline_int8.onnx"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    bits = json.loads((out / "bits.json").read_text())
    mp = report["mixed_precision"]
    assert len(bits["layers"]) == 9 and mp["mixed"]["layers"] == 9
    assert mp["mixed"]["size_mb"] <= 0.004  # the effective size meets the target ...
    file_mb = (out / "model.onnx").stat().st_size / 1e6
    assert mp["mixed"]["file_mb"] == pytest.approx(file_mb) and file_mb > 0.004  # ... the shipped file does not
    assert report["within_target"] is False and mp["target_met"] is False and mp["target_judged_on"] == "file_mb"
    assert any("over --target-mb 0.004" in w for w in report["warnings"])
    assert "model.onnx is" in r.stdout + r.stderr  # printed with the verdict
    mean_bits = np.average([b["w_bits"] for b in bits["layers"]], weights=[b["params"] - b["c_out"]
                                                                          for b in bits["layers"]])
    assert mp["mixed"]["mean_weight_bits"] == pytest.approx(mean_bits)
    for key in ("accuracy_torch", "accuracy_onnx", "measured_ms", "size_mb", "mean_weight_bits"):
        for figures in (mp["mixed"], mp["baselines"]["fp32"], mp["baselines"]["int8"]):
            assert figures[key] is not None and figures[key] >= 0, key
    assert mp["baselines"]["fp32"]["mean_weight_bits"] == 32 and mp["baselines"]["int8"]["mean_weight_bits"] == 8
    assert report["predicted_ms"] is None and "predicted_ms unavailable" in mp["latency_table"]
    assert abs(mp["mixed"]["accuracy_onnx"] - mp["mixed"]["accuracy_torch"]) <= 0.05
    data = load_dataset("digits", resolution=16, seed=0)
    x_test, y_test = data.test.tensors()
    acc = float((run_onnx(out / "model.onnx", x_test).argmax(1) == y_test.numpy()).mean())
    assert acc == pytest.approx(mp["mixed"]["accuracy_onnx"])
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 2 and {"expected_cost", "argmax_cost", "temperature", "probabilities"} <= set(history)

    again = hwnas(*args)  # finished: the stored report comes back
    assert again.returncode == 0 and json.loads((out / "report.json").read_text()) == report
    (out / "report.json").unlink()
    (out / "model.onnx").unlink()
    resumed = hwnas(*args)  # the search is not redone: same history, a new report
    assert resumed.returncode == 0, resumed.stderr
    assert pd.read_csv(out / "history.csv").equals(history) and (out / "model.onnx").is_file()
    assert json.loads((out / "bits.json").read_text()) == bits
    other = hwnas(*args[:-2], "--epochs", "3", "--out", str(out))
    one_error_line(other, "was started with other settings")


def test_latency_search_needs_the_int8_table_then_runs(hwnas, cli, env, tmp_path):
    yaml = str(tmp_path / "qtiny.yaml")
    profile = ("latency", "profile", "--space", yaml, "--device", "cpu1", "--calibration", "0")
    assert hwnas(*profile).returncode == 0
    args = ("search", "mixed-precision", "--space", yaml, "--device", "cpu1", "--cost", "latency", *FAST,
            "--fit-models", "4", "--out", str(tmp_path / "run"))
    one_error_line(hwnas(*args), "no int8 table rows")
    assert not (tmp_path / "run").exists()  # refused before any run directory is written
    assert hwnas(*profile, "--int8").returncode == 0
    one_error_line(hwnas(*args[:-2], "--target-ms", "0.0001", "--out", str(tmp_path / "run")), "is impossible")
    assert not (tmp_path / "run").exists()
    r = cli(*args, "--target", "p90", "--json", env=env)  # a real `hwnas` process once
    assert r.returncode == 0, r.stderr
    shared = json.loads(r.stdout)
    assert shared["target"] == "p90" and shared["target_ms"] > 0  # 90% of random bit assignments are faster
    assert shared["target_ms"] == shared["mixed_precision"]["target"]["value"]
    report = shared["mixed_precision"]
    for figures in (report["mixed"], report["baselines"]["fp32"], report["baselines"]["int8"]):
        assert figures["predicted_ms"] > 0 and figures["measured_ms"] > 0
        assert figures["format"] in ("qdq", "qop", "fp32")
    assert report["baselines"]["fp32"]["format"] == "fp32" and report["options"] == ["w8a8", "fp32"]
    assert report["latency_fit"]["models"] == 4 and report["latency_fit"]["coef"]["compute"] >= 0
    assert set(report["int8_speedup_by_layer_kind"]) >= {"pw", "dw"}
    assert isinstance(report["dominated_by"], list) and not report["estimated_keys"]
    assert len(pd.read_csv(tmp_path / "tables" / "cpu1" / "mixed_calibration.csv")) == 4  # with the device


@pytest.mark.parametrize("extra, message", [
    (("--cost", "latency", "--weight-bits", "4,8,32"), "ONNX Runtime runs only int8 and fp32"),
    (("--cost", "latency"), "unknown device"),
    (("--cost", "size", "--target-mb", "0.0001"), "is impossible"),
    (("--cost", "size", "--target-ms", "1"), "--target and --target-ms steer --cost latency"),
    (("--cost", "speed"), "unknown cost 'speed'"),
    (("--cost", "size", "--weight-bits", "3,16"), "between 2 and 8"),
])
def test_bad_input_is_one_line_and_exit_2(hwnas, tmp_path, extra, message):
    r = hwnas("search", "mixed-precision", "--space", str(tmp_path / "qtiny.yaml"), "--device", "nowhere",
              "--resolution", "16", *extra, "--out", str(tmp_path / "run"))
    one_error_line(r, message)
    assert not (tmp_path / "run").exists()
