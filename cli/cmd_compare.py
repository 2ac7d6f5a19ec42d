"""hwnas compare  (searched winners against width-scaled published models, at the same measured latency)"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from cli.app import app, console, print_json, print_table, print_warnings, progress_bars


def _pm(mean: float, std: float | None, digits: int) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


@app.command("compare")
def compare(runs: List[Path] = typer.Argument(..., help="run directories of search dnas | dmasking | nars "
                                                         "| chamnet | optuna"),
            baseline: Optional[List[str]] = typer.Option(None, "--baseline", help="a fixed model to width-scale to "
                                                         "each run's measured latency (repeat; default fbnet_a and "
                                                         "mobilenet_v2)"),
            seeds: int = typer.Option(1, help="training seeds per model (the run's recipe seed, +1, ...)"),
            tables_dir: Optional[Path] = typer.Option(None, "--tables-dir", help="base folder of latency tables "
                                                      "(default $HWNAS_LATENCY_TABLES or ./latency_tables)"),
            accelerator: str = typer.Option("auto", help="auto | cpu | cuda (auto: cuda when a GPU is present)"),
            precision: str = typer.Option("32", help="32 | bf16 | 16-mixed (16-mixed needs a GPU)"),
            threads: Optional[int] = typer.Option(None, help="torch threads while training (default: all cores; "
                                                  "on a shared machine 1 can be much faster)"),
            workers: int = typer.Option(0, help="DataLoader worker processes that decode streamed data"),
            out: Optional[Path] = typer.Option(None, help="comparison folder (rerun with the same one to resume)"),
            as_json: bool = typer.Option(False, "--json", help="print the results as JSON")):
    """Width-scale published models to each run's measured latency on its device, train them with the run's
    recipe and data, export and time everything, and plot test accuracy against measured latency."""
    from nas.run import default_run_path
    from nas.search.compare.job import DEFAULT_BASELINES, CompareJob, prepare_compare, run_compare
    from nas.train.engine import engine_for

    engine = engine_for(accelerator, precision, threads, workers)
    job = CompareJob([str(r) for r in runs], list(baseline or DEFAULT_BASELINES), seeds,
                     str(tables_dir) if tables_dir else None, engine)
    with progress_bars() as progress:
        prepared = prepare_compare(job, progress)  # bad input fails here: one line, exit 2, nothing written
        out = out or default_run_path("compare", prepared.names[0])
        console.print(f"comparing {len(prepared.runs)} run(s) with {', '.join(job.baselines)} over {seeds} seed(s) "
                      f"on {engine.accelerator.describe()} -> {out}")
        summary = run_compare(prepared, out, progress)
    if as_json:
        print_json(summary)
        return
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "1 seed"
    table = Table(title=f"test accuracy and measured latency ({spread}; vs searched: latency ratio, accuracy "
                        f"difference)")
    for col in ("run", "model", "accuracy", "measured ms", "vs searched", "MMACs", "params"):
        table.add_column(col, justify="left" if col in ("run", "model") else "right")
    for r in summary["results"]:
        table.add_row(r["run_name"], r["label"], _pm(r["accuracy"], r["accuracy_std"], 4),
                      _pm(r["measured_ms"], r["measured_ms_std"], 4),
                      "" if r["kind"] == "searched" else f"{r['latency_vs_searched']:.2f}x, "
                                                         f"{100 * r['accuracy_vs_searched']:+.2f} pt",
                      f"{r['macs'] / 1e6:.2f}", f"{r['params']:,}")
    print_table(table)
    print_warnings(summary["warnings"])
    typer.echo(f"plot: {summary['plot']}")
