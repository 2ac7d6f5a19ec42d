"""Claim: every bad input ends with one error line and exit code 2. A careless user's inputs to every command;
prints how many end cleanly.

Each case runs the CLI's main() in this process. Clean means exit code 2 and exactly one `error:` line, no
traceback, and no storage password echoed. Everything is written under a fresh temporary folder.

    .venv/bin/python benchmarks/sweep_bad_inputs.py
"""
import contextlib
import io
import json
import sys
import tempfile
import traceback
from pathlib import Path

import harness  # first: the repository and tests/ on the import path
import numpy as np
from test_predict_fixtures import BENCH_TABLE, TINY_SPACE_YAML  # noqa: E402

from cli.main import main  # noqa: E402
from nas.arch.space import load_space  # noqa: E402
from nas.latency.device import Device  # noqa: E402
from nas.latency.timing import TimingConfig  # noqa: E402


def make_cases() -> list[tuple]:
    """The inputs, with the files they name written under a temporary folder (a tiny device profiled there)."""
    T = Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    space = T / "tiny.yaml"
    space.write_text(TINY_SPACE_YAML)
    tables = T / "tables"
    harness.profile_table(Device(device_id="dev"), load_space(str(space)), tables_dir=tables,
                          timing=TimingConfig(warmup=1, min_rounds=2, max_rounds=2, max_seconds=0.2))
    afile = T / "afile"
    afile.write_text("x")
    binary = T / "bin.json"
    binary.write_bytes(bytes(range(256)) * 4)
    nan_npz = T / "nan.npz"
    x = np.random.default_rng(0).random((60, 8, 8)).astype(np.float32)
    x[0, 0, 0] = np.nan
    np.savez(nan_npz, x=x, y=np.arange(60) % 3)
    notnpz = T / "x.npz"
    notnpz.write_bytes(b"\x93NUMPY garbage" * 20)
    strnpz = T / "s.npz"
    np.savez(strnpz, x=np.array([["a"] * 4] * 10), y=np.arange(10))
    empty_npz = T / "e.npz"
    np.savez(empty_npz, x=np.zeros((0, 8, 8)), y=np.zeros(0, int))
    badyaml = T / "bad.yaml"
    badyaml.write_text("name: x\nstem: [conv_k3, 16\n")
    nulyaml = T / "nul.yaml"
    nulyaml.write_text("name: x\x00\n")
    listyaml = T / "list.yaml"
    listyaml.write_text("- 1\n- 2\n")
    badrecipe = T / "r.yaml"
    badrecipe.write_text("lr: -1\n")
    binrecipe = T / "r.json"
    binrecipe.write_bytes(b"\xff\xfe\x00")
    recipe_ml = T / "r2.yaml"
    recipe_ml.write_text("lr 0.1\nepochs: [\n")
    arch_bad = T / "a.json"
    arch_bad.write_text(json.dumps({"space": "fbnet", "ops": ["nope"] * 22}))
    arch_args = T / "a2.json"
    arch_args.write_text(json.dumps({"space": "fbnet", "ops": ["skip"] * 22, "space_args": [1]}))
    arch_list = T / "a3.json"
    arch_list.write_text("[1,2]")
    results_bad = T / "results.json"
    results_bad.write_text(json.dumps({"format": "x"}))
    results_trunc = T / "results2.json"
    results_trunc.write_text('{"format": "hwnas')
    ro = T / "ro"
    ro.mkdir()
    (ro / "run").write_text("file in the way")

    cases = [
        ("train", "fbnet_a", "--threads", "0"),
        ("train", "fbnet_a", "--threads", "-3"),
        ("train", "fbnet_a", "--out", afile),
        ("train", "fbnet_a", "--out", afile / "sub"),
        ("train", "fbnet_a", "--dataset", f"npz:{nan_npz}"),
        ("train", "fbnet_a", "--dataset", f"npz:{notnpz}"),
        ("train", "fbnet_a", "--dataset", f"npz:{strnpz}"),
        ("train", "fbnet_a", "--dataset", f"npz:{empty_npz}"),
        ("train", "fbnet_a", "--dataset", "npz:/nope.npz"),
        ("train", "fbnet_a", "--dataset", f"folder:{T}"),
        ("train", "fbnet_a", "--dataset", "mnist"),
        ("train", "fbnet_a", "--resolution", "0"),
        ("train", "fbnet_a", "--width", "-1"),
        ("train", "nope"),
        ("train", str(binary)),
        ("train", str(arch_bad)),
        ("train", str(arch_args)),
        ("train", str(arch_list)),
        ("train", "fbnet_a", "--recipe", badrecipe),
        ("train", "fbnet_a", "--recipe", binrecipe),
        ("train", "fbnet_a", "--recipe", recipe_ml),
        ("train", "fbnet_a", "--recipe", T / "missing.yaml"),
        ("space", "show", badyaml),
        ("space", "show", nulyaml),
        ("space", "show", listyaml),
        ("space", "show", binary),
        ("space", "show", "fbnet", "--resolution", "-5"),
        ("space", "sample", "fbnet", "--out", afile / "a.json"),
        ("latency", "profile", "--space", "fbnet", "--device", "d1", "--tables-dir", afile),
        ("latency", "profile", "--space", "fbnet", "--device", "bad/id"),
        ("latency", "profile", "--space", "fbnet", "--device", "dev\n"),
        ("latency", "profile", "--space", "fbnet", "--device", "d1", "--ort-threads", "0"),
        ("latency", "profile", "--space", "fbnet", "--device", "d1", "--optimization", "max"),
        ("latency", "profile", "--space", "fbnet", "--device", "d1", "--provider", "CUDAExecutionProvider"),
        ("latency", "profile", "--space", "fbnet", "--device", "d1", "--clock", "cpu", "--ort-threads", "2"),
        ("latency", "show", "nope", "--tables-dir", tables),
        ("latency", "show", "dev", "--tables-dir", afile),
        ("latency", "show", "dev\n", "--tables-dir", tables),
        ("latency", "validate", "--space", space, "--device", "dev", "--tables-dir", tables, "--samples", "100000000"),
        ("latency", "validate", "--space", space, "--device", "dev", "--tables-dir", tables, "--samples", "1"),
        ("latency", "validate", "--space", space, "--device", "dev", "--tables-dir", tables, "--out", afile),
        ("latency", "import", results_bad, "--tables-dir", tables),
        ("latency", "import", results_trunc, "--tables-dir", tables),
        ("latency", "import", binary, "--tables-dir", tables),
        ("latency", "import", T / "none.json", "--tables-dir", tables),
        ("latency", "predict", binary, "--device", "dev", "--tables-dir", tables),
        ("latency", "predict", "fbnet_a", "--device", "dev", "--tables-dir", tables, "--bits", "4"),
        ("latency", "bundle", "--space", "fbnet", "--out", afile / "b.zip"),
        ("search", "nars", "--space", "nope", "--device", "dev", "--tables-dir", tables),
        ("search", "nars", "--space", space, "--device", "dev", "--tables-dir", tables, "--budget", "0"),
        ("search", "nars", "--space", space, "--device", "dev", "--tables-dir", tables, "--out", afile),
        ("search", "nars", "--space", space, "--device", "nodev", "--tables-dir", tables),
        ("search", "nars", "--space", space, "--device", "dev", "--tables-dir", tables, "--latency-ms", "-1"),
        ("search", "optuna", "--space", space, "--device", "dev", "--tables-dir", tables, "--sampler", "foo"),
        ("search", "optuna", "--space", space, "--device", "dev", "--tables-dir", tables,
         "--storage", "postgresql://u:s3cret@127.0.0.1:1/db"),
        ("search", "nars", "--space", f"table:{BENCH_TABLE}", "--objective", "nope", "--latency-column", "latency_ms"),
        ("search", "nars", "--space", f"table:{binary}", "--latency-column", "latency_ms"),
        ("search", "dnas", "--space", space, "--device", "dev", "--tables-dir", tables, "--epochs", "0"),
        ("search", "dnas", "--space", space, "--device", "dev", "--tables-dir", tables, "--out", afile),
        ("search", "dnas", "--space", "nope", "--device", "dev", "--tables-dir", tables),
        ("search", "dmasking", "--space", space, "--device", "nodev", "--tables-dir", tables),
        ("search", "mixed-precision", "--space", str(binary), "--device", "dev", "--tables-dir", tables),
        ("search", "capacity", "--checkpoint", binary, "--device", "dev", "--tables-dir", tables, "--target-ms", "1"),
        ("search", "capacity", "--checkpoint", T / "none.pt", "--device", "dev", "--tables-dir", tables,
         "--target-ms", "1"),
        ("train-dynamic", "--space", "nope"),
        ("train-dynamic", "--dataset", f"npz:{nan_npz}", "--out", T / "td"),
        ("train-dynamic", "--out", afile),
        ("export-capacity", "--checkpoint", binary, "--device", "dev", "--out", T / "ec"),
        ("export-capacity", "--checkpoint", binary, "--device", "dev", "--out", afile),
    ]
    return cases


def run(args) -> tuple:
    """Exit code and stderr of ``hwnas ARGS`` ("exception" when one escaped main())."""
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["hwnas", *map(str, args)]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as e:
            code = e.code
        except BaseException:
            code = "exception"
            traceback.print_exc(file=err)
    return code, err.getvalue()


def sweep() -> None:
    clean, not_clean = 0, []
    for args in make_cases():
        if args[0] == "train":
            args = (*args, "--epochs", "1", *(() if "--width" in args else ("--width", "0.25")))
        code, err = run(args)
        lines = [ln for ln in err.strip().splitlines() if ln.strip() and "━" not in ln and "%" not in ln]
        errors = [ln for ln in lines if ln.startswith("error:")]
        ok = code == 2 and len(errors) == 1 and "Traceback" not in err and "s3cret" not in err
        if ok:
            clean += 1
        else:
            not_clean.append((args, code, err.strip()[-600:]))
    print(f"{clean + len(not_clean)} inputs: {clean} clean, {len(not_clean)} not clean")
    for args, code, err in not_clean:
        print("----", " ".join(map(str, args))[:160], "-> exit", code)
        print(err)


if __name__ == "__main__":
    sweep()
