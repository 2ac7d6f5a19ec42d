"""Issue 28, item 8: nothing unbounded or silently accepted. Thread and process counts, calibration counts, bundle
outputs, imported latencies, recipes, storage URLs and study names, `latency check --model` and `search status`:
each bad value is one line and exit 2, with nothing written."""

import json
import zipfile

import pytest

from nas.train.accelerator import PER_CORE, available_cores
from nas.latency import remote_measure
from nas.latency.bundle import write_bundle
from nas.latency.device import Device
from nas.latency.profile import profile_items, space_profile_items
from nas.train.recipe import Recipe
from nas.arch.space import load_space
from nas.train.training import lr_factor
from test_latency_support import FAST, SMALL_SPACE
from test_predict_fixtures import BENCH_TABLE, InProcess, error_line

TOO_MANY = PER_CORE * available_cores() + 1


@pytest.fixture
def hwnas(capsys, monkeypatch):
    return InProcess(capsys, monkeypatch)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small space file, a device table of it (no calibration), and a bundle of it."""
    root = tmp_path_factory.mktemp("small")
    space_file = root / "small.yaml"
    space_file.write_text(SMALL_SPACE)
    space = load_space(str(space_file))
    profile_items(Device(device_id="dev"), space_profile_items(space), tables_dir=root / "tables", timing=FAST)
    write_bundle(space, root / "bundle.zip", calibration=2)
    return root, space_file


def forged_results(bundle) -> dict:
    """A results file for ``bundle`` with plausible figures (what measure.py writes, without timing anything)."""
    manifest = json.loads(zipfile.ZipFile(bundle).read("manifest.json"))
    stats = {"p50_ms": 0.05, "p90_ms": 0.06, "mean_ms": 0.05, "std_ms": 0.005, "count": 20, "spread": 0.2,
             "stable": True}
    setup = {"device_id": "edge", "provider": "CPUExecutionProvider", "threads": 1, "graph_optimization": "all",
             "clock": "wall", "cpu_model": "test", "cores": 1, "os": "Linux", "machine": "x86_64", "python": "3",
             "onnxruntime_version": "1", "created": "2026-01-01T00:00:00+0000"}
    return {"format": remote_measure.RESULTS_FORMAT, "bundle_id": manifest["bundle_id"], "device": setup,
            "manifest": manifest, **{g: {it["id"]: dict(stats) for it in manifest[g]}
                                     for g in ("overhead", "blocks", "models")}}


# ---- threads and processes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("train", "fbnet_a", "--threads", str(TOO_MANY)),
    ("train", "fbnet_a", "--loader-workers", str(TOO_MANY)),
    ("search", "nars", "--space", f"table:{BENCH_TABLE}", "--objective", "val_accuracy", "--latency-column",
     "latency_ms", "--workers", str(TOO_MANY)),
    ("worker", "--storage", "sqlite:///{tmp}/study.db", "--threads", str(TOO_MANY)),
    ("worker", "--storage", "sqlite:///{tmp}/study.db", "--workers", str(TOO_MANY)),
])
def test_thread_and_process_counts_are_bounded_by_the_usable_cores(hwnas, tmp_path, args):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    error_line(hwnas(*args, *(("--out", tmp_path / "run") if args[0] != "worker" else ())),
             f"{args[-2]} {TOO_MANY}: this process may use {available_cores()} CPU core(s), so at most "
             f"{TOO_MANY - 1}")
    assert not list(tmp_path.iterdir())


# ---- latency bundle and import -----------------------------------------------------------------------------------
@pytest.mark.parametrize("count", ["100000000", "-5"])
def test_a_bundle_calibration_count_out_of_range_is_refused(hwnas, small, tmp_path, count):
    root, space = small
    error_line(hwnas("latency", "bundle", "--space", space, "--calibration", count, "--out", tmp_path / "b.zip"),
             f"--calibration {count}: give 0 (no correction) to 100")
    error_line(hwnas("latency", "profile", "--space", space, "--device", "d2", "--calibration", count,
                   "--tables-dir", tmp_path / "tables"), f"--calibration {count}")
    assert not list(tmp_path.iterdir())


def test_a_bundle_never_overwrites_a_file_that_is_not_a_bundle(hwnas, small, tmp_path):
    root, space = small
    precious = tmp_path / "notes.zip"
    precious.write_text("my notes")
    error_line(hwnas("latency", "bundle", "--space", space, "--calibration", "0", "--out", precious),
             f"--out {precious} exists and is not an hwnas bundle")
    assert precious.read_text() == "my notes"
    again = tmp_path / "again.zip"
    again.write_bytes((root / "bundle.zip").read_bytes())  # an earlier bundle is replaced
    assert hwnas("latency", "bundle", "--space", space, "--calibration", "0", "--out", again).returncode == 0


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["blocks"][next(iter(d["blocks"]))].update(p50_ms=float("inf")), "p50_ms is inf, not a finite"),
    (lambda d: d["blocks"][next(iter(d["blocks"]))].update(p50_ms=1e300), "at most 600000 ms"),
    (lambda d: d["models"][next(iter(d["models"]))].update(p50_ms=1e12, p90_ms=1e12), "at most 600000 ms"),
    (lambda d: d["overhead"][next(iter(d["overhead"]))].update(std_ms=float("nan")), "std_ms is nan"),
    (lambda d: d["manifest"]["models"][0]["arch"].update(space="nope"), "models[0].arch is not an arch of space"),
])
def test_imported_latencies_must_be_finite_plausible_and_of_the_bundles_space(hwnas, small, tmp_path, damage,
                                                                             message):
    root, _ = small
    data = forged_results(root / "bundle.zip")
    damage(data)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(data))  # Infinity and NaN as JSON writes them
    error_line(hwnas("latency", "import", results, "--tables-dir", tmp_path / "tables"), message)
    assert not (tmp_path / "tables" / "edge").exists()
    assert not [p for p in (tmp_path / "tables").glob(".import*")]


def test_forged_results_without_damage_import(small, tmp_path):
    from nas.latency.bundle import import_results

    root, _ = small
    (tmp_path / "results.json").write_text(json.dumps(forged_results(root / "bundle.zip")))
    assert import_results(tmp_path / "results.json", tables_dir=tmp_path / "tables")["device"] == "edge"


# ---- recipes -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("epochs: 3\nwarmup_epochs: 5\n", "warmup_epochs (5) must be below epochs (3)"),
    ("epochs: 3\nwarmup_epochs: 3\n", "warmup_epochs (3) must be below epochs (3)"),
    ("lr: .inf\n", "key 'lr': Input should be a finite number"),
    ("weight_decay: .nan\n", "key 'weight_decay': Input should be a finite number"),
])
def test_a_recipe_that_cannot_train_as_written_is_refused(hwnas, tmp_path, text, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    error_line(hwnas("train", "fbnet_a", "--recipe", recipe, "--out", tmp_path / "run"), message)
    assert not (tmp_path / "run").exists()


def test_fewer_epochs_than_the_warm_up_shorten_the_warm_up():
    recipe = Recipe(epochs=10, warmup_epochs=2).updated(epochs=1)
    assert (recipe.epochs, recipe.warmup_epochs) == (1, 0)
    derived = Recipe(epochs=10, warmup_epochs=4).model_copy(update={"epochs": 2})  # a search's capped epochs
    assert lr_factor(derived, 10, 10) == 1.0  # the last epoch runs the schedule, not the warm-up
    assert lr_factor(derived, 0, 10) == pytest.approx(0.1)


# ---- storages and studies ----------------------------------------------------------------------------------------
SEARCH = ("search", "nars", "--space", f"table:{BENCH_TABLE}", "--objective", "val_accuracy", "--latency-column",
          "latency_ms", "--target-ms", "0.07", "--budget", "4")


@pytest.mark.parametrize("args, message", [
    (("--storage", "sqlite:///"), "names no SQLite file"),
    (("--storage", ""), "--storage is empty"),
    (("--storage", "not a url"), "is not a storage URL"),
    (("--study", ""), "--study is empty"),
    (("--study", "  "), "--study is empty"),
])
def test_empty_or_fileless_storages_and_study_names_are_refused(hwnas, tmp_path, args, message):
    error_line(hwnas(*SEARCH, *args, "--out", tmp_path / "run"), message)
    assert not (tmp_path / "run").exists()
    if args[0] == "--storage":
        error_line(hwnas("worker", *args), message)
        error_line(hwnas("search", "status", *args), message)


def test_worker_and_status_on_a_mistyped_sqlite_path_create_nothing(hwnas, tmp_path):
    typo = tmp_path / "run" / "stduy.db"
    for command in (("worker",), ("search", "status")):
        error_line(hwnas(*command, "--storage", f"sqlite:///{typo}"), f"no Optuna study at {typo} (no such file)")
    assert not typo.exists() and not (tmp_path / "run").exists()


def test_status_of_a_study_not_made_by_hwnas_is_refused(hwnas, tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'plain.db'}"
    optuna.create_study(storage=url, study_name="plain").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    before = (tmp_path / "plain.db").read_bytes()
    error_line(hwnas("search", "status", "--storage", url, "--study", "plain"),
               "study 'plain' was not made by `hwnas search`")
    assert (tmp_path / "plain.db").read_bytes() == before  # read, not converted to WAL mode


# ---- latency check --model ---------------------------------------------------------------------------------------
def test_latency_check_refuses_a_missing_or_non_onnx_model(hwnas, small, tmp_path):
    root, _ = small
    tables = root / "tables"
    error_line(hwnas("latency", "check", "dev", "--model", tmp_path / "missing.onnx", "--tables-dir", tables),
             "missing.onnx: no such file")
    for name, content in (("notes.onnx", b"just text"), ("empty.onnx", b"")):
        (tmp_path / name).write_bytes(content)
        error_line(hwnas("latency", "check", "dev", "--model", tmp_path / name, "--tables-dir", tables),
                 f"--model {tmp_path / name}: not an ONNX model")
