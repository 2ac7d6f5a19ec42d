"""hwnas train-dynamic | latency profile-capacity | search capacity | export-capacity (dynamic-capacity ViTs)"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.app import (
    CALIBRATION_MODELS,
    TARGET_HELP,
    app,
    console,
    latency_app,
    next_step,
    print_json,
    print_verdict,
    print_warnings,
    progress_bar,
    renamed,
    run_strategy,
    search_app,
)
from cli.cmd_latency import correction_line, correction_summary, table_clock
from nas.search.strategy import STRATEGIES

SPACE_OPT = typer.Option("vit_capacity", "--space", help="vit_capacity space name or YAML")
DATASET_OPT = typer.Option("digits", help="digits | npz:PATH | folder:PATH")
DEVICE_OPT = typer.Option(..., "--device", help="device id: the folder latency_tables/<device-id>/")
TABLES_OPT = typer.Option(None, "--tables-dir", help="base folder (default $HWNAS_LATENCY_TABLES or ./latency_tables)")


@app.command("train-dynamic")
def train_dynamic_cmd(space: str = SPACE_OPT, dataset: str = DATASET_OPT,
                      out: Optional[Path] = typer.Option(None,
                                                         help="run directory (rerun with the same one to resume)"),
                      epochs: Optional[int] = typer.Option(None, help="override the space recipe's epochs"),
                      shift: int = typer.Option(2, help="random-shift augmentation in pixels (0: none)"),
                      seed: int = typer.Option(0, help="data split and training seed"),
                      threads: int = typer.Option(1, "--threads", help="torch threads while training (1 is fastest "
                                                  "on a shared machine)"),
                      old_torch_threads: Optional[int] = typer.Option(None, "--torch-threads", hidden=True),
                      accelerator: str = typer.Option("auto", help="auto | cpu | cuda (auto: cuda when a GPU is "
                                                      "present)"),
                      precision: str = typer.Option("32", help="32 | bf16 | 16-mixed (16-mixed needs a GPU)"),
                      loader_workers: int = typer.Option(0, "--loader-workers", help="DataLoader processes that "
                                                         "decode streamed data"),
                      old_workers: Optional[int] = typer.Option(None, "--workers", hidden=True),
                      as_json: bool = typer.Option(False, "--json", help="print the report as JSON")):
    """Train a dynamic-capacity ViT once-for-all (keep ratios and MoE capacity sampled per batch)."""
    import pandas as pd
    import torch

    from nas.run import RunDir, default_run_path
    from nas.search.capacity.checkpoint import save_dynamic_vit
    from nas.search.capacity.config import capacity_factor_plan
    from nas.search.capacity.task import load_capacity_data
    from nas.search.capacity.training import plan_accuracy, train_dynamic
    from nas.search.capacity.vit import DynamicViT
    from nas.train.engine import engine_for
    from nas.train.learning_curve import plot_learning_curve

    threads = renamed("--torch-threads", "--threads", old_torch_threads, threads)
    loader_workers = renamed("--workers", "--loader-workers", old_workers, loader_workers)
    engine = engine_for(accelerator, precision, threads, loader_workers)
    data, sp = load_capacity_data(space, dataset, seed)
    recipe = sp.recipe().updated(f"space {sp.name} recipe" + (" with --epochs" if epochs else ""), seed=seed,
                                 **({"epochs": epochs} if epochs else {}))
    out = out or default_run_path("train-dynamic", sp.name)
    run = RunDir(out, {"command": "train-dynamic", "space": sp.name, "space_fingerprint": sp.fingerprint(),
                       "dataset": dataset, "recipe": recipe.model_dump(), "shift": shift, "seed": seed,
                       "accelerator": engine.accelerator.kind, "precision": engine.accelerator.precision})
    print_warnings(run.warnings)
    console.print(f"training {sp.name} once-for-all on {dataset} {data.sizes()} at {sp.resolution}px "
                  f"({sp.tokens} tokens) on {engine.accelerator.describe()} -> {out}")
    torch.manual_seed(seed)
    model = DynamicViT(sp)
    with progress_bar("train", recipe.epochs) as advance:
        result = train_dynamic(model, data, recipe, engine=engine, shift_pixels=shift,
                               checkpoint=run.file("train_state.pt"),
                               on_epoch=lambda e, row: advance(note=f"loss {row['train_loss']:.3f} val full "
                                                                    f"{row['val_accuracy_full']:.3f}"))
    run.write_csv("train_history.csv", pd.DataFrame(result.history))
    plot_learning_curve(result.history, run.file("learning_curve.png"), f"{sp.name} once-for-all on {dataset}")
    weights = save_dynamic_vit(result.model, run.file("model.pt"),
                               {"dataset": dataset, "seed": seed, "epochs": recipe.epochs})
    stages = len(sp.stages)
    checks = {f"keep{r:g}": capacity_factor_plan(sp, [r] * stages, 1.0)
              for r in sorted({1.0, 0.7, min(sp.spec.pruning.keep_ratio_options)}, reverse=True)}
    report = {"space": sp.name, "dataset": dataset, "checkpoint": str(weights), "epochs": recipe.epochs,
              "val_accuracy": {name: plan_accuracy(result.model, plan, data.val, engine)
                               for name, plan in checks.items()},
              "test_accuracy": {name: plan_accuracy(result.model, plan, data.test, engine)
                                for name, plan in checks.items()},
              "training": engine.record()}
    run.write_json("report.json", report)
    if as_json:
        print_json(report)
    else:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in report["test_accuracy"].items())
        typer.echo(f"test accuracy (capacity factor 1): {shown} -> {weights}")


@latency_app.command("profile-capacity")
def profile_capacity(space: str = SPACE_OPT, device: str = DEVICE_OPT,
                     checkpoint: Optional[Path] = typer.Option(None, help="take input channels and classes from "
                                                                          "this checkpoint's sidecar"),
                     in_channels: Optional[int] = typer.Option(None, "--in-channels", help="input channels"),
                     classes: Optional[int] = typer.Option(None, help="number of classes"),
                     ort_threads: int = typer.Option(1, "--ort-threads", help="ONNX Runtime intra-op threads"),
                     old_threads: Optional[int] = typer.Option(None, "--threads", hidden=True),
                     clock: Optional[str] = typer.Option(None, help="wall | cpu (calling thread's CPU time; 1 "
                                                         "thread); default: the device table's, else wall"),
                     calibration: int = typer.Option(CALIBRATION_MODELS,
                                                     help="whole models measured to refit the correction (0: none)"),
                     tables_dir: Optional[Path] = TABLES_OPT,
                     as_json: bool = typer.Option(False, "--json", help="print the summary as JSON")):
    """Measure every token-count unit of a vit_capacity space into a device table (resumable)."""
    from nas.latency.device import Device
    from nas.latency.profile import profile_items
    from nas.search.capacity.checkpoint import read_sidecar
    from nas.search.capacity.latency import calibrate_capacity, capacity_profile_items
    from nas.search.capacity.space import load_capacity_space

    threads = renamed("--threads", "--ort-threads", old_threads, ort_threads)
    measure_on = Device(threads=threads, clock=table_clock(clock, device, tables_dir, threads), device_id=device)
    args = (read_sidecar(checkpoint).get("space_args") or {}) if checkpoint else {}
    sp = load_capacity_space(space, in_channels=in_channels or args.get("in_channels"),
                             classes=classes or args.get("classes"))
    items = capacity_profile_items(sp)
    console.print(f"profiling {len(items)} token-count units of {sp.name} on device {device!r} "
                  f"({threads} thread{'s' if threads > 1 else ''}, clock {measure_on.clock})")
    with progress_bar("units", len(items)) as advance:
        counts = profile_items(measure_on, items, tables_dir=tables_dir,
                               on_progress=lambda d, t, note: advance(note=note))
    summary = {"device": device, "space": sp.name, **sp.space_args(), **counts}
    if calibration > 0:
        with progress_bar("calibration", calibration) as advance:
            corr = calibrate_capacity(measure_on, sp, models=calibration, tables_dir=tables_dir,
                                      on_progress=lambda d, t, note: advance(note=note))
        summary |= correction_summary(corr)
    if as_json:
        print_json(summary)
        return
    typer.echo(f"device {device}: measured {counts['measured']}, already had {counts['skipped']} of "
               f"{counts['total']} units in {counts['seconds']:.1f} s")
    if calibration > 0 and corr.fitted_on:
        typer.echo(correction_line(corr) + " (all spaces of this device)")


@search_app.command("capacity", help=STRATEGIES["capacity"].help)
def search_capacity_cmd(space: str = SPACE_OPT,
                        checkpoint: Path = typer.Option(..., help="model.pt written by `hwnas train-dynamic`"),
                        dataset: str = DATASET_OPT, device: str = DEVICE_OPT,
                        target: Optional[str] = typer.Option(None, "--target", help=TARGET_HELP.replace(
                            "0.8x:fbnet_c", "0.5x:vit_capacity, the space's full-capacity config")),
                        target_ms: Optional[float] = typer.Option(None, "--target-ms", help="latency budget in "
                                                                  "milliseconds (batch 1)"),
                        out: Optional[Path] = typer.Option(None, help="run directory (rerun the same to resume)"),
                        trials: int = typer.Option(40, help="configs to evaluate"),
                        seed: Optional[int] = typer.Option(None, help="data split (default: the checkpoint's) "
                                                                      "and sampler seed"),
                        measure: bool = typer.Option(True, "--measure/--no-measure",
                                                     help="also time every config tried in ONNX Runtime"),
                        no_fallback: bool = typer.Option(False, "--no-fallback",
                                                         help="fail on a unit the table lacks instead of estimating"),
                        tables_dir: Optional[Path] = TABLES_OPT,
                        as_json: bool = typer.Option(False, "--json", help="print the report as JSON")):
    from nas.search.capacity.strategy import CapacityJob
    from nas.search.targets import given_targets

    given = given_targets(target, target_ms)
    job = CapacityJob(space=space, checkpoint=str(checkpoint), device=device, target_ms=None, dataset=dataset,
                      trials=trials, seed=seed, measure=measure, allow_fallback=not no_fallback,
                      tables_dir=str(tables_dir) if tables_dir else None, target=given[0] if given else None)
    report, out = run_strategy("capacity", job, out)
    if as_json:
        print_json(report)
        return
    typer.echo(f"chosen {_summary(report)}; target {report['target']} = {report['target_ms']:.4g} ms -> {out}")
    print_verdict(report)
    typer.echo(next_step(report, out, tables_dir))


def _summary(report: dict) -> str:
    from nas.search.report import detail_key

    d = report[detail_key(report["method"])]
    c = d["config"]
    return ("keep " + ",".join(f"{r:g}" for r in c["keep_ratios"]) + f" threshold {c['threshold']:g}: "
            f"test {report['accuracy']:.4f} (onnx {d['accuracy_onnx']:.4f}, max abs diff "
            f"{report['onnx_max_abs_diff']:.1e}); predicted {report['predicted_ms']:.3f} ms, measured "
            f"{report['measured_ms']:.3f} ms ({report['prediction_error_pct']:+.1f}% vs predicted)")


@app.command("export-capacity")
def export_capacity_cmd(space: str = SPACE_OPT,
                        checkpoint: Path = typer.Option(..., help="model.pt written by `hwnas train-dynamic`"),
                        dataset: str = DATASET_OPT, device: str = DEVICE_OPT,
                        config: Optional[Path] = typer.Option(None, help="capacity.json from a search"),
                        keep: Optional[str] = typer.Option(None, help="keep ratios per stage, e.g. 0.7,0.7,0.7 "
                                                                      "(one value: every stage)"),
                        threshold: float = typer.Option(0.3, help="capacity predictor threshold (with --keep)"),
                        out: Path = typer.Option(..., help="output folder (model.onnx, report.json)"),
                        seed: Optional[int] = typer.Option(None, help="data split (default: the checkpoint's)"),
                        no_fallback: bool = typer.Option(False, "--no-fallback",
                                                         help="fail on a unit the table lacks instead of estimating"),
                        tables_dir: Optional[Path] = TABLES_OPT,
                        as_json: bool = typer.Option(False, "--json", help="print the report as JSON")):
    """Export one config to ONNX with a parity check, and measure its latency against the prediction."""
    from nas.run import RunDir
    from nas.search.capacity.config import (
        CapacityConfig,
        CapacityConfigError,
        load_config_file,
        parse_keep_ratios,
        validate_config,
    )
    from nas.search.capacity.search import export_config
    from nas.search.capacity.space import load_capacity_space
    from nas.search.capacity.strategy import load_evaluator
    from nas.search.report import write_report

    if (config is None) == (keep is None):
        raise CapacityConfigError("give exactly one of --config capacity.json or --keep RATIOS")
    bare = load_capacity_space(space)
    if config is not None:
        cfg = load_config_file(config, bare.name)
    else:
        ratios = parse_keep_ratios(keep)
        cfg = CapacityConfig(ratios * len(bare.stages) if len(ratios) == 1 else ratios, threshold)
    validate_config(bare, cfg, str(config) if config else "--keep")  # before anything is loaded or written
    evaluator, seed = load_evaluator(space, dataset, str(checkpoint), device, seed, not no_fallback,
                                     str(tables_dir) if tables_dir else None, measure=False)
    evaluator.evaluate(cfg)  # before anything is written: a missing table key fails here
    run = RunDir(out, {"command": "export-capacity", "space": evaluator.model.space.name,
                       "checkpoint": str(checkpoint), "dataset": dataset, "device": device, "config": cfg.to_dict(),
                       "seed": seed})
    print_warnings(run.warnings)
    report = write_report(run, export_config(evaluator, cfg, run, method="export-capacity"))
    if as_json:
        print_json(report)
        return
    typer.echo(f"{_summary(report)} -> {out}")
