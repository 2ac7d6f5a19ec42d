"""Reliability (issue 16): the same seed gives the same model, no silent NaN, no traceback for a careless input,
no poisoned run directory, no search that spins without progress, no secret in a report, the user's file modes."""

import json
import os
import random
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from test_predict_fixtures import BENCH_TABLE, TINY_SPACE_YAML, InProcess
from torch import nn

from nas.data.dataset import Dataset, load_dataset
from nas.errors import DataError, HwnasError, OutputError, SearchError, TrainingError
from nas.files import write_json
from nas.run import RunDir
from nas.search.blackbox.history import History
from nas.search.blackbox.problem import TableProblem, parse_constraint
from nas.search.predict.nars import NarsConfig, run_nars
from nas.search.predict.table_space import TableEvaluator, TableSpace
from nas.train.recipe import Recipe
from nas.train.training import train_model


@pytest.fixture
def hwnas(capsys, monkeypatch):
    return InProcess(capsys, monkeypatch)


def one_line_error(r, *fragments):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def tiny_data(n=60, classes=3, size=8) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, size, size, generator=g), torch.arange(n) % classes
    return Dataset.from_tensors("tiny", x, y, x[:12], y[:12], x[:12], y[:12], classes)


# ---- 1. reproducible -----------------------------------------------------------------------------------------------
def test_train_twice_with_the_same_seed_gives_identical_weights_and_accuracy(hwnas, tmp_path):
    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE_YAML)
    runs = []
    for name in ("a", "b"):
        r = hwnas("train", space, "--resolution", "8", "--epochs", "1", "--seed", "3", "--out", tmp_path / name)
        assert r.returncode == 0, r.stderr
        runs.append(tmp_path / name)
    reports = [json.loads((p / "report.json").read_text()) for p in runs]
    assert reports[0]["accuracy"] == reports[1]["accuracy"]
    states = [torch.load(p / "checkpoint.pt", weights_only=True)["model"] for p in runs]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


# ---- 2. NaN --------------------------------------------------------------------------------------------------------
def test_non_finite_data_is_an_error_naming_the_array_and_the_count(tmp_path):
    x = np.random.default_rng(0).random((40, 8, 8)).astype(np.float32)
    x[3, 2, 2], x[7, 0, 0] = np.nan, np.inf
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 2)
    with pytest.raises(DataError, match=r"array 'x' holds 2 non-finite values"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")


def test_a_loss_that_turns_non_finite_stops_training():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with torch.no_grad():
        model[1].weight[0, 0] = float("inf")
    with pytest.raises(TrainingError, match="training loss became nan in epoch 1"):
        train_model(model, tiny_data(), Recipe(epochs=2, batch_size=16, ema=0.0))


def test_no_json_file_ever_holds_nan_or_infinity(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"a": float("nan"), "b": [float("inf"), np.float32("nan"), 1.5], "c": np.array([1.0, -np.inf]),
                      "d": {"e": torch.tensor(float("nan"))}, "n": np.int64(3)})

    def refuse(constant):
        raise AssertionError(f"{constant} in {path}")
    assert json.loads(path.read_text(), parse_constant=refuse) == {"a": None, "b": [None, None, 1.5],
                                                                   "c": [1.0, None], "d": {"e": None}, "n": 3}


def test_the_parity_check_treats_a_nan_output_as_a_failure(tmp_path):
    from nas.models.onnx_io import export_onnx, onnx_max_abs_diff

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    path = export_onnx(model, (1, 2, 2), tmp_path / "m.onnx")
    with torch.no_grad():
        model[1].bias[0] = float("nan")
    assert onnx_max_abs_diff(model, path, torch.randn(3, 1, 2, 2)) == float("inf")


# ---- 3. bad history rows, and no search spinning without progress -------------------------------------------------
def _table_problem():
    table = TableSpace(BENCH_TABLE, "val_accuracy", ["latency_ms"], proxy_columns=["macs", "params"],
                       metric_columns=["test_accuracy"])
    problem = TableProblem(table, TableEvaluator(table))
    constraint = parse_constraint(f"{np.median(table.values['latency_ms']):.4f}", problem.devices)
    return problem, constraint


def _history_file(tmp_path, rows=4):
    problem, c = _table_problem()
    path = tmp_path / "history.csv"
    history = History(problem, rows, [c], path)
    for genome in problem.pool(rows, 0)[:rows]:
        history.evaluate(genome, "init")
    return path, c


def test_a_history_row_with_a_nan_objective_is_an_error_naming_the_row(tmp_path):
    path, c = _history_file(tmp_path)
    frame = pd.read_csv(path)
    frame.loc[2, "m:val_accuracy"] = np.nan  # a hand edit: line 4 of the file
    frame.to_csv(path, index=False)
    with pytest.raises(SearchError, match=r"history.csv: line 4 \(key .*\): val_accuracy is '', not a finite"):
        History(_table_problem()[0], 10, [c], path)


def test_a_torn_history_row_is_an_error_naming_the_row(tmp_path):
    path, c = _history_file(tmp_path)
    text = path.read_text()
    last = text.rstrip("\n").rfind("\n") + 1
    path.write_text(text[:text.index('",', last) + 30])  # the last row cut short, a little after its key
    with pytest.raises(SearchError, match=r"line 5 \(key .*\): val_accuracy is .*not a finite number"):
        History(_table_problem()[0], 10, [c], path)


class NanPredictor:
    """A predictor that diverged: every prediction is NaN, so no candidate can be picked."""

    pretrain_loss = None

    def fit(self, x, y):
        return self

    def predict(self, x):
        return np.full(len(x), np.nan)


def test_a_nars_round_that_adds_no_evaluation_ends_the_search(monkeypatch):
    import nas.search.predict.nars as nars

    monkeypatch.setattr(nars, "make_predictor", lambda kind, seed, **kw: NanPredictor())
    problem, c = _table_problem()
    history = History(problem, 24, [c])
    result = run_nars(problem, [c], history, NarsConfig(budget=24, init=6, batch=4, pretrain=False, cv_folds=0))
    assert history.used == 6  # the initial sample, then the first round could pick nothing
    assert result.stopped and "round 1 added no evaluation" in result.stopped
    assert result.rounds[-1]["stopped"] == result.stopped


# ---- 4. one line and exit 2 instead of a traceback ----------------------------------------------------------------
def test_out_that_is_a_file_or_unwritable_is_one_line(hwnas, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(hwnas("space", "sample", "fbnet", "--out", blocker / "a.json"), "is a file, not a folder")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        RunDir(blocker, {"a": 1})
    with pytest.raises(OutputError, match="is a file, not a folder"):
        RunDir(blocker / "run", {"a": 1})


def test_unwritable_out_is_an_output_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("tempfile.mkstemp", refuse)  # as a read-only folder does for a user who is not root
    with pytest.raises(OutputError, match=r"cannot write .*config.json: Permission denied"):
        RunDir(tmp_path / "run", {"a": 1})


def test_tables_dir_that_is_a_file_is_one_line(hwnas, tmp_path):
    blocker = tmp_path / "tables"
    blocker.write_text("x")
    one_line_error(hwnas("latency", "profile", "--space", "fbnet", "--device", "d1", "--tables-dir", blocker),
                   "is a file, not a folder")


def test_a_binary_arch_json_is_one_line(hwnas, tmp_path):
    arch = tmp_path / "arch.json"
    arch.write_bytes(bytes(range(256)) * 4)
    one_line_error(hwnas("space", "show", arch), "invalid JSON")


def _results(**manifest_changes):
    from nas.latency import remote_measure

    manifest = {"format": remote_measure.BUNDLE_FORMAT, "bundle_id": "b1", "space": "fbnet", "space_args": {},
                "overhead": [{"id": "1", "file": "o.onnx", "mb": 0.1}],
                "blocks": [{"id": "k", "file": "b.onnx", "macs": 1, "params": 1, "in_bytes": 4, "out_bytes": 4}],
                "models": [{"id": "m", "file": "m.onnx", "arch": {}, "keys": []}]}
    for where, value in manifest_changes.items():
        group, _, field = where.partition("__")
        if field:
            manifest[group][0][field] = value
        elif value is None:
            del manifest[group]
        else:
            manifest[group] = value
    return {"format": remote_measure.RESULTS_FORMAT, "bundle_id": "b1", "device": {"device_id": "remote-1"},
            "manifest": manifest, "overhead": {}, "blocks": {}, "models": {}}


@pytest.mark.parametrize("changes, field", [
    ({"overhead__mb": "0.1"}, "overhead[0].mb"), ({"blocks__macs": None}, "blocks[0].macs"),
    ({"models__keys": "a b"}, "models[0].keys"), ({"space": None}, "'space'"), ({"blocks": {}}, "'blocks'")])
def test_latency_import_of_a_bad_manifest_field_is_one_line(hwnas, tmp_path, changes, field):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results(**changes)))
    one_line_error(hwnas("latency", "import", path, "--tables-dir", tmp_path / "tables"),
                   f"manifest {field} is missing or not a")


def _measure(tmp_path, manifest, *args):
    from nas.latency import remote_measure

    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w") as z:
        z.writestr("manifest.json", json.dumps(manifest))
    with pytest.raises(SystemExit) as e:
        remote_measure.main([str(bundle), "--out", str(tmp_path / "results.json"), *args])
    return str(e.value.code)


def test_measure_py_with_a_corrupt_bundle_or_resume_file_exits_with_an_error_line(tmp_path):
    from nas.latency import remote_measure

    good = {"format": remote_measure.BUNDLE_FORMAT, "bundle_id": "b1", "overhead": [], "blocks": [], "models": []}
    assert _measure(tmp_path, {**good, "blocks": None}).startswith("error: ")
    assert "corrupt bundle" in _measure(tmp_path, {**good, "blocks": [{"id": "k", "file": "blocks/gone.onnx"}]})
    (tmp_path / "results.json").write_text('{"format": "hwnas-latency-res')  # a resume file cut short
    assert "corrupt resume file" in _measure(tmp_path, good)


def test_a_truncated_search_checkpoint_says_it_is_corrupt_and_how_to_restart(tmp_path):
    from nas.train.engine import load_checkpoint

    path = tmp_path / "search_checkpoint.pt"
    torch.save({"supernet": {"w": torch.randn(100, 100)}, "history": "[]"}, path)
    path.write_bytes(path.read_bytes()[:20_000])
    with pytest.raises(SearchError, match="corrupt search checkpoint .*delete it to restart"):
        load_checkpoint(path, "search", SearchError)


def test_latency_predict_refuses_bits_it_cannot_cost(hwnas):
    one_line_error(hwnas("latency", "predict", "fbnet_a", "--device", "d", "--bits", "4"), "--bits must be 32")


def test_a_binary_capacity_checkpoint_sidecar_is_a_checkpoint_error(tmp_path):
    from nas.search.capacity.checkpoint import CheckpointError, read_sidecar

    checkpoint = tmp_path / "model.json"  # the sidecar of model.json is itself
    checkpoint.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="invalid JSON"):
        read_sidecar(checkpoint)


# ---- 5. run directories ---------------------------------------------------------------------------------------------
def test_a_run_directory_with_only_the_config_of_a_failed_start_may_be_reused(tmp_path):
    RunDir(tmp_path / "run", {"trials": 0})  # the start failed after config.json
    run = RunDir(tmp_path / "run", {"trials": 5})
    assert not run.resumed and json.loads((tmp_path / "run" / "config.json").read_text()) == {"trials": 5}
    run.write_json("report.json", {})
    with pytest.raises(SearchError, match="started with other settings"):
        RunDir(tmp_path / "run", {"trials": 6})
    assert RunDir(tmp_path / "run", {"trials": 5}).resumed


# ---- 6. silently wrong ------------------------------------------------------------------------------------------
def test_train_threads_0_is_refused_before_anything_is_written(hwnas, tmp_path):
    one_line_error(hwnas("train", "fbnet_a", "--threads", "0", "--out", tmp_path / "run"), "--threads must be")
    assert not (tmp_path / "run").exists()


def test_validate_samples_is_bounded(hwnas, tmp_path):
    one_line_error(hwnas("latency", "validate", "--space", "fbnet", "--device", "d", "--samples", "100000000",
                         "--out", tmp_path / "run"), "--samples must be 2 to")


# ---- 7. secrets and permissions -------------------------------------------------------------------------------------
def test_a_storage_password_is_masked_in_errors_and_in_the_config():
    from nas.search.blackbox.study import masked_url, open_storage
    from nas.search.predict.search_setup import PredictorSearchSettings

    url = "postgresql+psycopg2://alice:s3cret@127.0.0.1:1/db"
    assert masked_url(url) == "postgresql+psycopg2://alice:***@127.0.0.1:1/db"
    with pytest.raises(SearchError) as e:
        open_storage(url)
    assert "s3cret" not in str(e.value) and "alice:***@" in str(e.value)
    config = PredictorSearchSettings(strategy="optuna", space="fbnet", storage=url).config()
    assert config["storage"] == masked_url(url) and "s3cret" not in json.dumps(config)


def test_a_device_id_with_a_trailing_newline_is_refused():
    from nas.errors import LatencyTableError
    from nas.latency.table import check_device_id

    assert check_device_id("phone-1") == "phone-1"
    with pytest.raises(LatencyTableError, match="invalid device id"):
        check_device_id("phone-1\n")


def test_files_are_written_with_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
        RunDir(tmp_path / "run", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "run" / "config.json").stat().st_mode & 0o777 == 0o644


# ---- 9. smaller ---------------------------------------------------------------------------------------------------
def test_the_calibration_bar_ends_at_its_total():
    from cli.cmd_latency import advance_to

    shown = []
    on_progress = advance_to(lambda n=1, note="": shown.append(n))
    on_progress(0, 8, "already measured")  # what calibrate reports: done counts, first the ones measured before
    for i in range(1, 9):
        on_progress(i, 8, "exported")
    assert sum(shown) == 8


def test_train_history_epochs_stay_integers_after_a_resume(tmp_path):
    ckpt = tmp_path / "checkpoint.pt"
    recipe = Recipe(epochs=1, batch_size=16, ema=0.0)
    train_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), tiny_data(), recipe, checkpoint=ckpt)
    result = train_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), tiny_data(),
                         recipe.model_copy(update={"epochs": 2}), checkpoint=ckpt)
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert all(type(r["epoch"]) is int for r in result.history)


def test_a_binary_file_is_not_an_npz_file(tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DataError, match="not an .npz file") as e:
        load_dataset(f"npz:{path}")
    assert "pickle" not in str(e.value)


# ---- malformed inputs to every loader: a typed error or success, never another exception ----------------------------
SPACE_LINES = ["name: fuzz", "resolution: 32", "classes: 10", "stem: [conv_k3, 8, 2]", "candidates: [ir_k3_e1, skip]",
               "stages:", "  - {channels: 8, repeat: 1, stride: 1}", "head: [conv_k1, 32]", "channel_options: [1.0]"]
RECIPE_LINES = ["epochs: 2", "lr: 0.1", "optimizer: sgd", "batch_size: 32", "schedule: cosine", "ema: 0.0"]
ARCH = json.dumps({"space": "fbnet", "ops": ["skip"] * 22, "space_args": {"resolution": 32}})
JUNK = ["", "\x00", "\xff", "{", "}", "[", "]", ":", "- ", "!!python/object:os.system", "&a", "*a", "nan", "1e999",
        "-", "\"", "'", ",", "\t", "\n", "null", "true", "[1, 2", "{a: {b: [", "\\u0000", "ï»¿", "%YAML 1.1",
        "---", "...", "? ", "|", ">", "#", "@", "`", "<<: *a", "1" * 40, "ops", "key", "m:val_accuracy"]


def _mutate(rng: random.Random, text: str) -> bytes:
    """``text`` with random cuts, junk insertions, deletions, duplications and byte flips."""
    data = text
    for _ in range(rng.randint(1, 4)):
        i = rng.randint(0, len(data))
        op = rng.choice(["insert", "delete", "cut", "duplicate", "swap"])
        if op == "insert":
            data = data[:i] + rng.choice(JUNK) + data[i:]
        elif op == "delete":
            data = data[:i] + data[i + rng.randint(1, 12):]
        elif op == "cut":
            data = data[:i]
        elif op == "duplicate":
            data = data[:i] + data[i:i + rng.randint(1, 30)] * 2 + data[i + 30:]
        else:
            lines = data.split("\n")
            rng.shuffle(lines)
            data = "\n".join(lines)
    raw = data.encode("utf-8", "surrogateescape")
    if rng.random() < 0.1:
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + raw
    return raw


def _latency_table_folder(tmp_path):
    from nas.arch.opkey import OpKey
    from nas.latency.table import COLUMNS, MANIFEST_FILE, DeviceManifest, encode_row

    folder = tmp_path / "dev"
    folder.mkdir()
    write_json(folder / MANIFEST_FILE, DeviceManifest.for_this_machine("dev").to_dict())
    rows = [encode_row(OpKey.parse(k), {"p50_ms": 0.1 * (i + 1), "p90_ms": 0.2, "mean_ms": 0.1, "std_ms": 0.01,
                                        "count": 10, "spread": 0.1, "stable": True, "overhead_ms": 0.01, "macs": 100,
                                        "params": 10, "in_bytes": 4, "out_bytes": 4})
            for i, k in enumerate(_some_keys())]
    return folder, ",".join(COLUMNS) + "\n" + "".join(rows)


def _some_keys():
    from nas.arch.space import load_space
    from nas.latency.profile import space_profile_items

    return [str(item.key) for item in space_profile_items(load_space("fbnet", resolution=32))[:3]]


def test_random_malformed_inputs_to_the_loaders_give_a_typed_error_or_success(tmp_path):
    from nas.arch.space import load_arch, load_space
    from nas.latency.table import TABLE_FILE, LatencyTable
    from nas.train.recipe import load_recipe

    history_path, c = _history_file(tmp_path)
    history_text = history_path.read_text()
    problem = _table_problem()[0]
    table_folder, table_text = _latency_table_folder(tmp_path)
    loaders = {
        "space.yaml": ("\n".join(SPACE_LINES) + "\n", lambda p: load_space(str(p))),
        "recipe.yaml": ("\n".join(RECIPE_LINES) + "\n", load_recipe),
        "recipe.json": (json.dumps(dict(line.split(": ") for line in RECIPE_LINES)), load_recipe),
        "arch.json": (ARCH, lambda p: load_arch(str(p))),
        "history.csv": (history_text, lambda p: History(problem, 10, [c], p)),
        TABLE_FILE: (table_text, lambda p: LatencyTable.open_folder(p.parent)),
    }
    rng = random.Random(16)
    outcomes = {"ok": 0, "typed error": 0}
    for case in range(240):
        name = list(loaders)[case % len(loaders)]
        text, load = loaders[name]
        path = (table_folder if name == TABLE_FILE else tmp_path) / name
        path.write_bytes(_mutate(rng, text))
        try:
            load(path)
            outcomes["ok"] += 1
        except HwnasError as e:
            assert str(e).strip(), name
            outcomes["typed error"] += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{name} case {case}: {type(e).__name__}: {e}\n--- input ---\n{path.read_bytes()[:400]!r}")
    assert outcomes["typed error"] > 60 and outcomes["ok"] > 0, outcomes
