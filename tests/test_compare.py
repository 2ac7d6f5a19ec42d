"""hwnas compare (width-scaled published models against searched winners), the --cost flops ablation, how decided a
search ended, and MobileNetV2 as a fixed model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
from test_dnas_support import (
    FAST,
    TINY_V2,
    digits_npz,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    profiled_space,
    tiny_space,
)
from test_predict_fixtures import InProcess, profiled_devices, tiny_space_file  # noqa: F401  (fixtures)

from nas.errors import LatencyTableError
from nas.latency.calibrate import calibrate
from nas.latency.device import Device
from nas.latency.model import LatencyModel
from nas.latency.timing import LatencyStats
from nas.models.builder import build_model, count_macs
from nas.models.onnx_io import export_onnx
from nas.search.compare.runs import read_run
from nas.search.compare.scaling import WIDTHS, scale_to_latency, scaled_space
from nas.search.dnas.distribution import ArchDistribution
from nas.search.dnas.flops_cost import FlopsLatencyModel
from nas.search.dnas.latency_terms import LatencyTerms
from nas.search.dnas.search import SupernetSearchSettings
from nas.search.dnas.strategy import SearchJob, SupernetStrategy
from nas.search.strategy import get_strategy, open_run
from nas.train.recipe import Recipe


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The tiny DMasking space profiled on its own device, with four calibration models (fast timing)."""
    path, tables, _ = profiled_space(tmp_path_factory, TINY_V2, "tiny_cmp", "test-cmp")
    calibrate(Device(device_id="test-cmp"), tiny_space(path), models=4, tables_dir=tables, timing=FAST)
    return {"path": path, "tables": tables, "digits": digits_npz(path.parent),
            "lm": LatencyModel.load("test-cmp", tables), "space": tiny_space(path)}


def _search(case, out: Path, cost: str = "latency") -> dict:
    job = SearchJob(method="dmasking", space=str(case["path"]), device="test-cmp", dataset=f"npz:{case['digits']}",
                    resolution=16, width=1.0, tables_dir=str(case["tables"]), settings=SupernetSearchSettings(epochs=2),
                    recipe=Recipe(epochs=1, batch_size=64), cost=cost)
    strategy = SupernetStrategy(job)
    prepared = strategy.prepare()
    return strategy.run(prepared, open_run(strategy, prepared, out))


# ---- MobileNetV2 -----------------------------------------------------------------------------------------------
def test_mobilenet_v2_matches_its_published_macs_and_params(cli):
    """300 M MACs and 3.47 M params at 224 px, width 1.0 (Sandler et al. 2018; the authors' TF-slim table gives
    3.47 M, which the paper rounds to 3.4 M), counted as `hwnas space show` counts them (BN folded)."""
    r = cli("space", "show", "mobilenet_v2", "--resolution", "224", "--classes", "1000", "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["macs"] == pytest.approx(300e6, rel=0.01)
    assert shown["params"] == pytest.approx(3.47e6, rel=0.01)
    assert not shown["searchable"] and len(shown["blocks"]) == 1 + 17 + 2


# ---- the FLOPs cost ---------------------------------------------------------------------------------------------
def test_flops_cost_is_a_line_in_macs_fitted_on_the_calibration_models(case, monkeypatch):
    lm, space = case["lm"], case["space"]
    monkeypatch.setattr(lm, "correction", replace(lm.correction, per_reorder_ms=0.001, per_weight_mb_ms=0.02))
    flops = FlopsLatencyModel.fit_on_calibration(lm)  # the table's layout and weight terms stay out of the line
    assert flops.fit.models == 4 and flops.fit.ms_per_mac > 0
    dist = ArchDistribution(space)
    terms = LatencyTerms(dist, flops)
    rng = np.random.default_rng(0)
    for arch in [space.sample(rng) for _ in range(4)]:
        model = build_model(space, arch)
        line = flops.fit.intercept_ms + flops.fit.ms_per_mac * count_macs(model, model.input_shape)
        assert flops.predict(space, arch) == pytest.approx(line, rel=1e-9)
        assert terms.arch_ms(*dist.indices(arch)) == pytest.approx(line, rel=1e-9)
    assert terms.estimated_keys() == []


def test_flops_cost_needs_calibration_models(tmp_path_factory):
    _, tables, _ = profiled_space(tmp_path_factory, TINY_V2, "tiny_uncal", "test-uncalibrated")
    with pytest.raises(LatencyTableError, match="calibration models of device 'test-uncalibrated'"):
        FlopsLatencyModel.fit_on_calibration(LatencyModel.load("test-uncalibrated", tables))


def test_searches_report_their_cost_and_how_decided_they_ended(case, tmp_path):
    flops = _search(case, tmp_path / "flops", cost="flops")
    detail = flops["dmasking"]
    assert detail["cost"] == "flops" and detail["flops_fit"]["models"] == 4
    fit = detail["flops_fit"]
    assert flops["predicted_ms"] == pytest.approx(fit["intercept_ms"] + fit["ms_per_mac"] * detail["macs_of_arch"])
    assert detail["table_predicted_ms"] > 0
    assert json.loads((tmp_path / "flops" / "config.json").read_text())["cost"] == "flops"
    for kind in ("ops", "channels", "resolution"):
        figures = detail["decidedness"][kind]
        assert 0 <= figures["mean_entropy_nats"] <= figures["uniform_entropy_nats"] + 1e-9
        assert figures["uniform_argmax_probability"] <= figures["mean_argmax_probability"] <= 1
    history = pd.read_csv(tmp_path / "flops" / "history.csv")
    assert {"entropy_ops", "argmax_p_ops", "entropy_channels", "argmax_p_resolution"} <= set(history)
    # every contender trains on the run's split: its split seed where one was given apart from the search's seed
    assert read_run(tmp_path / "flops").data_seed == 0
    config = json.loads((tmp_path / "flops" / "config.json").read_text())
    (tmp_path / "flops" / "config.json").write_text(json.dumps({**config, "split_seed": 3}))
    assert read_run(tmp_path / "flops").data_seed == 3


# ---- width scaling ----------------------------------------------------------------------------------------------
class ParamsDevice:
    """Times an ONNX file as proportional to its weights (deterministic, so the search's logic is what is tested)."""

    def time_files(self, paths, timing=None, on_round=None):
        out = []
        for p in paths:
            ms = 1e-5 * sum(int(np.prod(t.dims)) for t in onnx.load(str(p)).graph.initializer)
            out.append(LatencyStats(ms, ms, ms, 0.0, 1, 0.0, True))
        return out


@pytest.mark.parametrize("width", [WIDTHS[40], WIDTHS[110]])
def test_width_scaling_finds_the_width_of_the_reference(case, tmp_path, width):
    """The latency model (here mostly its fallback's estimates) guesses first; the timings then lead within 5% of
    the reference, and with no tolerance to the reference's own channels (a width on the grid), even though the
    guess is far off."""
    like = case["space"]
    reference = scaled_space("mobilenet_v2", like, width)
    path = export_onnx(build_model(reference, reference.fixed_arch()).eval(), (1, 16, 16), tmp_path / "ref.onnx")
    choice = scale_to_latency("mobilenet_v2", like, path, 0.01, case["lm"], ParamsDevice())
    assert choice.within_tolerance and abs(choice.measured_ratio - 1) <= 0.05
    assert choice.width in WIDTHS and len(choice.tried) <= 7
    exact = scale_to_latency("mobilenet_v2", like, path, 0.01, case["lm"], ParamsDevice(), tolerance=0.0, rounds=12)
    chosen = scaled_space("mobilenet_v2", like, exact.width)
    assert exact.measured_ratio == pytest.approx(1.0)
    assert [b.c_out for b in chosen.resolve(chosen.fixed_arch())] == \
        [b.c_out for b in reference.resolve(reference.fixed_arch())]


# ---- hwnas compare ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nars_run(tmp_path_factory, tiny_space_file, profiled_devices):  # noqa: F811
    """A finished NARS run on a tiny model space (its winner trained with its own searched recipe)."""
    from nas.search.predict.search_setup import PredictorSearchSettings as PredictorSettings

    tables, _ = profiled_devices
    settings = PredictorSettings(strategy="nars", space=str(tiny_space_file), devices=["dev-a"], budget=2, init=2,
                                 pool=64, generations=2, population=64, tables_dir=str(tables), threads=1)
    strategy = get_strategy("nars")(settings)
    prepared = strategy.prepare()
    out = tmp_path_factory.mktemp("nars") / "run"
    strategy.run(prepared, open_run(strategy, prepared, out))
    return out, tables


def test_compare_a_dmasking_and_a_nars_run_then_resume(case, nars_run, tmp_path, capsys, monkeypatch):
    dm = tmp_path / "dm"
    report = _search(case, dm)
    nars, nars_tables = nars_run
    assert read_run(nars).recipe == Recipe.model_validate_json((nars / "recipe.json").read_text())  # its own
    cli = InProcess(capsys, monkeypatch)
    tables = tmp_path / "tables"  # both devices in one tables folder
    for src in (case["tables"] / "test-cmp", nars_tables / "dev-a"):
        (tables / src.name).mkdir(parents=True)
        for f in src.iterdir():
            if f.is_file():
                (tables / src.name / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "cmp"
    args = ("compare", str(dm), str(nars), "--baseline", "fbnet_a", "--seeds", "2", "--tables-dir", str(tables),
            "--threads", "1", "--out", str(out), "--json")
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    rows = summary["results"]
    assert [(row["run_name"], row["kind"]) for row in rows] == [
        ("dm", "searched"), ("dm", "baseline"), ("run", "searched"), ("run", "baseline")]
    for row in rows:
        assert row["seeds"] == 2 and 0 <= row["accuracy"] <= 1 and row["measured_ms"] > 0
        assert row["accuracy_std"] is not None and row["measured_ms_std"] is not None
        assert row["macs"] > 0 and row["params"] > 0
    searched = rows[0]
    assert searched["label"] == "dmasking" and rows[2]["label"] == "nars"
    models = pd.read_csv(out / "models.csv")
    assert len(models) == 8
    own = models[(models["contender"] == "searched") & (models["seed"] == 0)]
    assert set(own["model"]) == {str(dm / "model.onnx"), str(nars / "model.onnx")}  # seed 0: the run's own model
    assert float(own[own["model"] == str(dm / "model.onnx")]["accuracy"].iloc[0]) == report["accuracy"]
    width = json.loads((out / "dm" / "fbnet_a" / "width.json").read_text())["choice"]
    assert rows[1]["width"] == width["width"] and rows[1]["label"] == f"fbnet_a x{width['width']:g}"
    assert (out / "pareto.png").stat().st_size > 10_000 and (out / "results.csv").is_file()
    trained = sorted(out.glob("*/*/seed*/report.json"))
    assert len(trained) == 6  # searched seed 1 and the baseline's seeds 0 and 1, for both runs
    stamps = {p: p.stat().st_mtime_ns for p in trained}
    again = cli(*args)  # resumes: nothing is trained again, the accuracies are the same
    assert again.returncode == 0, again.stderr
    assert {p: p.stat().st_mtime_ns for p in trained} == stamps
    assert [row["accuracy"] for row in json.loads(again.stdout)["results"]] == [row["accuracy"] for row in rows]


@pytest.mark.parametrize("args, message", [
    (("--baseline", "fbnet_v2"), "--baseline 'fbnet_v2' is not a fixed model (built in: fbnet_a, fbnet_b, fbnet_c, "
                                 "mobilenet_v2)"),
    (("--baseline", "nope"), "--baseline 'nope' is not a fixed model"),
    (("--seeds", "0"), "--seeds must be at least 1"),
])
def test_compare_refuses_bad_input_in_one_line_before_writing(case, tmp_path, capsys, monkeypatch, args, message):
    run = tmp_path / "run"
    run.mkdir()
    cli = InProcess(capsys, monkeypatch)
    out = tmp_path / "cmp"
    r = cli("compare", str(run), *args, "--tables-dir", str(case["tables"]), "--out", str(out))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


def test_compare_names_what_a_folder_lacks(case, tmp_path, capsys, monkeypatch):
    cli = InProcess(capsys, monkeypatch)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text(json.dumps({"command": "search dmasking"}))
    for folder, message in ((tmp_path / "missing", "run directory not found"),
                            (tmp_path / "half", "no report.json (the search has not finished)")):
        r = cli("compare", str(folder), "--out", str(tmp_path / "cmp"))
        assert r.returncode == 2 and message in r.stderr, r.stderr
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "config.json").write_text(json.dumps({"command": "train"}))
    r = cli("compare", str(tmp_path / "train"), "--out", str(tmp_path / "cmp"))
    assert r.returncode == 2 and "a run of 'train'; compare takes runs of dnas, dmasking, nars" in r.stderr
    assert not (tmp_path / "cmp").exists()


def test_searches_of_one_group_share_one_legend_entry_and_colour(tmp_path, monkeypatch):
    """Several searches of one setting (a benchmark's search seeds) are one legend entry and one colour, not one
    per run; runs without a group keep one each."""
    from nas.search.compare import plot
    from nas.search.compare.contenders import summarise

    def model(run, label, group, seed, acc):
        return {"run": run, "contender": "searched", "label": label, "kind": "searched", "group": group,
                "seed": seed, "accuracy": acc, "measured_ms": 1.0 + 0.1 * seed}

    rows = summarise([model(f"r{k}", f"dm seed {k}", "dm (3 searches)", s, 0.9) for k in range(3) for s in range(2)]
                     + [model("other", "dm other", None, 0, 0.8)])
    assert [r["group"] for r in rows] == ["dm (3 searches)"] * 3 + [None]
    for r in rows:
        r.update(run_name=r["run"], legend=r["group"] or r["label"])
    figures = []
    monkeypatch.setattr(plot, "save_figure", lambda fig, path, dpi: figures.append(fig) or path)
    plot.plot_comparison(rows, tmp_path / "p.png", title="t")
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["Pareto front (means)", "dm (3 searches)",
                                                                    "dm other"]
    grouped = {tuple(c.get_markerfacecolor()) if hasattr(c, "get_markerfacecolor") else None
               for c in ax.lines if c.get_marker() == "*"}
    assert len(grouped) == 2  # the group's colour and the other run's
