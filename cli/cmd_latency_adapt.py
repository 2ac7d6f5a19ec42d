"""hwnas latency adapt: a new device's table from an existing device's table and <= 20 whole models measured on it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.app import console, latency_app, print_json

SOURCE_OPT = typer.Option(..., "--from", help="device A: the profiled table to start from")


@latency_app.command("adapt")
def adapt(source: str = SOURCE_OPT,
          device: str = typer.Option(..., "--device", help="device B: the new device id"),
          space: str = typer.Option(..., "--space", help="space name or YAML (its archs are measured on B)"),
          resolution: Optional[int] = typer.Option(None, help="input resolution (default: the space's)"),
          width: Optional[float] = typer.Option(None, help="width multiplier"),
          classes: Optional[int] = typer.Option(None, help="number of classes"),
          in_channels: Optional[int] = typer.Option(None, "--in-channels", help="input channels"),
          models: int = typer.Option(20, help="whole models measured on B (3 to 20)"),
          threads: int = typer.Option(1, "--ort-threads", help="B: ONNX Runtime intra-op threads"),
          optimization: str = typer.Option("all", help="B: graph optimisation: none | basic | extended | all"),
          batch: int = typer.Option(1, help="B: batch size"),
          int8: bool = typer.Option(False, "--int8", help="B runs static int8 models (QDQ)"),
          provider: str = typer.Option("CPUExecutionProvider", help="B: ONNX Runtime execution provider"),
          clock: Optional[str] = typer.Option(None, help="B: wall | cpu (default: A's, when B has 1 thread)"),
          results: Optional[Path] = typer.Option(None, "--results", help="B's measurements from a bundle's "
                                                                          "measure.py (instead of measuring here)"),
          bundle: Optional[Path] = typer.Option(None, "--bundle", help="write the bundle of models to measure on B "
                                                                        "(a .zip with measure.py) and stop"),
          tables_dir: Optional[Path] = typer.Option(None, help="base folder of device tables"),
          as_json: bool = typer.Option(False, "--json", help="print the summary as JSON")):
    """Build device B's table from device A's and a few whole models measured on B (in the spirit of HELP)."""
    from nas.arch.space import load_space
    from nas.errors import LatencyTableError
    from nas.latency.adapt import MAX_MEASUREMENTS, adapt_device, adapt_here, measured_from_results
    from nas.latency.bundle import load_results, write_bundle
    from nas.latency.device import check_provider
    from nas.latency.model import LatencyModel
    from nas.latency.table import DeviceManifest, device_dir

    if not 3 <= models <= MAX_MEASUREMENTS:
        raise LatencyTableError(f"--models must be 3 to {MAX_MEASUREMENTS}, got {models}")
    if results is not None and bundle is not None:
        raise LatencyTableError("--results imports B's measurements, --bundle writes what to measure: give one")
    sp = load_space(space, resolution=resolution, width_multiplier=width, classes=classes, in_channels=in_channels)
    if bundle is not None:
        manifest = write_bundle(sp, bundle, calibration=models, blocks=False, model_bits=8 if int8 else 32)
        typer.echo(f"wrote {bundle}: {len(manifest['models'])} models. On device B: python measure.py {bundle.name} "
                   f"--device {device} --out results.json [--threads N ...]; then: hwnas latency adapt --from "
                   f"{source} --device {device} --space {space} --results results.json"
                   + (" --int8" if int8 else ""))
        return
    lm = LatencyModel.load(source, tables_dir)
    if device_dir(device, tables_dir).exists():
        raise LatencyTableError(f"device {device!r} already exists; adapt into another --device")
    bits = 8 if int8 else 32
    if results is not None:
        data = load_results(results)
        target = DeviceManifest.from_dict({**data["device"], "device_id": device, "remote": True}, str(results))
        summary = adapt_device(lm, target, sp, measured_from_results(data, bits), bits=bits, tables_dir=tables_dir)
    else:
        check_provider(provider)
        clock = clock or (lm.table.manifest.clock if threads == 1 else "wall")
        target = DeviceManifest.for_this_machine(device, provider, threads, optimization, clock, batch)
        console.print(f"measuring {models} models of {sp.name} at {sp.resolution}px on device {device!r} "
                      f"({provider}, {threads} thread(s), optimisation {optimization}, batch {batch}, "
                      f"{'int8' if int8 else 'fp32'})")
        summary = adapt_here(lm, target, sp, models=models, bits=bits, tables_dir=tables_dir)
    if as_json:
        print_json(summary)
        return
    typer.echo(f"device {device}: {summary['rows']} rows adapted from {source} on {summary['fitted_on']} whole models "
               f"(fit MAPE {summary['fit_mape']:.1f}%, leave-one-out {summary['loo_mape']:.1f}%, device {source}'s own "
               f"table {summary['source_mape']:.1f}%; {len(summary['op_scale'])} op ratios to {source}, "
               f"{min(summary['op_scale'].values(), default=0):.2f}-{max(summary['op_scale'].values(), default=0):.2f}) "
               f"-> {summary['folder']}")
