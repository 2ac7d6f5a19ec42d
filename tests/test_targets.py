"""Latency targets relative to the device (nas.search.targets): the syntax, and what each form resolves to.

A relative target must mean the same thing on a slower or faster device: scaled timings give a proportionally
scaled bound. It must be deterministic for a seed, and refused clearly when it cannot be met or read."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_dnas_support import TINY, digits_npz, profiled_space, tiny_space
from test_predict_fixtures import BENCH_TABLE

from nas.errors import SearchError
from nas.search.dnas.search import SupernetSearchSettings as DnasSettings
from nas.search.dnas.strategy import SearchJob, SupernetStrategy
from nas.search.predict.search_setup import PredictorSearchSettings, build_constraints, build_problem
from nas.search.targets import (
    LatencyScale,
    given_targets,
    model_reference,
    parse_bounds,
    parse_target,
    resolve_target,
)


@pytest.mark.parametrize("text, kind, value, model", [
    ("2.5ms", "ms", 2.5, None), ("2.5", "ms", 2.5, None), ("0.25 ms", "ms", 0.25, None),
    ("p40", "percentile", 40, None), ("P12.5", "percentile", 12.5, None),
    ("0.8x:fbnet_c", "fraction", 0.8, "fbnet_c"), ("1.5x:results/run/arch.json", "fraction", 1.5,
                                                   "results/run/arch.json"),
])
def test_the_three_forms_parse(text, kind, value, model):
    form = parse_target(text)
    assert (form.kind, form.value, form.model) == (kind, value, model)
    assert parse_target(form.text) == form  # the normalised text reads back as the same target


@pytest.mark.parametrize("text, message", [
    ("p0", "a percentile is p1 to p99"), ("p100", "a percentile is p1 to p99"), ("-2ms", "must be positive"),
    ("0", "must be positive"), ("0x:fbnet_c", "must be positive"), ("fast", "use MS[ms], pN"),
    ("0.8x:", "use MS[ms], pN"), ("40%", "use MS[ms], pN"),
])
def test_a_bad_target_names_the_forms(text, message):
    with pytest.raises(SearchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_target(text)


def test_target_ms_takes_milliseconds_and_not_both_options():
    assert given_targets(None, 2.0) == ["2.0ms"] and given_targets("p40", None) == ["p40"]
    assert given_targets(None, ["a=2", "3ms"]) == ["a=2", "3ms"] and given_targets(None, None) == []
    with pytest.raises(SearchError, match="--target-ms 'p40': give milliseconds"):
        given_targets(None, ["p40"])
    with pytest.raises(SearchError, match="not both"):
        given_targets("p40", 2.0)
    assert [(d, f.text) for d, f in parse_bounds("a=p30, b=2ms", ["a", "b"])] == [("a", "p30"), ("b", "2.0ms")]
    with pytest.raises(SearchError, match="device 'c' is not one of the searched devices"):
        parse_bounds("c=p30", ["a", "b"])


# ---- differentiable searches: random archs of the space, and named models -----------------------------------------
def _prepare(tmp_path_factory, target, seed=0, text=TINY, name="dnas", device="test-tiny"):
    path, tables, lm = profiled_space(tmp_path_factory, text, name, device)
    job = SearchJob(method=name, space=str(path), device=device, dataset=f"npz:{digits_npz(path.parent)}",
                    resolution=16, width=1.0,
                    tables_dir=str(tables), seed=seed, settings=DnasSettings(epochs=2), target=target)
    return SupernetStrategy(job).prepare(), path, lm


def test_a_percentile_is_read_off_random_archs_of_the_space(tmp_path_factory):
    p25, p50, p75 = (_prepare(tmp_path_factory, f"p{q}")[0] for q in (25, 50, 75))
    assert p25.min_ms < p25.target.ms < p50.target.ms < p75.target.ms < p25.max_ms
    prep = p50
    sample = prep.terms.random_archs_ms(1000, 0)
    assert prep.target.ms == pytest.approx(np.percentile(sample, 50), rel=1e-3)
    rng = np.random.default_rng(1)  # each sampled latency is an arch's own prediction
    ops = [int(rng.integers(len(o))) for o in prep.dist.op_options]
    arch = prep.dist.arch_from_indices(ops, [0] * len(prep.dist.channel_options), 0)
    assert prep.terms.arch_ms(ops, [0] * len(prep.dist.channel_options), 0) == \
        pytest.approx(prep.lm.predict(prep.space, arch))
    again = _prepare(tmp_path_factory, "p50")[0]  # deterministic for a seed
    assert again.target == prep.target and again.job.target_ms == prep.target.ms == again.job.settings.target_ms
    assert prep.job.target == "p50" and prep.run_config()["target"] == "p50"
    assert prep.run_config()["target_ms"] == prep.target.ms


def test_a_fraction_of_a_named_model_is_its_prediction_at_the_search_size(tmp_path_factory):
    prep, path, lm = _prepare(tmp_path_factory, None)
    largest = prep.space.fixed_arch()
    full = lm.predict(prep.space, largest)
    part = _prepare(tmp_path_factory, f"0.8x:{path}")[0].target
    assert part.ms == pytest.approx(0.8 * full, rel=1e-3) and part.given == f"0.8x:{path}"
    assert not part.warnings  # every block of the named model is in the table
    with pytest.raises(SearchError, match=r"below the fastest arch of tiny .*attainable"):
        _prepare(tmp_path_factory, f"0.01x:{path}")


def test_a_fraction_of_a_model_the_table_lacks_says_it_is_estimated(tmp_path_factory):
    path, _, lm = profiled_space(tmp_path_factory, TINY, "dnas", "test-tiny")
    other = path.parent / "wider_head.yaml"  # the same model with a wider head: that block is not in the table
    other.write_text(path.read_text().replace("name: tiny", "name: wider_head").replace("[conv_k1, 32]",
                                                                                        "[conv_k1, 48]"))
    ms, warnings = model_reference(lm, tiny_space(path))(str(other))
    assert ms > 0 and len(warnings) == 1 and "2 of 6 blocks are estimated by the fallback" in warnings[0]  # head, fc
    assert model_reference(lm, tiny_space(path))(str(path))[1] == []


# ---- predictor searches: a table's rows, per device -----------------------------------------------------------------
def _constraints(tmp_path, frame: pd.DataFrame, targets: list[str], columns=("latency_ms",)):
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    settings = PredictorSearchSettings(strategy="nars", space=f"table:{path}", objective="val_accuracy",
                              latency_columns=list(columns), targets=targets)
    return build_constraints(settings, build_problem(settings))


def test_a_percentile_target_never_falls_below_the_candidates_it_was_read_off():
    # half the candidates tie at the cheapest cost (a tiny capacity space's configs do): p50 must admit them, where
    # rounding it to 4 significant digits (0.2509) would fall below every candidate
    scale = LatencyScale("dev", "configs", lambda: np.array([0.25094] * 6 + [0.3, 0.31, 0.32, 0.33]))
    target = resolve_target(parse_target("p50"), scale)
    assert target.ms == 0.251 and target.ms >= 0.25094
    assert resolve_target(parse_target("p50"), LatencyScale("dev", "configs", lambda: np.full(4, 2.5))).ms == 2.5


def test_table_percentiles_scale_with_the_device(tmp_path):
    """A device 2x slower (its latency column doubled) gets bounds 2x as large: the same candidates meet them."""
    frame = pd.read_csv(BENCH_TABLE)
    targets = ["p30", "p60"]
    normal, auto = _constraints(tmp_path, frame, targets)
    slow, _ = _constraints(tmp_path, frame.assign(latency_ms=2 * frame["latency_ms"]), targets)
    assert not auto and [c.given for c in normal] == targets
    for c, s, q in zip(normal, slow, (30, 60)):
        assert c.limits[0][1] == pytest.approx(np.percentile(frame["latency_ms"], q), rel=1e-3)
        assert s.limits[0][1] == pytest.approx(2 * c.limits[0][1], rel=1e-3)
    default, auto = _constraints(tmp_path, frame, [])
    assert auto and [c.given for c in default] == ["p25", "p50", "p75"]


def test_a_term_without_a_device_bounds_each_device_at_its_own_value(tmp_path):
    frame = pd.read_csv(BENCH_TABLE)
    frame["phone_ms"] = 10 * frame["latency_ms"]
    (c, mixed), _ = _constraints(tmp_path, frame, ["p50", "phone_ms=p20,latency_ms=1ms"],
                                 columns=("latency_ms", "phone_ms"))
    lat = dict(c.limits)
    assert lat["phone_ms"] == pytest.approx(10 * lat["latency_ms"], rel=1e-3)
    assert dict(mixed.limits)["latency_ms"] == 1.0 and mixed.given == "phone_ms=p20,latency_ms=1.0ms"
    with pytest.raises(SearchError, match="a table space has no models to name"):
        _constraints(tmp_path, frame, ["0.5x:fbnet_c"], columns=("latency_ms", "phone_ms"))
    with pytest.raises(SearchError, match="two constraints resolve to the same bounds"):
        _constraints(tmp_path, frame, ["p50", "p50.0"])
