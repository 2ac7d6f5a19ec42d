"""Dynamic-capacity ViT (issue 7): space, token pruning, MoE capacity, training, tables, search, export, errors."""

import itertools
import json

import onnx
import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nas.arch.space import load_space
from nas.arch.spec import builtin_spaces
from nas.data.dataset import load_dataset
from nas.data.splits import TensorSplit
from nas.errors import LatencyTableError, SpaceError
from nas.latency.device import Device
from nas.latency.model import LatencyModel
from nas.latency.profile import profile_items
from nas.latency.timing import TimingConfig
from nas.search.capacity.blocks import AttentionBlock, ClassAttentionScorer, gumbel_topk_keep, masked_softmax
from nas.search.capacity.checkpoint import CheckpointError, load_dynamic_vit, save_dynamic_vit
from nas.search.capacity.config import (
    CapacityConfig,
    CapacityConfigError,
    StaticPlan,
    capacity_factor_plan,
    full_plan,
    validate_config,
)
from nas.search.capacity.export import export_plan, onnx_parity
from nas.search.capacity.latency import (
    calibrate_capacity,
    capacity_profile_items,
    plan_keys,
    predict_plan,
    select_key,
    space_keys,
)
from nas.search.capacity.planning import plan_for_config
from nas.search.capacity.space import load_capacity_space
from nas.search.capacity.training import train_dynamic
from nas.search.capacity.vit import ConfiguredViT, DynamicViT
from nas.train.recipe import Recipe

TINY = """\
kind: vit_capacity
name: vit_tiny
resolution: 16
in_channels: 1
classes: 10
patch_size: 4
stem_channels: 8
dim: 32
depth: 3
heads: 2
mlp_ratio: 2.0
pruning:
  before_blocks: [1, 2]
  keep_ratio_options: [1.0, 0.75, 0.5]
  predictor_hidden: 16
moe:
  blocks: [1]
  experts: 2
  expert_hidden: 32
  token_granularity: 2
  threshold_options: [0.3, 0.5, 0.7]
  predictor_hidden: 16
recipe:
  epochs: 3
  lr: 0.005
  warmup_epochs: 1
  batch_size: 32
  weight_decay: 0.01
"""
FAST_TIMING = TimingConfig(warmup=3, min_runs=10, max_runs=40, max_seconds=0.2)


@pytest.fixture
def cli_inproc(capsys, monkeypatch):
    """Run ``hwnas ARGS`` in this process (``cli.main.main``, which turns a ``HwnasError`` into one line and
    exit 2), without a subprocess's start-up; returns (exit code, stderr). The full runs use the ``cli`` fixture."""
    import sys

    from cli.main import main

    def run(*args, env=None):
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "argv", ["hwnas", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code or 0
        return code, capsys.readouterr().err

    return run


@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "vit_tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def tiny(tiny_path):
    return load_capacity_space(str(tiny_path), in_channels=1, classes=10)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", resolution=16, seed=0)


@pytest.fixture(scope="module")
def trained(tiny, digits, one_thread, tmp_path_factory):
    """A tiny model trained 3 epochs once-for-all, saved as a checkpoint with its sidecar."""
    torch.manual_seed(0)
    result = train_dynamic(DynamicViT(tiny), digits, tiny.recipe())
    path = save_dynamic_vit(result.model, tmp_path_factory.mktemp("ckpt") / "model.pt",
                            {"dataset": "digits", "seed": 0})
    return result, path


@pytest.fixture(scope="module")
def tables(tiny, tmp_path_factory):
    """The tiny space's token-count units profiled into a fresh device table, with a whole-model correction."""
    root = tmp_path_factory.mktemp("tables")
    counts = profile_items(Device(device_id="tiny-dev"), capacity_profile_items(tiny), tables_dir=root,
                           timing=FAST_TIMING)
    correction = calibrate_capacity(Device(device_id="tiny-dev"), tiny, models=4, tables_dir=root)
    return root, counts, correction


# ---- space ---------------------------------------------------------------------------------------------------
def test_builtin_space_loads_and_is_listed_with_its_kind():
    space = load_capacity_space("vit_capacity", in_channels=1, classes=10)
    assert space.tokens == 145 and space.stages == [2, 3, 4] and space.moe_blocks == [3, 5]
    assert builtin_spaces()["vit_capacity"] == "vit_capacity"
    with pytest.raises(SpaceError, match="'vit_capacity' space, not a convolutional"):
        load_space("vit_capacity")
    with pytest.raises(SpaceError, match="is a 'conv' space, not a 'vit_capacity' one"):
        load_capacity_space("fbnet")


@pytest.mark.parametrize("edit, message", [
    (("keep_ratio_options: [1.0, 0.75, 0.5]", "keep_ratio_options: [1.0, 1.5]"),
     r"key 'pruning.keep_ratio_options': keep ratio 1.5 is outside \(0, 1\]"),
    (("keep_ratio_options: [1.0, 0.75, 0.5]", "keep_ratio_options: [1.0, 0.0]"), r"keep ratio 0.0 is outside"),
    (("predictor_hidden: 16\nmoe", "predictor_hiden: 16\nmoe"), r"key 'pruning.predictor_hiden'"),
    (("predictor_hidden: 16\nmoe", "predictor_hidden: 16\n  scoring: best\nmoe"), r"key 'pruning.scoring'.*cls_attention"),
    (("heads: 2", "heads: 3"), r"dim 32 is not divisible by heads 3"),
    (("before_blocks: [1, 2]", "before_blocks: [1, 7]"), r"pruning.before_blocks: block 7 is outside 0..2"),
    (("lr: 0.005", "lr: -1"), r"recipe: key 'lr'"),
])
def test_space_errors_name_the_file_and_key(tmp_path, edit, message):
    path = tmp_path / "bad.yaml"
    path.write_text(TINY.replace(*edit))
    with pytest.raises(SpaceError, match=message) as err:
        load_capacity_space(str(path))
    assert str(path) in str(err.value)


def test_token_counts_and_every_config_is_covered_by_the_table_keys(tiny):
    assert tiny.patches == 16 and tiny.kept_patches([0.75, 0.5]) == [12, 6]
    assert tiny.block_tokens([12, 6]) == [17, 13, 7]
    assert tiny.kept_patches([0.3, 0.3]) == [5, 2]  # ceil
    keys = {str(k) for k in space_keys(tiny)}
    options = tiny.spec.pruning.keep_ratio_options
    for ratios in itertools.product(options, repeat=len(tiny.stages)):
        tokens = tiny.block_tokens(tiny.kept_patches(ratios))
        for cap in tiny.expert_token_options(tokens[1]) + [0]:
            plan = StaticPlan(tuple(tiny.kept_patches(ratios)), (cap,))
            assert {str(k) for k in plan_keys(tiny, plan)} <= keys


def test_config_validation():
    space = load_capacity_space("vit_capacity", in_channels=1, classes=10)
    validate_config(space, CapacityConfig((0.7, 0.7, 0.7), 0.3))
    with pytest.raises(CapacityConfigError, match=r"keep_ratios\[1\]': keep ratio 1.2 is outside \(0, 1\]"):
        validate_config(space, CapacityConfig((0.7, 1.2, 0.7), 0.3))
    with pytest.raises(CapacityConfigError, match="needs 3 values"):
        validate_config(space, CapacityConfig((0.7,), 0.3))


# ---- mechanisms ----------------------------------------------------------------------------------------------
def test_gumbel_topk_keeps_exactly_k_and_dropped_tokens_stay_dropped():
    torch.manual_seed(0)
    logits = torch.randn(4, 10, requires_grad=True)
    keep = torch.ones(4, 10)
    keep[:, :3] = 0
    new = gumbel_topk_keep(logits, keep, 4)
    assert torch.equal(new.detach().round().sum(1), torch.full((4,), 4.0))
    assert (new.detach()[:, :3].abs() < 1e-6).all()
    new.sum().backward()
    assert logits.grad is not None and logits.grad[:, 3:].abs().sum() > 0  # straight-through gradient


def test_attention_masking_equals_removing_the_dropped_tokens():
    torch.manual_seed(0)
    block = AttentionBlock(16, 2).eval()
    x = torch.randn(1, 9, 16)
    keep = torch.tensor([[1, 1, 0, 1, 0, 0, 1, 1, 0]], dtype=torch.float32)
    kept = keep[0].bool()
    with torch.no_grad():
        masked = block(x, keep)[0, kept]
        removed = block(x[:, kept])[0]
    assert torch.allclose(masked, removed, atol=1e-4)
    w = masked_softmax(torch.randn(1, 1, 9, 9), keep)
    assert torch.allclose(w.sum(-1), torch.ones(1, 1, 9), atol=1e-5)
    assert w[0, 0, 0, 2] < 1e-5 and w[0, 0, 2, 2] > 0.1  # a dropped key gets no weight, except from itself


def test_static_moe_with_full_capacity_equals_per_image_routing_at_zero_threshold(tiny):
    torch.manual_seed(0)
    model = DynamicViT(tiny).eval()
    x = torch.randn(3, *tiny.input_shape)
    plan = StaticPlan((16, 16), (tiny.tokens,))  # every expert takes every token
    with torch.no_grad():
        static = model(x, plan)
        dynamic, loads = model.forward_threshold(x, [16, 16], 1e-12)
    assert torch.allclose(static, dynamic, atol=1e-4)
    assert loads[0].tolist() == [[tiny.tokens] * 2] * 3


def test_export_prunes_with_topk_gather_and_matches_torch(tiny, tmp_path):
    torch.manual_seed(0)
    model = DynamicViT(tiny).eval()
    x = torch.randn(8, *tiny.input_shape)
    plan = capacity_factor_plan(tiny, [0.5, 0.5], 1.0)
    path = export_plan(model, plan, tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"TopK", "Gather", "MatMul"} <= ops  # token pruning and expert dispatch really shrink the graph's tensors
    assert "ScatterElements" not in ops  # the slow batch-1 scatter-add stays out of the graph
    parity = onnx_parity(model, plan, path, TensorSplit(x, torch.arange(8) % tiny.classes))
    assert parity["onnx_max_abs_diff"] < 1e-4 and parity["onnx_top1_agreement"] == 1.0
    assert parity["accuracy_onnx"] == parity["accuracy"]  # every prediction agrees, so the accuracies do

    def macs(p):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            ConfiguredViT(model, p)(x[:1])
        return counter.get_total_flops()

    counted = [macs(capacity_factor_plan(tiny, [r, r], 1.0)) for r in (1.0, 0.75, 0.5)]
    assert counted[0] > counted[1] > counted[2]


def test_class_attention_scoring_ranks_by_the_next_blocks_attention_and_exports(tiny_path, digits, one_thread,
                                                                                 tmp_path):
    """EViT's rule: the score is the class token's attention (mean over heads) in the block after the stage, read
    from that block's own weights; the model gains no parameters, trains, and exports with the rule in its graph."""
    path = tmp_path / "vit_evit.yaml"
    path.write_text(TINY.replace("  predictor_hidden: 16\nmoe:", "  predictor_hidden: 16\n  scoring: cls_attention\nmoe:"))
    evit = load_capacity_space(str(path), in_channels=1, classes=10)
    learned = load_capacity_space(str(tiny_path), in_channels=1, classes=10)
    assert evit.spec.pruning.scoring == "cls_attention" and evit.fingerprint() != learned.fingerprint()
    torch.manual_seed(0)
    model = DynamicViT(evit).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in DynamicViT(learned).parameters()) - \
        sum(p.numel() for p in DynamicViT(learned).scorers.parameters())
    # the scores are row 0 of the block's full attention matrix, computed here the plain way
    block = model.attn[evit.stages[0]]
    x = torch.randn(2, evit.tokens, evit.spec.dim)
    with torch.no_grad():
        b, t, d = x.shape
        q, k, _ = block.qkv(block.norm(x)).reshape(b, t, 3, block.heads, d // block.heads).permute(2, 0, 3, 1, 4)
        expected = ((q * block.scale) @ k.transpose(-2, -1)).softmax(-1)[:, :, 0, 1:].mean(1)
        assert torch.allclose(model.scorers[0](x), expected, atol=1e-6)
        keep = torch.ones(b, t)
        keep[:, 1:6] = 0  # dropped patches get no score and the rest renormalise
        masked = model.scorers[0](x, keep)
        assert (masked[:, :5] == 0).all() and (masked.sum(1) > expected[:, 5:].sum(1)).all()
    assert isinstance(model.scorers[0], ClassAttentionScorer)
    # it trains (the same recipe as the learned-scorer model of the `trained` fixture)
    torch.manual_seed(0)
    result = train_dynamic(DynamicViT(evit), digits, evit.recipe())
    assert result.history[-1]["val_accuracy_keep0.7"] > 0.2  # chance is 0.1
    assert sum(p.numel() for p in result.model.parameters()) == n_params
    plan = capacity_factor_plan(evit, [0.5, 0.5], 1.0)
    onnx_path = export_plan(result.model.eval(), plan, tmp_path / "evit.onnx")
    parity = onnx_parity(result.model, plan, onnx_path, TensorSplit(digits.test.first(8), torch.arange(8) % 10))
    assert parity["onnx_max_abs_diff"] < 1e-4 and parity["onnx_top1_agreement"] == 1.0
    # the latency table keys the rule's token selection apart from the learned scorer's
    keys = {str(key) for key in plan_keys(evit, plan) if key.op == "token_select"}
    assert keys and keys.isdisjoint(str(key) for key in plan_keys(learned, plan))
    assert "scoring=cls_attention" in str(select_key(evit, evit.tokens, 9))


# ---- training, checkpoints -----------------------------------------------------------------------------------
def test_once_for_all_training_learns_every_config(trained, tiny, digits):
    result, _ = trained
    h = result.history
    assert len(h) == 3 and h[-1]["train_loss"] < h[0]["train_loss"]
    assert h[-1]["val_accuracy_full"] > 0.2 and h[-1]["val_accuracy_keep0.7"] > 0.2  # chance is 0.1
    # the capacity predictor learns the experts' choices: the threshold orders the experts' loads
    x = digits.train.first(64)
    low, _ = plan_for_config(result.model, CapacityConfig((1.0, 1.0), 0.05), x)
    high, _ = plan_for_config(result.model, CapacityConfig((1.0, 1.0), 0.95), x)
    assert low.expert_tokens[0] >= high.expert_tokens[0]
    assert h[-1]["predictor_loss"] < h[0]["predictor_loss"]


def test_training_resumes_after_interruption(tiny, digits, one_thread, tmp_path):
    recipe = Recipe(epochs=2, lr=0.01, batch_size=64)
    torch.manual_seed(0)
    full = train_dynamic(DynamicViT(tiny), digits, recipe)

    def stop_after_first(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_dynamic(DynamicViT(tiny), digits, recipe, checkpoint=tmp_path / "s.pt", on_epoch=stop_after_first)
    torch.manual_seed(99)  # a fresh process: the state file restores weights, optimiser and history
    resumed = train_dynamic(DynamicViT(tiny), digits, recipe, checkpoint=tmp_path / "s.pt")
    assert len(resumed.history) == 2
    assert resumed.history[-1]["train_loss"] == pytest.approx(full.history[-1]["train_loss"], rel=1e-4)


def test_checkpoint_round_trip_and_rejections(trained, tiny, tiny_path, tmp_path):
    result, path = trained
    model, meta = load_dynamic_vit(path, str(tiny_path))
    x = torch.randn(2, *tiny.input_shape)
    with torch.no_grad():
        assert torch.equal(model(x), result.model.eval()(x))
    other = tmp_path / "other.yaml"
    other.write_text(TINY.replace("name: vit_tiny", "name: vit_other"))
    with pytest.raises(CheckpointError, match="checkpoint is from space 'vit_tiny', not 'vit_other'"):
        load_dynamic_vit(path, str(other))
    reshaped = tmp_path / "vit_tiny.yaml"
    reshaped.write_text(TINY.replace("dim: 32", "dim: 48"))
    with pytest.raises(CheckpointError, match="model shape changed"):
        load_dynamic_vit(path, str(reshaped))
    with pytest.raises(CheckpointError, match="trained with classes=10, the data has 5"):
        load_dynamic_vit(path, str(tiny_path), classes=5)
    bare = tmp_path / "bare.pt"
    torch.save(result.model.state_dict(), bare)
    with pytest.raises(CheckpointError, match="no sidecar bare.json"):
        load_dynamic_vit(bare, str(tiny_path))


# ---- latency tables ------------------------------------------------------------------------------------------
def test_token_count_tables_predict_additively(tiny, tables):
    root, counts, correction = tables
    assert counts["measured"] == len(space_keys(tiny))
    assert correction.fitted_on >= 2
    lm = LatencyModel.load("tiny-dev", tables_dir=root, allow_fallback=False)
    plans = [capacity_factor_plan(tiny, [r, r], 1.0) for r in (1.0, 0.75, 0.5)]
    for plan in plans:
        keys = plan_keys(tiny, plan)
        prediction = predict_plan(lm, tiny, plan)
        assert prediction.estimated == []
        assert prediction.ms == pytest.approx(lm.base_ms + sum(lm.block_cost_ms(k) for k in keys))
        assert 0.005 < prediction.ms < 5.0
    # a token count the table lacks: one clear error without the fallback, an estimate (flagged) with it
    odd = capacity_factor_plan(tiny, [0.6, 0.6], 1.0)
    with pytest.raises(LatencyTableError, match=r"no measurement for token_select at 17 tokens .*fallback is disabled"):
        predict_plan(lm, tiny, odd)
    estimated = predict_plan(LatencyModel.load("tiny-dev", tables_dir=root), tiny, odd)
    assert estimated.estimated and estimated.warnings and estimated.ms > 0
    # profiling again measures nothing new (resume)
    again = profile_items(Device(device_id="tiny-dev"), capacity_profile_items(tiny), tables_dir=root,
                          timing=FAST_TIMING)
    assert again["measured"] == 0 and again["skipped"] == counts["total"]


# ---- the CLI: search, resume, export, bad input --------------------------------------------------------------
def test_search_capacity_cli_end_to_end_and_resume(cli, cli_inproc, trained, tiny, tiny_path, tables, tmp_path):
    _, ckpt = trained
    root, _, _ = tables
    lm = LatencyModel.load("tiny-dev", tables_dir=root)
    model, _ = load_dynamic_vit(ckpt, str(tiny_path))
    # reachable whatever the noisy tiny table says: above the full plan and above the smallest keep ratios at the
    # largest expert capacity (an upper bound on the cheapest config, whatever its threshold calibrates to)
    smallest = capacity_factor_plan(tiny, [0.5, 0.5], float(tiny.spec.moe.experts))
    target = max(predict_plan(lm, tiny, full_plan(tiny)).ms, predict_plan(lm, tiny, smallest).ms) * 1.2
    env = {"HWNAS_LATENCY_TABLES": str(root)}
    out = tmp_path / "run"
    args = ["search", "capacity", "--space", str(tiny_path), "--checkpoint", str(ckpt), "--device", "tiny-dev",
            "--target-ms", f"{target:.4f}", "--trials", "4", "--out", str(out)]
    r = cli(*args, env=env)
    assert r.returncode == 0, r.stderr
    for name in ("capacity.json", "pareto.csv", "history.csv", "report.json", "model.onnx", "pareto.png",
                 "predicted_vs_measured.png", "config.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["predicted_ms"] <= target and report["onnx_max_abs_diff"] < 1e-4
    assert report["capacity"]["accuracy_onnx"] == pytest.approx(report["accuracy"], abs=0.01)
    assert 0.3 < report["measured_ms"] / report["predicted_ms"] < 3.0
    pareto = pd.read_csv(out / "pareto.csv")
    assert {"val_accuracy", "predicted_ms", "measured_ms", "pareto_predicted"} <= set(pareto.columns)
    capacity = json.loads((out / "capacity.json").read_text())
    validate_config(tiny, CapacityConfig.from_dict(capacity["config"]))
    assert len(pd.read_csv(out / "history.csv")) == 4
    # resume: the finished study is reused, nothing is re-run
    code, err = cli_inproc(*args, env=env)
    assert code == 0, err
    assert len(pd.read_csv(out / "history.csv")) == 4
    # bad input: one line, exit 2
    code, err = cli_inproc(*args[:-6], "--target-ms", "0.0001", "--out", str(tmp_path / "low"), env=env)
    assert code == 2 and "below the cheapest config" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "low").exists()
    # a keep-ratio option the table was not profiled for, with the fallback disabled: refused before it starts
    wider = tmp_path / "wider.yaml"
    wider.write_text(TINY.replace("keep_ratio_options: [1.0, 0.75, 0.5]", "keep_ratio_options: [1.0, 0.75, 0.6, 0.5]"))
    code, err = cli_inproc(*args[:2], "--space", str(wider), *args[4:-2], "--no-fallback", "--out",
                           str(tmp_path / "nofb"), env=env)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "no measurement for token_select at 17 tokens" in err and "fallback is disabled" in err
    assert not (tmp_path / "nofb").exists()


def test_export_capacity_cli_and_bad_input(cli, cli_inproc, trained, tiny_path, tables, tmp_path):
    _, ckpt = trained
    root, _, _ = tables
    env = {"HWNAS_LATENCY_TABLES": str(root)}
    base = ["export-capacity", "--space", str(tiny_path), "--checkpoint", str(ckpt), "--device", "tiny-dev",
            "--out", str(tmp_path / "e")]
    for args, message in (
            (["--keep", "1.5"], "keep ratio 1.5 is outside (0, 1]"),
            (["--keep", "0.5,0"], "keep ratio 0 is outside (0, 1]"),
            (["--keep", "0.5", "--space", "vit_capacity"], "checkpoint is from space 'vit_tiny', not 'vit_capacity'"),
            # 0.6 is not an option of the space: 16 -> 10 patches (17 -> 11 tokens) was never profiled
            (["--keep", "0.6", "--no-fallback"], "no measurement for token_select at 17 tokens")):
        code, err = cli_inproc(*base, *args, env=env)
        assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, (args, err)
        assert not (tmp_path / "e").exists()
    r = cli(*base, "--keep", "0.5", "--threshold", "0.5", env=env)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["export_capacity"]["plan"]["kept_patches"] == [8, 4] and report["onnx_max_abs_diff"] < 1e-4
    assert report["export_capacity"]["estimated_keys"] == [] and report["measured_ms"] > 0
