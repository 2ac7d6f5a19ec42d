"""hwnas latency bundle | import: a device that cannot run hwnas, measured through a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.app import CALIBRATION_MODELS, latency_app, print_json, progress_bar
from cli.cmd_latency import SPACE_OPT, space_from_options


@latency_app.command("bundle")
def bundle(space: str = SPACE_OPT,
           out: Path = typer.Option(..., "--out", help="the .zip to write"),
           resolution: Optional[int] = typer.Option(None, help="input resolution (default: the space's)"),
           width: Optional[float] = typer.Option(None, help="width multiplier"),
           classes: Optional[int] = typer.Option(None, help="number of classes"),
           in_channels: Optional[int] = typer.Option(None, "--in-channels", help="input channels"),
           int8: bool = typer.Option(False, "--int8", help="also bundle static QDQ int8 blocks (bits=8)"),
           calibration: int = typer.Option(CALIBRATION_MODELS, help="whole calibration models to include"),
           as_json: bool = typer.Option(False, "--json", help="print the summary as JSON")):
    """Write a zip (block ONNX files, manifest, measure.py) to profile a device that cannot run hwnas."""
    from nas.latency.bundle import check_bundle_out, write_bundle
    from nas.latency.calibrate import check_calibration_count
    from nas.latency.profile import space_profile_items

    check_calibration_count(calibration)
    check_bundle_out(out)
    sp = space_from_options(space, resolution, width, classes, in_channels)
    bits = (32, 8) if int8 else (32,)
    with progress_bar("bundle", len(space_profile_items(sp, bits)) + calibration) as advance:
        manifest = write_bundle(sp, out, bits=bits, calibration=calibration,
                                on_progress=lambda d, t, note: advance(note=note))
    if as_json:
        print_json({"bundle": str(out), "space": sp.name, **sp.space_args(), "blocks": len(manifest["blocks"]),
                    "calibration_models": len(manifest["models"])})
        return
    typer.echo(f"wrote {out}: {len(manifest['blocks'])} blocks, {len(manifest['models'])} calibration models. "
               f"On the device: python measure.py {out.name} --device ID --out results.json; "
               f"then: hwnas latency import results.json")


@latency_app.command("import")
def import_(results: Path = typer.Argument(..., help="results.json written by the bundle's measure.py"),
            device: Optional[str] = typer.Option(None, "--device", help="device id (default: the one in the file)"),
            tables_dir: Optional[Path] = typer.Option(None, help="base folder of device tables"),
            as_json: bool = typer.Option(False, "--json", help="print the summary as JSON")):
    """Add a remote device's measurements as a new device table."""
    from nas.latency.bundle import import_results

    summary = import_results(results, device, tables_dir)
    if as_json:
        print_json(summary)
        return
    typer.echo(f"imported device {summary['device']} ({summary['cpu_model']}, onnxruntime "
               f"{summary['onnxruntime_version']}, {summary['provider']}, {summary['threads']} thread(s)): "
               f"{summary['rows']} rows, correction fitted on {summary['calibration_models']} models "
               f"-> {summary['folder']}")
