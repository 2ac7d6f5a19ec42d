"""hwnas space show | sample"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cli.app import console, print_json, print_table, space_app


@space_app.command("show")
def show(ref: str = typer.Argument(..., help="space name, space YAML, or arch JSON"),
         resolution: Optional[int] = typer.Option(None, help="input resolution"),
         width: Optional[float] = typer.Option(None, help="width multiplier"),
         classes: Optional[int] = typer.Option(None, help="number of classes"),
         as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Print the layers, MACs and params of a model (a space shows its largest arch)."""
    from nas.arch.space import resolve_model_ref
    from nas.models.builder import build_block, count_macs, count_params

    space, arch = resolve_model_ref(ref, resolution=resolution, width_multiplier=width, classes=classes)
    rows, total_macs, total_params = [], 0, 0
    for b in space.resolve(arch):
        block = build_block(b)
        macs = count_macs(block, (b.c_in, b.resolution, b.resolution))
        params = count_params(block)
        total_macs, total_params = total_macs + macs, total_params + params
        rows.append({"role": b.role, "op": b.op, "c_in": b.c_in, "c_out": b.c_out, "stride": b.stride,
                     "resolution": b.resolution, "macs": macs, "params": params})
    if as_json:
        print_json({"space": space.name, "arch": arch.to_dict(), **space.space_args(), "macs": total_macs,
                    "params": total_params, "searchable": not space.is_fixed, "blocks": rows})
        return
    table = Table(title=f"{space.name} @ {space.resolution}px, width x{space.width_multiplier}, "
                        f"{space.classes} classes")
    for col in ("#", "role", "op", "in", "out", "stride", "res", "MMACs", "params"):
        table.add_column(col, justify="right" if col not in ("role", "op") else "left")
    for i, r in enumerate(rows):
        table.add_row(str(i), r["role"], r["op"], str(r["c_in"]), str(r["c_out"]), str(r["stride"]),
                      str(r["resolution"]), f"{r['macs'] / 1e6:.2f}", f"{r['params']:,}")
    print_table(table)
    typer.echo(f"{space.name}: {total_macs / 1e6:.1f} M MACs, {total_params / 1e6:.3f} M params")


@space_app.command("list")
def list_spaces(as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """List the built-in spaces."""
    from nas.arch.space import load_space
    from nas.arch.spec import builtin_spaces

    rows = {}
    for name, kind in builtin_spaces().items():
        if kind != "conv":
            rows[name] = {"kind": kind, "searchable_layers": None, "fixed": False}
            continue
        space = load_space(name)
        rows[name] = {"kind": kind, "searchable_layers": 0 if space.is_fixed else len(space.layers),
                      "fixed": space.is_fixed}
    if as_json:
        print_json({"spaces": rows})
        return
    column = max(map(len, rows))
    for name, r in rows.items():
        shown = f"{r['kind']} space" if r["searchable_layers"] is None else \
            "fixed model" if r["fixed"] else f"{r['searchable_layers']} searchable layers"
        typer.echo(f"{name:{column}s}  {shown}")


@space_app.command("sample")
def sample(name: str = typer.Argument(..., help="space name or YAML"),
           seed: int = typer.Option(0, help="random seed"),
           resolution: Optional[int] = typer.Option(None), width: Optional[float] = typer.Option(None),
           classes: Optional[int] = typer.Option(None),
           in_channels: Optional[int] = typer.Option(None, "--in-channels", help="input channels (1: grey images)"),
           out: Optional[Path] = typer.Option(None, help="write the arch JSON here (default: stdout)")):
    """Draw a random arch from a space."""
    import numpy as np

    from nas.arch.space import arch_document, load_space
    from nas.files import write_json

    space = load_space(name, resolution=resolution, width_multiplier=width, classes=classes, in_channels=in_channels)
    doc = arch_document(space, space.sample(np.random.default_rng(seed)))
    if out is None:
        print_json(doc)
    else:
        write_json(out, doc)
        console.print(f"wrote {out}")
