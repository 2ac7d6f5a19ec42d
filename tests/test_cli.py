import json
import os
import subprocess
import sys

import pytest

from nas.arch.space import Arch, load_space
from tests.conftest import ROOT, run_cli


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
    assert (out / "learning_curve.png").stat().st_size > 5_000
    umask = os.umask(0)
    os.umask(umask)
    for name in ("report.json", "model.onnx", "learning_curve.png", "train_history.csv"):  # readable per the umask
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    # rerunning the finished run resumes from its checkpoint; other settings are refused
    again = cli("train", "fbnet_a", "--dataset", "digits", "--width", "0.5", "--epochs", "2", "--out", str(out))
    assert again.returncode == 2 and "started with other settings" in again.stderr


def test_version_completion_and_a_light_help(cli):
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip().startswith("hwnas ")
    helped = cli("--help")
    assert "--install-completion" in helped.stdout and "--version" in helped.stdout
    # --help must not import torch or the search modules (the CLI starts in well under a second)
    probe = subprocess.run([sys.executable, "-c", "import sys, cli.main; print(sorted(m for m in sys.modules if "
                            "m.split('.')[0] in ('torch', 'sklearn', 'onnxruntime', 'optuna', 'pandas')))"],
                           capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stdout + probe.stderr


def test_one_name_for_the_latency_bound(cli):
    for command in ("dnas", "dmasking", "nars", "chamnet", "optuna", "mixed-precision", "capacity"):
        assert "--target-ms" in cli("search", command, "--help", env={"COLUMNS": "200"}).stdout, command


def test_tables_go_to_stdout_and_op_names_are_never_cut(cli):
    r = cli("space", "show", "fbnet", "--resolution", "32", "--width", "0.25", env={"COLUMNS": "40"})
    assert r.returncode == 0, r.stderr
    assert "ir_k5_e6" in r.stdout and "…" not in r.stdout
    listed = json.loads(cli("space", "list", "--json").stdout)["spaces"]
    assert listed["fbnet"]["searchable_layers"] == 22 and listed["fbnet_a"]["fixed"]


def test_profile_and_profile_capacity_keep_the_tables_clock(tmp_path):
    from cli.cmd_latency import table_clock
    from nas.errors import LatencyTableError
    from nas.latency.table import DeviceManifest, LatencyTable

    LatencyTable.open_for_writing(DeviceManifest.for_this_machine("cpu-timed", clock="cpu"), tmp_path)
    assert table_clock(None, "cpu-timed", tmp_path, 1) == "cpu"  # a search's --profile made it: keep its clock
    assert table_clock(None, "new-device", tmp_path, 1) == "wall"
    assert table_clock("wall", "cpu-timed", tmp_path, 1) == "wall"  # asked for explicitly (the table refuses it)
    with pytest.raises(LatencyTableError, match="needs --ort-threads 1"):
        table_clock(None, "cpu-timed", tmp_path, 2)
    r = run_cli("latency", "profile-capacity", "--help", env={"COLUMNS": "200"})
    assert "default: the device table's" in " ".join(r.stdout.split())
