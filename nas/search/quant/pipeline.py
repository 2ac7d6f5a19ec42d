"""A mixed-precision run, end to end: pretrain fp32, search bit-widths, fine-tune, export ONNX, measure, compare.

Stages write into a RunDir and each resumes: ``pretrain.pt`` (fp32 training), ``search.pt`` (bit search),
``<name>_finetune.pt`` (quantization-aware fine-tuning of the mixed model, from the search's weights, and of the
uniform fp32 / int8 baselines, from the pretrained fp32 weights, for the search's epochs and the fine-tuning's).
Exported files: ``model.onnx`` (the mixed model, in the faster of QDQ and QOperator on the device),
``baseline_fp32.onnx``, ``baseline_int8.onnx``; figures go to ``report.json`` (``nas.search.report``), ``arch.json``,
``bits.json``, ``history.csv`` and ``bits.png``. ``nas.search.quant.prepare`` checks and costs everything first.
"""

from __future__ import annotations

import copy
import json

import pandas as pd

from nas.arch.space import arch_document
from nas.data.task import load_task
from nas.latency.drift import drift_before_measuring
from nas.latency.measurement import Measurement
from nas.latency.precision import int8_speedups
from nas.latency.timing import LatencyStats
from nas.models.builder import build_model
from nas.progress import Progress, no_progress, stage
from nas.run import RunDir
from nas.search.quant.costs import mean_weight_bits
from nas.search.quant.finish import FinishSettings, finish, measure_and_choose, onnx_accuracy_warning
from nas.search.quant.graph import QuantGraph
from nas.search.quant.latency_fit import fit_latency_cost
from nas.search.quant.mixed import BitOption, MixedPrecisionNet
from nas.search.quant.plot import plot_bits
from nas.search.quant.prepare import (
    FP32,
    INT8,
    MixedPrecisionJob,
    Prepared,
    make_cost,
    prepare_mixed_precision,
    checked_target,
)
from nas.search.quant.search import SearchConfig, search_bits
from nas.search.report import MODEL, build_report, latency_remedies, write_report
from nas.search.strategy import Strategy
from nas.train.engine import Engine
from nas.train.evaluation import fit_input
from nas.train.recipe import Recipe
from nas.train.training import train_model

SUB8_NOTE = ("Layers below 8 bits are exported with their weights rounded to their own grid (per-channel scale "
             "max|w|/(2^(b-1)-1)) and stored as int8, and activations below 8 bits with a b-bit scale held in uint8: "
             "ONNX Runtime has no sub-8-bit CPU kernels, so they run at int8 speed and take int8 space in the file. "
             "size_mb counts each layer at its own bits (effective size); storage_size_mb is what the weights take "
             "as stored, file_mb the shipped file on disk, which a --target-mb is judged on.")
TIMING_NOTE = ("Latencies are ONNX Runtime p50s at batch 1 on the device's provider and threads, measured on a "
               "machine shared with other jobs: expect noise of several percent between runs.")



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


def size_verdict(target_mb: float | None, effective_mb: float, file_mb: float) -> dict:
    """Whether the shipped model.onnx meets a size target: judged on its size on disk (``file_mb``), since weights
    below 8 bits are stored as int8; the effective size (each layer at its own bits) is reported beside it. Returns
    ``target_met`` (None without a target), ``target_judged_on`` and ``warnings``. (A latency target is judged on
    the measurement by ``nas.search.report.build_report``.)"""
    if target_mb is None:
        return {"target_met": None, "target_judged_on": None, "warnings": []}
    met = file_mb <= target_mb * (1 + 1e-9)
    why = ("weights below 8 bits are stored as int8" if effective_mb <= target_mb
           else "the search did not reach the target either")
    warnings = [] if met else [
        f"model.onnx is {file_mb:.4g} MB on disk, over --target-mb {target_mb:g} (effective size "
        f"{effective_mb:.4g} MB: {why}). Options: raise --target-mb, or offer lower --weight-bits"]
    return {"target_met": met, "target_judged_on": "file_mb", "warnings": warnings}


def bits_document(graph: QuantGraph, assignment: list[BitOption], probabilities: list[list[float]],
                  options: list[BitOption]) -> dict:
    return {"options": [o.label for o in options], "layers": [
        {"name": layer.name, "kind": layer.kind, "c_in": layer.c_in, "c_out": layer.c_out, "kernel": layer.kernel,
         "stride": layer.stride, "groups": layer.groups, "resolution": layer.resolution, "params": layer.params,
         "macs": layer.macs, "onnx_node": layer.node, "w_bits": o.w_bits, "a_bits": o.a_bits, "choice": o.label,
         "runs_as": "int8" if o.runs_int8 else "fp32",
         "probabilities": {opt.label: round(p, 4) for opt, p in zip(options, probs)}}
        for layer, o, probs in zip(graph.layers, assignment, probabilities)]}


def run_mixed_precision(prep: Prepared, run: RunDir, *, progress: Progress = no_progress) -> dict:
    """The whole mixed-precision run (resumable through ``run``); returns the report written to report.json.

    A finished run (report.json present) is not redone: its report is returned."""
    if run.file("report.json").is_file():
        return json.loads(run.file("report.json").read_text())
    space, arch, data, device, cfg = prep.space, prep.arch, prep.data, prep.device, prep.cfg
    options, graph, lm, cost_ms, measure_on = prep.options, prep.graph, prep.lm, prep.cost_ms, prep.measure_on
    no_table = prep.no_table
    engine = prep.job.engine if prep.job is not None else Engine()
    latency_fit = None
    if cost_ms is not None and cfg.latency_fit_models > 0:  # latency does not depend on the weights: fit first
        fit_net = MixedPrecisionNet(build_model(space, arch), [FP32, INT8])
        with stage(progress, "fit latency cost", cfg.latency_fit_models + 1) as advance:
            samples = fit_input(data.train.first(cfg.calibration_samples), fit_net)
            latency_fit = fit_latency_cost(cost_ms, fit_net, samples,
                                           lambda files: [s.p50_ms for s in measure_on.device.time_files_twice(files)],
                                           lm.table.folder,
                                           count=cfg.latency_fit_models, seed=cfg.search.seed,
                                           on_progress=lambda d, t, note: advance(note=note))
    cost = cost_ms if cfg.cost == "latency" else make_cost(cfg.cost, graph, options, lm, space, arch)
    target = checked_target(cfg, cost)

    # 1. fp32 pretraining (resumable), on the plain model
    plain = build_model(space, arch)
    if cfg.pretrain_epochs > 0:
        recipe = Recipe(epochs=cfg.pretrain_epochs, lr=cfg.pretrain_lr, batch_size=cfg.search.batch_size,
                        seed=cfg.search.seed)
        with stage(progress, "pretrain fp32", cfg.pretrain_epochs) as advance:
            train_model(plain, data, recipe, engine=engine, checkpoint=run.file("pretrain.pt"),
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
    with stage(progress, "search bits", scfg.epochs) as advance:
        result = search_bits(net, data, cost, scfg, engine=engine, checkpoint=run.file("search.pt"),
                             on_epoch=lambda e, row: advance(note=f"{cost.name} {row['argmax_cost']:.4g} "
                                                                  f"val {row['argmax_val_accuracy']:.3f}"))
    run.write_csv("history.csv", pd.DataFrame(result.history))
    run.write_json("arch.json", arch_document(space, arch))
    run.write_json("bits.json", bits_document(graph, result.assignment, result.probabilities, options))
    plot_bits(graph, result.assignment, run.file("bits.png"),
              f"{space.name}: {cfg.cost}-costed bits, mean weight bits "
              f"{mean_weight_bits(graph, result.assignment):.2f}")

    # 3. fine-tune, export and measure the mixed model and the two uniform baselines
    settings = FinishSettings(lr=cfg.finetune_lr, batch_size=cfg.search.batch_size, seed=cfg.search.seed,
                              calibration_samples=cfg.calibration_samples, formats=tuple(cfg.export_formats))
    common = dict(data=data, run=run, settings=settings, cost_ms=cost_ms, progress=progress, engine=engine)
    # The chosen assignment keeps the supernet's weights, which the search trained on these very grids (starting
    # it from the pretrained fp32 weights instead was measured worse: 0.914 against 0.939 on digits at ~4 bits).
    mixed = finish(net, graph, result.assignment, "mixed", epochs=cfg.finetune_epochs, out_name="model.onnx",
                   **common)
    baseline_epochs = scfg.epochs + cfg.finetune_epochs  # the same training after pretraining as the mixed model
    finished = [mixed]
    for name, option in (("fp32", FP32), ("int8", INT8)):
        finished.append(finish(fresh_net([option]), graph, [option] * len(graph.layers), f"uniform_{name}",
                               epochs=baseline_epochs, out_name=f"baseline_{name}.onnx", **common))
    with stage(progress, "measure ONNX models", 1) as advance:
        drift = drift_before_measuring(lm.table if lm is not None else None, measure_on.device) \
            if measure_on.on_device else None
        measure_and_choose(finished, run, measure_on.device)
        advance()
    baselines = {"fp32": finished[1].figures, "int8": finished[2].figures}
    same = [name for name, f in zip(("fp32", "int8"), finished[1:]) if f.assignment == result.assignment]

    verdict = size_verdict(target if cost.name == "size" else None, cost.of(result.assignment),
                           mixed.figures["file_mb"])
    warnings = [w for label, f in (("model.onnx", mixed.figures), ("baseline_fp32.onnx", baselines["fp32"]),
                                   ("baseline_int8.onnx", baselines["int8"]))
                if (w := onnx_accuracy_warning(label, f)) is not None] + verdict.pop("warnings")
    detail = {
        "space": space.name, "arch": arch.to_dict(), "space_args": space.space_args(), "dataset": data.name,
        "timing": measure_on.device.to_dict(), "cost": cfg.cost,
        "target": {"value": target, "unit": cost.unit} if target is not None else None,
        "cost_value": cost.of(result.assignment), "cost_unit": cost.unit, **verdict,
        "options": [o.label for o in options],
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
        detail["latency_fit"] = latency_fit
    if lm is not None:
        detail["int8_speedup_by_layer_kind"] = int8_speedups(lm.table, cost_ms.table.graph)
        detail["predicted_fp32_block_table_ms"] = lm.predict(space, arch, 32)
        detail["predicted_int8_block_table_ms"] = lm.predict(space, arch, 8)
        detail["estimated_keys"] = [str(k) for k in cost_ms.table.estimated]
    else:
        detail["latency_table"] = f"predicted_ms unavailable: {no_table}"
    detail["report_note"] = ("accuracy is the exported model's (ONNX Runtime) test accuracy; accuracy_torch is the "
                             "fake-quant torch model's, accuracy_onnx the exported model's.")
    stats = mixed.figures["latency_stats"]
    measurement = Measurement.from_stats(LatencyStats(**stats), measure_on, drift)
    report = build_report("mixed-precision", device=device, accuracy=mixed.figures["accuracy_onnx"],
                          predicted_ms=mixed.figures["predicted_ms"], measured_ms=mixed.figures["measured_ms"],
                          onnx_max_abs_diff=mixed.figures["onnx_max_abs_diff"],
                          target_ms=target if cost.name == "latency" else None, within_target=verdict["target_met"],
                          target=cfg.target if cost.name == "latency" else None,
                          measurement=measurement, detail=detail, warnings=warnings,
                          remedies=latency_remedies(device, tables_dir=prep.job.tables_dir if prep.job else None,
                                                    model_path=run.file(MODEL), space=space))
    return write_report(run, report)


class MixedPrecisionStrategy(Strategy):
    """``hwnas search mixed-precision`` as a ``nas.search.strategy.Strategy`` (configuration: ``MixedPrecisionJob``)."""

    name = "mixed-precision"

    def prepare(self, progress: Progress = no_progress) -> Prepared:
        job: MixedPrecisionJob = self.config
        job.settings.validate()
        data, space, arch = load_task(job.dataset, job.arch, resolution=job.resolution, width=job.width,
                                      seed=job.seed)
        prep = prepare_mixed_precision(space, arch, data, job.device, job.settings, tables_dir=job.tables_dir,
                                       progress=progress)
        prep.job = job
        return prep

    def run(self, prepared: Prepared, run: RunDir, progress: Progress = no_progress) -> dict:
        return run_mixed_precision(prepared, run, progress=progress)
