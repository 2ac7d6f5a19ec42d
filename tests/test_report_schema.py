"""Every registered search, run through the Strategy protocol on a tiny case, writes a report.json with the one
shared schema (nas.search.report.SharedReport), its method's detail under its own key, and the winner in arch.json.
Every search with a latency target is given one relative to the device (``nas.search.targets``), and its report
keeps the form given (``target``) beside the milliseconds it resolved to (``target_ms``)."""

import json

import pytest
import torch
from test_capacity import FAST_TIMING
from test_capacity import TINY as VIT_TINY
from test_dnas_support import (
    TINY,
    TINY_V2,
    digits_npz,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    profiled_space,
)
from test_predict_fixtures import BENCH_TABLE
from test_quant_cli import TINY as QUANT_TINY

from nas.errors import SearchError
from nas.search.report import SHARED_KEYS, SharedReport, detail_key
from nas.search.strategy import STRATEGIES, get_strategy, open_run


@pytest.fixture(scope="module")
def capacity_case(tmp_path_factory):
    """A tiny dynamic-capacity ViT trained one epoch, and its token-count units profiled (fast timing)."""
    from nas.data.dataset import load_dataset
    from nas.latency.device import Device
    from nas.latency.profile import profile_items
    from nas.search.capacity.checkpoint import save_dynamic_vit
    from nas.search.capacity.latency import capacity_profile_items
    from nas.search.capacity.space import load_capacity_space
    from nas.search.capacity.training import train_dynamic
    from nas.search.capacity.vit import DynamicViT

    folder = tmp_path_factory.mktemp("capacity")
    (folder / "vit_tiny.yaml").write_text(VIT_TINY)
    space = load_capacity_space(str(folder / "vit_tiny.yaml"), in_channels=1, classes=10)
    torch.manual_seed(0)
    result = train_dynamic(DynamicViT(space), load_dataset("digits", resolution=16, seed=0),
                           space.recipe().model_copy(update={"epochs": 1}))
    ckpt = save_dynamic_vit(result.model, folder / "model.pt", {"dataset": "digits", "seed": 0})
    profile_items(Device(device_id="vit-dev"), capacity_profile_items(space), tables_dir=folder / "tables",
                  timing=FAST_TIMING)
    return folder, ckpt


TARGETS: dict[str, str] = {}  # the target each tiny case is given (mixed precision: a size cost, no latency target)


def _config(name: str, tmp_path_factory, capacity_case):
    if name in ("dnas", "dmasking"):
        from nas.search.dnas.search import SupernetSearchSettings
        from nas.search.dnas.strategy import SearchJob
        from nas.train.recipe import Recipe

        text, device = (TINY, "test-tiny") if name == "dnas" else (TINY_V2, "test-v2")
        path, tables, _ = profiled_space(tmp_path_factory, text, name, device)
        TARGETS[name] = "p50" if name == "dnas" else f"0.9x:{path}"  # a percentile; a fraction of the largest arch
        return SearchJob(method=name, space=str(path), device=device, dataset=f"npz:{digits_npz(path.parent)}",
                         resolution=16, width=1.0, tables_dir=str(tables),
                         settings=SupernetSearchSettings(epochs=2, op_paths=1), recipe=Recipe(epochs=1, batch_size=64),
                         target=TARGETS[name])
    if name in ("nars", "chamnet", "optuna"):
        from nas.search.predict.search_setup import PredictorSearchSettings

        TARGETS[name] = "p40"
        return PredictorSearchSettings(strategy=name, space=f"table:{BENCH_TABLE}", objective="val_accuracy",
                                       latency_columns=["latency_ms"], budget=8, init=4, batch=2, pool=64,
                                       generations=3, population=64, targets=[TARGETS[name]])
    if name == "mixed-precision":
        from nas.search.quant.prepare import MixedPrecisionConfig, MixedPrecisionJob
        from nas.search.quant.search import SearchConfig

        folder = tmp_path_factory.mktemp("quant")
        (folder / "qtiny.yaml").write_text(QUANT_TINY)
        return MixedPrecisionJob(arch=str(folder / "qtiny.yaml"), device="nowhere", resolution=16,
                                 tables_dir=str(folder),
                                 settings=MixedPrecisionConfig(pretrain_epochs=1, search=SearchConfig(epochs=2),
                                                               finetune_epochs=1, latency_fit_models=0))
    if name == "capacity":
        from nas.search.capacity.strategy import CapacityJob

        folder, ckpt = capacity_case
        TARGETS[name] = "p50"
        return CapacityJob(space=str(folder / "vit_tiny.yaml"), checkpoint=str(ckpt), device="vit-dev",
                           target=TARGETS[name], trials=3, measure=False, tables_dir=str(folder / "tables"))
    raise AssertionError(f"no tiny case for strategy {name!r}")


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_search_writes_the_shared_report_and_arch_json(name, tmp_path, tmp_path_factory, capacity_case):
    strategy = get_strategy(name)(_config(name, tmp_path_factory, capacity_case))
    prepared = strategy.prepare()
    run = open_run(strategy, prepared, tmp_path / "run")
    returned = strategy.run(prepared, run)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report == returned
    SharedReport.model_validate(report)
    assert list(report)[:len(SHARED_KEYS)] == list(SHARED_KEYS) and report["method"] == name
    assert isinstance(report[detail_key(name)], dict)
    assert report["winner"] == "arch.json" and (tmp_path / "run" / "arch.json").is_file()
    assert report["target"] == TARGETS.get(name)  # as given ...
    assert (report["target_ms"] is None) is (name not in TARGETS)  # ... and resolved on the device
    assert json.loads((tmp_path / "run" / "config.json").read_text()).get("target", TARGETS.get(name)) == \
        TARGETS.get(name)
    if report["model"] is not None:
        assert (tmp_path / "run" / report["model"]).is_file() and report["measured_ms"] > 0
        assert 0.0 <= report["onnx_max_abs_diff"] < (0.5 if name == "mixed-precision" else 1e-3)  # int8 layers
        assert 0.0 <= report["accuracy"] <= 1.0
        if report["predicted_ms"] is not None:
            error = 100.0 * (report["measured_ms"] - report["predicted_ms"]) / report["predicted_ms"]
            assert report["prediction_error_pct"] == pytest.approx(error)


def test_bad_settings_fail_before_the_run_directory(tmp_path, tmp_path_factory, capacity_case):
    capacity = _config("capacity", tmp_path_factory, capacity_case)
    capacity.trials = 0
    with pytest.raises(SearchError, match="--trials must be at least 1"):
        get_strategy("capacity")(capacity).prepare()
    optuna = _config("optuna", tmp_path_factory, capacity_case)
    optuna.sampler = "foo"
    with pytest.raises(SearchError, match="--sampler 'foo'"):
        get_strategy("optuna")(optuna).prepare()
    with pytest.raises(SearchError, match=r"unknown search strategy 'random' \(known: dnas, dmasking"):
        get_strategy("random")
