import json

import pytest

from nas.space import Arch, load_space


def test_space_show_json_matches_published(cli):
    r = cli("space", "show", "fbnet_b", "--resolution", "224", "--classes", "1000", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["macs"] == pytest.approx(291.1e6, rel=0.01) and d["params"] == pytest.approx(4.8e6, rel=0.01)
    assert sum(b["macs"] for b in d["blocks"]) == d["macs"]


def test_space_sample_writes_a_valid_arch(cli, tmp_path):
    out = tmp_path / "a.json"
    r = cli("space", "sample", "fbnet", "--seed", "4", "--out", str(out))
    assert r.returncode == 0, r.stderr
    load_space("fbnet").validate(Arch.from_json(out.read_text()))
    shown = cli("space", "show", str(out), "--json")
    assert json.loads(shown.stdout)["arch"]["ops"] == json.loads(out.read_text())["ops"]


@pytest.mark.parametrize("args, message", [
    (("space", "show", "nope"), "unknown space 'nope'"),
    (("space", "show", "fbnet", "--resolution", "-5"), "resolution must be positive"),
    (("train", "fbnet_a", "--dataset", "npz:/missing.npz"), "dataset file not found"),
    (("train", "fbnet_a", "--dataset", "digits", "--resolution", "-1"), "resolution must be positive"),
])
def test_bad_input_is_one_line_and_exit_2(cli, args, message):
    r = cli(*args)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


def test_bad_yaml_and_bad_arch_files(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstem: [conv_k3, 16\n")
    r = cli("space", "show", str(bad))
    assert r.returncode == 2 and "malformed YAML" in r.stderr
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"space": "fbnet", "ops": ["skip"] * 22 + ["skip"]}))
    r = cli("space", "show", str(arch))
    assert r.returncode == 2 and "has 23 ops" in r.stderr


def test_train_exports_onnx_with_parity(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("train", "fbnet_a", "--dataset", "digits", "--width", "0.25", "--epochs", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["onnx_max_abs_diff"] <= 1e-4
    assert report["accuracy_onnx"] == pytest.approx(report["accuracy"], abs=0.01)
    assert report["measured_ms"] > 0 and (out / "model.onnx").stat().st_size > 10_000
    # rerunning the finished run resumes from its checkpoint; other settings are refused
    again = cli("train", "fbnet_a", "--dataset", "digits", "--width", "0.5", "--epochs", "2", "--out", str(out))
    assert again.returncode == 2 and "started with other settings" in again.stderr
