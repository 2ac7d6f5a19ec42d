"""A mixed-precision run, end to end: pretrain fp32, search bit-widths, fine-tune, export ONNX, measure, compare.

Stages write into a RunDir and each resumes: ``pretrain.pt`` (fp32 training), ``search.pt`` (bit search),
``<name>_finetune.pt`` (quantization-aware fine-tuning of the mixed model, from the search's weights, and of the
uniform fp32 / int8 baselines, from the pretrained fp32 weights, for the search's epochs and the fine-tuning's).
Exported files: ``model.onnx`` (the mixed model, in the faster of QDQ and QOperator on the device),
``baseline_fp32.onnx``, ``baseline_int8.onnx``; figures go to ``report.json``, ``bits.json``, ``history.csv`` and
``bits.png``.
"""

from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from nas.builder import build_model
from nas.data import Dataset
from nas.errors import LatencyTableError, SearchError
from nas.latency.device import Device
from nas.latency.model import LatencyModel
from nas.onnx_io import export_onnx
from nas.quant.costs import COSTS, BitopsCost, Cost, LatencyCost, SizeCost, mean_weight_bits
from nas.quant.export import FORMATS
from nas.quant.finish import FinishSettings, Progress, finish, measure_and_choose, no_progress
from nas.quant.graph import QuantGraph, attach_onnx, trace_layers
from nas.quant.latency_fit import fit_latency_cost
from nas.quant.mixed import BitOption, MixedPrecisionNet, bit_options
from nas.quant.plot import plot_bits
from nas.quant.profile import estimated_keys, int8_speedups, layer_items, layer_times, profile_layers, \
    transition_times
from nas.quant.search import SearchConfig, search_bits
from nas.recipe import Recipe
from nas.run import RunDir
from nas.space import Arch, Space
from nas.training import fit_input, train_model


FP32 = BitOption(32, 32)
INT8 = BitOption(8, 8)
SUB8_NOTE = ("Layers below 8 bits are exported with their weights rounded to their own grid (per-channel scale "
             "max|w|/(2^(b-1)-1)) and stored as int8, and activations below 8 bits with a b-bit scale held in uint8: "
             "ONNX Runtime has no sub-8-bit CPU kernels, so they run at int8 speed and take int8 space in the file. "
             "size_mb counts each layer at its own bits (effective size); storage_size_mb is what the file holds.")
TIMING_NOTE = ("Latencies are ONNX Runtime p50s at batch 1 on the device's provider and threads, measured on a "
               "machine shared with other jobs: expect noise of several percent between runs.")


@dataclass
class MixedPrecisionConfig:
    cost: str = "size"
    weight_bits: list[int] = field(default_factory=lambda: [2, 4, 8, 32])
    act_bits: list[int] = field(default_factory=lambda: [8, 32])
    target_ms: float | None = None
    target_mb: float | None = None
    pretrain_epochs: int = 20
    pretrain_lr: float = 0.01
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune_epochs: int = 3
    finetune_lr: float = 5e-4
    calibration_samples: int = 256
    latency_fit_models: int = 10  # whole mixed models measured to fit the latency cost (0: table sums only)
    export_formats: tuple[str, ...] = FORMATS

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.cost not in COSTS:
            raise SearchError(f"unknown cost {self.cost!r} (use {', '.join(COSTS)})")
        for name in ("pretrain_epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise SearchError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")
        if self.search.epochs < 1:
            raise SearchError(f"search epochs must be >= 1, got {self.search.epochs}")
        if self.latency_fit_models and self.latency_fit_models < 4:
            raise SearchError(f"latency fit models must be 0 or >= 4 (fp32, int8, pointwise-only, depthwise-only "
                              f"first), got {self.latency_fit_models}")
        if self.calibration_samples < 1:
            raise SearchError(f"calibration samples must be >= 1, got {self.calibration_samples}")
        check_options(self.cost, bit_options(self.weight_bits, self.act_bits))
        if self.target_ms is not None and self.target_mb is not None:
            raise SearchError("give one of --target-ms and --target-mb, not both")
        if self.target_ms is not None and self.cost != "latency":
            raise SearchError(f"--target-ms steers --cost latency; with --cost {self.cost} use "
                              f"{'--target-mb' if self.cost == 'size' else 'no target'}")
        if self.target_mb is not None and self.cost != "size":
            raise SearchError(f"--target-mb steers --cost size; with --cost {self.cost} use "
                              f"{'--target-ms' if self.cost == 'latency' else 'no target'}")


def check_options(cost: str, options: list[BitOption]) -> None:
    if cost == "latency":
        bad = [o.label for o in options if not o.is_float and (o.w_bits, o.a_bits) != (8, 8)]
        if bad:
            raise SearchError(f"bit options {', '.join(bad)} cannot be timed: ONNX Runtime runs only int8 and fp32 "
                              f"on this provider, so --cost latency takes --weight-bits 8,32 --act-bits 8,32")
    if cost == "latency" and not any(o.runs_int8 for o in options):
        raise SearchError("--cost latency needs the int8 option (weight and activation bits 8)")
    if len(options) < 2:
        raise SearchError(f"only one bit option ({options[0].label}): nothing to search")


# ---- latency ---------------------------------------------------------------------------------------------------
def load_device_model(device: str, space: Space, arch: Arch, required: bool, tables_dir=None
                      ) -> tuple[LatencyModel | None, str | None]:
    """The device's LatencyModel, checked to hold the model's fp32 and int8 block rows.

    Returns (None, reason) when not ``required`` and the table cannot serve; raises LatencyTableError otherwise.
    """
    try:
        lm = LatencyModel.load(device, tables_dir)
        missing = {bits: [k for k in lm.arch_keys(space, arch, bits) if lm.is_estimated(k)] for bits in (32, 8)}
        if missing[8] or missing[32]:
            bits = 8 if missing[8] else 32
            args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                            (("resolution", space.resolution), ("width", space.width_multiplier),
                             ("classes", space.classes), ("in_channels", space.in_channels)))
            raise LatencyTableError(
                f"device {device!r} has no {'int8' if bits == 8 else 'fp32'} table rows for "
                f"{len(missing[bits])} blocks of {space.name} (e.g. {missing[bits][0]}); run `hwnas latency profile "
                f"--space {space.name} --device {device} {args} --int8`")
        return lm, None
    except LatencyTableError as e:
        if required:
            raise
        return None, str(e)


def make_cost(name: str, graph: QuantGraph, options: list[BitOption], lm: LatencyModel | None, space: Space,
              arch: Arch) -> Cost:
    if name == "size":
        return SizeCost(graph, options)
    if name == "bitops":
        return BitopsCost(graph, options)
    if name == "latency":
        if lm is None:
            raise LatencyTableError("--cost latency needs a device latency table")
        return LatencyCost(graph, options, lm.predict(space, arch, 32), layer_times(lm, graph),
                           transition_times(lm, graph), lm.correction.precision.coef)
    raise SearchError(f"unknown cost {name!r} (use latency, size or bitops)")


def resolve_target(cfg: MixedPrecisionConfig, cost: Cost) -> float | None:
    """The target in the cost's unit; SearchError when no assignment can meet it."""
    target = cfg.target_ms if cost.name == "latency" else cfg.target_mb if cost.name == "size" else None
    if target is not None:
        floor = cost.lower_bound()
        if not target > 0 or target < floor:
            raise SearchError(f"target {target:g} {cost.unit} is impossible: no assignment of these bit options costs "
                              f"less than {floor:.4g} {cost.unit}")
    return target


# ---- the run ---------------------------------------------------------------------------------------------------
def _dominated(point: dict, others: dict[str, dict], same: list[str]) -> list[str]:
    """Baselines at least as accurate (ONNX) and at least as fast (measured), and better in one of them. A baseline
    with the very same assignment (``same``) has the same graph, so its latency is the same and any measured
    difference is noise: it dominates only by being more accurate (its weights were trained apart)."""
    out = []
    for name, o in others.items():
        if name in same:
            if o["accuracy_onnx"] > point["accuracy_onnx"]:
                out.append(name)
            continue
        better_or_equal = o["accuracy_onnx"] >= point["accuracy_onnx"] and o["measured_ms"] <= point["measured_ms"]
        strictly = o["accuracy_onnx"] > point["accuracy_onnx"] or o["measured_ms"] < point["measured_ms"]
        if better_or_equal and strictly:
            out.append(name)
    return out


def bits_document(graph: QuantGraph, assignment: list[BitOption], probabilities: list[list[float]],
                  options: list[BitOption]) -> dict:
    return {"options": [o.label for o in options], "layers": [
        {"name": layer.name, "kind": layer.kind, "c_in": layer.c_in, "c_out": layer.c_out, "kernel": layer.kernel,
         "stride": layer.stride, "groups": layer.groups, "resolution": layer.resolution, "params": layer.params,
         "macs": layer.macs, "onnx_node": layer.node, "w_bits": o.w_bits, "a_bits": o.a_bits, "choice": o.label,
         "runs_as": "int8" if o.runs_int8 else "fp32",
         "probabilities": {opt.label: round(p, 4) for opt, p in zip(options, probs)}}
        for layer, o, probs in zip(graph.layers, assignment, probabilities)]}


@dataclass
class Prepared:
    """Everything checked and costed before a run directory is touched."""

    space: Space
    arch: Arch
    data: Dataset
    device: str
    cfg: MixedPrecisionConfig
    options: list[BitOption]
    graph: QuantGraph
    lm: LatencyModel | None
    no_table: str | None
    device_settings: Device
    cost_ms: LatencyCost | None


def prepare_mixed_precision(space: Space, arch: Arch, data: Dataset, device: str, cfg: MixedPrecisionConfig, *,
                            tables_dir=None, progress: Progress = no_progress) -> Prepared:
    """Check the settings, the model and the device table; measure the model's missing per-layer and transition
    rows into the device table. Every bad input fails here, before a run directory is created."""
    cfg.validate()
    options = bit_options(cfg.weight_bits, cfg.act_bits)
    check_options(cfg.cost, options)
    lm, no_table = load_device_model(device, space, arch, required=cfg.cost == "latency", tables_dir=tables_dir)
    net = MixedPrecisionNet(build_model(space, arch), options)  # SearchError when there is nothing to quantize
    layers = trace_layers(net.model, net.names, net.input_shape)
    with tempfile.TemporaryDirectory(prefix="hwnas-mp-") as tmp:
        path = Path(tmp) / "fp32.onnx"
        export_onnx(net.float_model([FP32] * len(layers)), net.input_shape, path)
        graph = attach_onnx(layers, path)
    cost_ms: LatencyCost | None = None
    if lm is not None:
        with progress("profile layers", len(layer_items(graph))) as advance:
            profile_layers(device, graph, tables_dir=tables_dir,
                           on_progress=lambda done, total, note: advance(note=note[:40]))
        lm = LatencyModel.load(device, tables_dir)
        cost_ms = make_cost("latency", graph, options, lm, space, arch)
    cost = cost_ms if cfg.cost == "latency" else make_cost(cfg.cost, graph, options, lm, space, arch)
    resolve_target(cfg, cost)  # with the table's latency terms; checked again after the latency fit
    measure_on = lm.device if lm is not None else Device()
    return Prepared(space, arch, data, device, cfg, options, graph, lm, no_table, measure_on, cost_ms)


def run_mixed_precision(prep: Prepared, run: RunDir, *, progress: Progress = no_progress) -> dict:
    """The whole mixed-precision run (resumable through ``run``); returns the report written to report.json.

    A finished run (report.json present) is not redone: its report is returned."""
    if run.file("report.json").is_file():
        return json.loads(run.file("report.json").read_text())
    space, arch, data, device, cfg = prep.space, prep.arch, prep.data, prep.device, prep.cfg
    options, graph, lm, cost_ms, device_settings = prep.options, prep.graph, prep.lm, prep.cost_ms, \
        prep.device_settings
    no_table = prep.no_table
    latency_fit = None
    if cost_ms is not None and cfg.latency_fit_models > 0:  # latency does not depend on the weights: fit first
        fit_net = MixedPrecisionNet(build_model(space, arch), [FP32, INT8])
        with progress("fit latency cost", cfg.latency_fit_models + 1) as advance:
            latency_fit = fit_latency_cost(cost_ms, fit_net, fit_input(data.x_train[:cfg.calibration_samples], fit_net),
                                           lambda files: [s.p50_ms for s in device_settings.time_files(files)],
                                           lm.table.folder,
                                           count=cfg.latency_fit_models, seed=cfg.search.seed,
                                           on_progress=lambda d, t, note: advance(note=note))
    cost = cost_ms if cfg.cost == "latency" else make_cost(cfg.cost, graph, options, lm, space, arch)
    target = resolve_target(cfg, cost)

    # 1. fp32 pretraining (resumable), on the plain model
    plain = build_model(space, arch)
    if cfg.pretrain_epochs > 0:
        recipe = Recipe(epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr, batch_size=cfg.search.batch_size,
                        seed=cfg.search.seed)
        with progress("pretrain fp32", cfg.pretrain_epochs) as advance:
            train_model(plain, data, recipe, checkpoint=run.file("pretrain.pt"),
                        on_epoch=lambda e, row: advance(note=f"val {row['val_accuracy']:.3f}"))
    pretrained = copy.deepcopy(plain.state_dict())

    def fresh_net(choices: list[BitOption]) -> MixedPrecisionNet:
        m = build_model(space, arch)
        m.load_state_dict(pretrained)
        return MixedPrecisionNet(m, choices)

    # 2. bit-width search (resumable)
    net = fresh_net(options)
    settings = cfg.search.to_dict()
    if cfg.cost == "latency" and settings["init_float_prob"] is None:
        settings["init_float_prob"] = 0.8  # see search.init_logits: the uniform start is a saddle of the transitions
    scfg = SearchConfig(**{**settings, "target": target})
    with progress("search bits", scfg.epochs) as advance:
        result = search_bits(net, data, cost, scfg, checkpoint=run.file("search.pt"),
                             on_epoch=lambda e, row: advance(note=f"{cost.name} {row['argmax_cost']:.4g} "
                                                                  f"val {row['argmax_val_accuracy']:.3f}"))
    run.write_csv("history.csv", pd.DataFrame(result.history))
    run.write_json("bits.json", bits_document(graph, result.assignment, result.probabilities, options))
    plot_bits(graph, result.assignment, run.file("bits.png"),
              f"{space.name}: {cfg.cost}-costed bits, mean weight bits "
              f"{mean_weight_bits(graph, result.assignment):.2f}")

    # 3. fine-tune, export and measure the mixed model and the two uniform baselines
    settings = FinishSettings(cfg.finetune_lr, cfg.search.batch_size, cfg.search.seed, cfg.calibration_samples,
                              tuple(cfg.export_formats))
    common = dict(data=data, run=run, settings=settings, cost_ms=cost_ms, progress=progress)
    # The chosen assignment keeps the supernet's weights, which the search trained on these very grids (starting
    # it from the pretrained fp32 weights instead was measured worse: 0.914 against 0.939 on digits at ~4 bits).
    mixed = finish(net, graph, result.assignment, "mixed", epochs=cfg.finetune_epochs, out_name="model.onnx",
                   **common)
    baseline_epochs = scfg.epochs + cfg.finetune_epochs  # the same training after pretraining as the mixed model
    finished = [mixed]
    for name, option in (("fp32", FP32), ("int8", INT8)):
        finished.append(finish(fresh_net([option]), graph, [option] * len(graph.layers), f"uniform_{name}",
                               epochs=baseline_epochs, out_name=f"baseline_{name}.onnx", **common))
    with progress("measure ONNX models", 1) as advance:
        measure_and_choose(finished, run, device_settings)
        advance()
    baselines = {"fp32": finished[1].figures, "int8": finished[2].figures}
    same = [name for name, f in zip(("fp32", "int8"), finished[1:]) if f.assignment == result.assignment]

    report = {
        "space": space.name, "arch": arch.to_dict(), "space_args": space.space_args(), "dataset": data.name,
        "device": device, "timing": asdict(device_settings), "cost": cfg.cost,
        "target": {"value": target, "unit": cost.unit} if target is not None else None,
        "target_met": None if target is None else cost.of(result.assignment) <= target * (1 + 1e-9),
        "cost_value": cost.of(result.assignment), "cost_unit": cost.unit,
        "options": [o.label for o in options],
        **{k: mixed.figures[k] for k in ("accuracy_torch", "accuracy_onnx", "measured_ms", "predicted_ms",
                                         "size_mb", "mean_weight_bits")},
        "mixed": mixed.figures,
        "baselines": baselines,
        "same_assignment_as": same,
        "dominated_by": _dominated(mixed.figures, baselines, same),
        "search": {"epochs": scfg.epochs, "final_alpha": result.alpha, "beta": scfg.beta,
                   "repaired_layers": result.repaired_layers,
                   "pretrain_epochs": cfg.pretrain_epochs, "finetune_epochs": cfg.finetune_epochs,
                   "baseline_finetune_epochs": baseline_epochs},
        "sub8_note": SUB8_NOTE,
        "timing_note": TIMING_NOTE,
    }
    if latency_fit is not None:
        report["latency_fit"] = latency_fit
    if lm is not None:
        report["int8_speedup_by_layer_kind"] = int8_speedups(lm, graph)
        report["predicted_fp32_block_table_ms"] = lm.predict(space, arch, 32)
        report["predicted_int8_block_table_ms"] = lm.predict(space, arch, 8)
        report["estimated_keys"] = estimated_keys(lm, graph)
    else:
        report["latency_table"] = f"predicted_ms unavailable: {no_table}"
    report["report_note"] = ("accuracy_* are test-split accuracies; accuracy_torch is the fake-quant torch model, "
                             "accuracy_onnx the exported model in ONNX Runtime.")
    run.write_json("report.json", report)
    return report
