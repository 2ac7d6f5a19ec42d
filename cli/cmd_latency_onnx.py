"""hwnas latency predict MODEL.onnx: any ONNX model's latency on a device, kernel by kernel (the ``predict``
command of ``cmd_latency`` hands ``.onnx`` files here)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.app import print_json, print_table, print_warnings, progress_bar


def is_onnx_file(ref: str) -> bool:
    return ref.lower().endswith(".onnx")


def predict_onnx_file(path: Path, device: str, *, profile: bool, no_fallback: bool, tables_dir: Path | None,
                      as_json: bool, arch_options: dict) -> None:
    """Print the kernel-by-kernel prediction of an ONNX file (``--json``: one object)."""
    from nas.errors import LatencyTableError
    from nas.latency.onnx_predict import predict_onnx

    given = [f"--{name}" for name, value in arch_options.items() if value not in (None, 32)]
    if given:
        raise LatencyTableError(f"{', '.join(given)} describe an arch of a space, not an ONNX file: the model's own "
                                f"input shapes and precision are used")
    if profile:
        with progress_bar("kernels", None) as advance:
            shown = [0]

            def on_progress(done: int, total: int, note: str) -> None:
                advance(done - shown[0], note=note)
                shown[0] = done
            prediction = predict_onnx(path, device, tables_dir, profile=True, allow_fallback=not no_fallback,
                                      on_progress=on_progress)
    else:
        prediction = predict_onnx(path, device, tables_dir, allow_fallback=not no_fallback)
    if as_json:
        print_json(prediction.to_dict())
        return
    grid = Table("kernel", "op", "ms", "")
    for line in prediction.kernels:
        grid.add_row(line["node"], line["op"], f"{line['ms']:.4f}", "estimated" if line["estimated"] else "")
    grid.add_row("(session call)", "inputs and outputs", f"{prediction.call_ms:.4f}", "")
    print_table(grid)
    print_warnings(prediction.warnings)
    estimated = f", {prediction.estimated} estimated" if prediction.estimated else ""
    typer.echo(f"predicted {prediction.total_ms:.3f} ms for {path.name} on {device} ({len(prediction.kernels)} "
               f"kernels{estimated}, session call {prediction.call_ms:.3f} ms)")
