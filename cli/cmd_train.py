"""hwnas train"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.app import app, console, print_json, print_warnings, progress_bar, renamed
from nas.errors import HwnasError


@app.command("train")
def train(ref: str = typer.Argument(..., help="model name (fbnet_a ...), space name (its largest arch) or arch JSON"),
          dataset: str = typer.Option("digits", help="digits | npz:PATH | folder:PATH"),
          recipe: Optional[Path] = typer.Option(None, help="recipe YAML/JSON (default: built-in recipe)"),
          epochs: Optional[int] = typer.Option(None, help="override the recipe's epochs"),
          resolution: Optional[int] = typer.Option(None, help="input resolution (default: data size, >= 32)"),
          width: Optional[float] = typer.Option(None, help="width multiplier"),
          seed: int = typer.Option(0, help="data split and training seed"),
          accelerator: str = typer.Option("auto", help="auto | cpu | cuda (auto: cuda when a GPU is present)"),
          precision: str = typer.Option("32", help="32 | bf16 | 16-mixed (16-mixed needs a GPU)"),
          threads: Optional[int] = typer.Option(None, help="torch threads while training (default: all cores; "
                                                "on a shared machine 1 can be much faster)"),
          loader_workers: int = typer.Option(0, "--loader-workers", help="DataLoader processes that decode "
                                             "streamed data"),
          old_workers: Optional[int] = typer.Option(None, "--workers", hidden=True),
          skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="folder: train without the "
                                               "images that cannot be read (default: refuse)"),
          ort_threads: int = typer.Option(1, "--ort-threads", help="ONNX Runtime threads for the latency "
                                          "measurement"),
          old_measure_threads: Optional[int] = typer.Option(None, "--measure-threads", hidden=True),
          out: Optional[Path] = typer.Option(None, help="run directory (rerun with the same one to resume)"),
          as_json: bool = typer.Option(False, "--json", help="print the report as JSON")):
    """Train a model, test it, export model.onnx, check parity and measure its latency."""
    from nas.data.mismatch import mismatch_warnings
    from nas.data.task import load_task
    from nas.latency.device import Device
    from nas.latency.measurement import MeasuringDevice
    from nas.run import RunDir, default_run_path
    from nas.search.finalize import train_export_measure
    from nas.train.distributed import FollowerDone
    from nas.train.engine import engine_for
    from nas.train.learning_curve import plot_learning_curve
    from nas.train.recipe import load_recipe

    loader_workers = renamed("--workers", "--loader-workers", old_workers, loader_workers)
    measure_threads = renamed("--measure-threads", "--ort-threads", old_measure_threads, ort_threads)
    if measure_threads < 1:
        raise HwnasError(f"--ort-threads must be at least 1 (ONNX Runtime threads for the latency "
                         f"measurement), got {measure_threads}")
    engine = engine_for(accelerator, precision, threads, loader_workers)
    data, space, arch = load_task(dataset, ref, resolution=resolution, width=width, seed=seed,
                                  skip_bad_images=skip_bad_images)
    print_warnings(mismatch_warnings(data, space, ref))
    rec = load_recipe(recipe)
    rec = rec.updated(str(recipe or "recipe") + (" with --epochs" if epochs else ""), seed=seed,
                      **({"epochs": epochs} if epochs else {}))
    out = out or default_run_path("train", space.name)
    run = RunDir(out, {"command": "train", "ref": ref, "dataset": dataset, "space_args": space.space_args(),
                       "arch": arch.to_dict(), "recipe": rec.model_dump(), "seed": seed,
                       "measure_threads": measure_threads, "normalization": data.normalization,
                       "accelerator": engine.accelerator.kind, "precision": engine.accelerator.precision,
                       "world_size": engine.world.size})
    print_warnings(run.warnings)
    console.print(f"training {space.name} on {dataset} {data.sizes()} at {space.resolution}px on "
                  f"{engine.accelerator.describe()} -> {out}")
    try:
        with progress_bar("train", rec.epochs) as advance:
            report = train_export_measure(
                space, arch, data, rec, run, measure_on=MeasuringDevice(Device(threads=measure_threads)),
                engine=engine,
                on_epoch=lambda e, row: advance(note=f"loss {row['train_loss']:.3f} val {row['val_accuracy']:.3f} "
                                                     f"({engine.accelerator.threads} threads)"))
    except FollowerDone:  # torchrun: ranks above 0 trained their share; rank 0 exports and reports
        return
    report["training"] = engine.record()
    run.write_json("report.json", report)
    plot_learning_curve(run.file("train_history.csv"), run.file("learning_curve.png"), f"{space.name} on {dataset}")
    if as_json:
        print_json(report)
    else:
        typer.echo(f"test accuracy {report['accuracy']:.4f} (onnx {report['accuracy_onnx']:.4f}), "
                   f"onnx max abs diff {report['onnx_max_abs_diff']:.2e}, "
                   f"latency {report['measured_ms']:.3f} ms ({measure_threads} thread), "
                   f"{report['macs'] / 1e6:.2f} M MACs, {report['params'] / 1e6:.3f} M params -> {out}")
