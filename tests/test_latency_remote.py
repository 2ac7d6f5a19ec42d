"""Latency tables, part 2: int8 profiling, the remote bundle round trip, validation, CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_latency_support import FAST, SMALL_SPACE  # noqa: E402

from nas.arch.space import load_space
from nas.errors import LatencyTableError
from nas.latency.bundle import import_results, write_bundle
from nas.latency.device import Device
from nas.latency.model import LatencyModel
from nas.latency.profile import profile_items, space_profile_items
from nas.latency.table import LatencyTable

# the measuring script must run with nothing but the standard library, numpy and onnxruntime
ONLY_NUMPY_ORT = """
import runpy, sys
for name in ("torch", "nas", "cli", "sklearn", "pandas", "scipy", "typer", "onnx", "yaml", "pydantic"):
    sys.modules[name] = None
sys.argv = ["measure.py"] + sys.argv[1:]
runpy.run_path("measure.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "small.yaml"
    path.write_text(SMALL_SPACE)
    return load_space(str(path))


def test_int8_blocks_are_quantized_and_keyed_by_bits(space, tmp_path):
    items = space_profile_items(space, bits=(32, 8))
    counts = profile_items(Device(device_id="q"), items, tables_dir=tmp_path, timing=FAST)
    assert counts["measured"] == len(items)
    table = LatencyTable.open("q", tmp_path)
    eight = [k for k in table.keys() if k.bits == 8]
    assert len(eight) == len(items) // 2 and all(k.with_bits(32) in table for k in eight)
    lm = LatencyModel.load("q", tables_dir=tmp_path, allow_fallback=False)
    arch = space.fixed_arch()
    fp32, int8 = lm.predict_keys(lm.arch_keys(space, arch, 32)), lm.predict_keys(lm.arch_keys(space, arch, 8))
    assert fp32.ms > 0 and int8.ms > 0 and fp32.ms != int8.ms and not int8.estimated


def test_int8_format_and_granularity_come_from_the_key(tmp_path):
    import collections

    import onnx

    from nas.arch.opkey import OpKey, format_extra
    from nas.latency.profile import block_item, item_onnx

    def op_types(extra):
        key = OpKey("ir_k3_e6", 16, 16, 1, 8, bits=8, extra=extra)
        folder = tmp_path / (extra.replace(";", "_").replace("=", "-") or "default")
        folder.mkdir()
        path = item_onnx(block_item(key), folder).path
        return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)

    qdq, qop_pw = op_types(""), op_types(format_extra(qformat="qop", qops="pw"))
    assert qdq["QuantizeLinear"] > 0 and qdq["QLinearConv"] == 0
    assert qop_pw["QLinearConv"] == 2 and qop_pw["Conv"] == 1  # the depthwise conv stays fp32
    with pytest.raises(LatencyTableError, match="qformat must be one of"):
        op_types(format_extra(qformat="int4"))


def _measure(folder: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ONLY_NUMPY_ORT, *args], cwd=folder, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_bundle_measure_import_round_trip(space, tmp_path):
    bundle = tmp_path / "bundle.zip"
    manifest = write_bundle(space, bundle, bits=(32, 8), calibration=2)
    names = zipfile.ZipFile(bundle).namelist()
    assert {"manifest.json", "measure.py", "README.txt"} <= set(names)
    assert len([n for n in names if n.startswith("blocks/")]) == len(space_profile_items(space, (32, 8)))
    device_side = tmp_path / "device"
    device_side.mkdir()
    (device_side / "measure.py").write_bytes(zipfile.ZipFile(bundle).read("measure.py"))
    first = _measure(device_side, str(bundle), "--device", "edge-1", "--out", "results.json")
    assert first.returncode == 0, first.stderr
    again = _measure(device_side, str(bundle), "--out", "results.json", "--device", "edge-1")
    assert again.returncode == 0 and "measured (" not in again.stdout  # resumed: nothing left to measure
    results = device_side / "results.json"
    tables = tmp_path / "tables"
    summary = import_results(results, tables_dir=tables)
    assert summary["device"] == "edge-1" and summary["rows"] == len(manifest["blocks"])
    lm = LatencyModel.load("edge-1", tables_dir=tables, allow_fallback=False)
    assert lm.table.manifest.remote and lm.correction.fitted_on == 2 and lm.warnings == []
    measured = json.loads(results.read_text())["blocks"]
    for key in lm.table.keys():
        assert lm.table.get(key)["p50_ms"] == pytest.approx(measured[str(key)]["p50_ms"], rel=1e-4)
    assert lm.predict(space, space.fixed_arch(), bits=8) > 0
    with pytest.raises(LatencyTableError, match="already exists"):
        import_results(results, tables_dir=tables)
    # a results file cut short imports nothing
    data = json.loads(results.read_text())
    data["blocks"].pop(next(iter(data["blocks"])))
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(data))
    with pytest.raises(LatencyTableError, match="1 measurements are missing"):
        import_results(partial, device_id="edge-2", tables_dir=tables)
    assert not (tables / "edge-2").exists() and not any(p.name.startswith(".import") for p in tables.iterdir())
    partial.write_text("{not json")
    with pytest.raises(LatencyTableError, match="invalid JSON"):
        import_results(partial, device_id="edge-3", tables_dir=tables)


def test_measure_script_rejects_unknown_provider(space, tmp_path):
    bundle = tmp_path / "bundle.zip"
    write_bundle(space, bundle, calibration=0)
    (tmp_path / "measure.py").write_bytes(zipfile.ZipFile(bundle).read("measure.py"))
    r = _measure(tmp_path, str(bundle), "--provider", "FooExecutionProvider")
    assert r.returncode != 0 and "'FooExecutionProvider' is not available" in r.stderr


@pytest.fixture
def hwnas(monkeypatch, capsys, tmp_path):
    """Run the CLI in-process, as the console script does: returns (exit code, stdout, stderr)."""
    from cli.main import main

    monkeypatch.setenv("HWNAS_LATENCY_TABLES", str(tmp_path / "tables"))

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["hwnas", *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main()
        out = capsys.readouterr()
        return exit_info.value.code or 0, out.out, out.err

    return run


def test_cli_profile_validate_json_and_resume(space, tmp_path, hwnas):
    space_file = str(tmp_path / "small.yaml")
    Path(space_file).write_text(SMALL_SPACE)
    code, out, err = hwnas("latency", "profile", "--space", space_file, "--device", "cli", "--calibration", "3",
                           "--json")
    assert code == 0, err
    prof = json.loads(out)
    assert prof["measured"] == len(space_profile_items(space)) and prof["calibration_models"] == 3
    val = tmp_path / "val"
    args = ("latency", "validate", "--space", space_file, "--device", "cli", "--out", str(val))
    code, out, err = hwnas(*args, "--samples", "4", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert {"within_10pct", "kendall_tau", "flops_kendall_tau", "mape"} <= set(s)
    assert 0 <= s["within_10pct"] <= 1 and -1 <= s["kendall_tau"] <= 1 and s["mape"] >= 0
    frame = pd.read_csv(val / "validation.csv")
    assert len(frame) == 4 and (frame["measured_ms"] > 0).all() and (frame["macs"] > 0).all()
    assert (val / "scatter.png").read_bytes()[:4] == b"\x89PNG"
    before = frame["measured_ms"].to_numpy()
    code, out, err = hwnas(*args, "--samples", "4", "--json")
    assert code == 0 and np.array_equal(pd.read_csv(val / "validation.csv")["measured_ms"], before)
    code, out, err = hwnas(*args, "--samples", "5")
    assert code == 2 and "other settings" in err


def test_cli_bad_input_one_line_exit_2(tmp_path, hwnas):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    for args, expected in ((["validate", "--space", "fbnet", "--device", "ghost"], "unknown device 'ghost'"),
                           (["predict", "fbnet", "--device", "ghost"], "unknown device 'ghost'"),
                           (["import", str(bad)], "not an hwnas results file"),
                           (["profile", "--space", "fbnet", "--device", "bad/id"], "invalid device id"),
                           (["profile", "--space", "fbnet", "--device", "d", "--ort-threads", "2", "--clock", "cpu"],
                            "needs --ort-threads 1")):
        code, out, err = hwnas("latency", *args)
        assert code == 2, (args, err)
        assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "tables").exists() or not any((tmp_path / "tables").iterdir())
