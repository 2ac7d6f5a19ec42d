"""The typer apps that command modules (cli/cmd_*.py) attach to, and shared console helpers."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nas.files import finite_json

app = typer.Typer(name="hwnas", help="Hardware-aware neural architecture search.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=True)
space_app = typer.Typer(help="Inspect and sample search spaces.", no_args_is_help=True)
latency_app = typer.Typer(help="Measure, inspect and validate per-device latency tables.", no_args_is_help=True)
search_app = typer.Typer(help="Search architectures under a latency budget.", no_args_is_help=True)
app.add_typer(space_app, name="space")
app.add_typer(latency_app, name="latency")
app.add_typer(search_app, name="search")



def _print_version(value: bool) -> None:
    if value:
        from nas import __version__

        typer.echo(f"hwnas {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit")) -> None:
    """Hardware-aware neural architecture search."""


console = Console(stderr=True)  # progress and messages; stdout is kept for results (tables, --json)
def print_table(table) -> None:
    """Write a rich table to stdout at its natural width: cells (op names, keys) are never cut or wrapped."""
    natural = Console(width=100_000).measure(table).maximum
    Console(width=max(natural, Console().width), highlight=False).print(table)


def print_warnings(warnings: list[str]) -> None:
    """One yellow ``warning:`` line on stderr per warning."""
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)


def print_json(obj) -> None:
    """Write one JSON object to stdout."""
    typer.echo(json.dumps(finite_json(json.loads(json.dumps(obj, default=str))), indent=2, allow_nan=False))


COLUMNS = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
           TimeRemainingColumn(), TextColumn("{task.fields[note]}"))


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[callable]:
    """A rich progress bar; yields ``advance(n=1, note="")``."""
    with Progress(*COLUMNS, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, note="")

        def advance(n: int = 1, note: str = "") -> None:
            progress.update(task, advance=n, note=note)

        yield advance


@contextmanager
def progress_bars() -> Iterator[callable]:
    """The adapter of ``nas.progress.Progress``: one bar per stage, shown from the first report on."""
    bars = Progress(*COLUMNS, console=console, transient=False)
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int | None, note: str) -> None:
        if not tasks:
            bars.start()
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total, note="")
        bars.update(tasks[stage], completed=done, total=total, note=note[:60])

    try:
        yield progress
    finally:
        if tasks:
            bars.stop()


def next_step(report: dict, out: Path, tables_dir: Path | str | None = None) -> str:
    """The line every search ends with: the model to ship and the command that measures it on the device."""
    model = out / report["model"] if report.get("model") and (out / report["model"]).is_file() else None
    winner = out / report["winner"] if report.get("winner") and (out / report["winner"]).is_file() else None
    if model is None:
        return f"next step: the winner is in {winner or out / 'report.json'} (no model was exported)"
    measured_elsewhere = (report.get("measurement") or {}).get("note")
    if report.get("device") and measured_elsewhere:
        return (f"next step: deploy {model} (ONNX Runtime) and time it on device {report['device']} itself: "
                f"{measured_elsewhere}")
    if report.get("device"):
        tables = f" --tables-dir {tables_dir}" if tables_dir else ""
        return (f"next step: deploy {model} (ONNX Runtime); measure it on the device again with: hwnas latency "
                f"check --device {report['device']} --model {model}{tables}")
    return f"next step: deploy {model} (ONNX Runtime); its figures and warnings: {out / 'report.json'}"


def run_strategy(name: str, config, out: Path | None) -> tuple[dict, Path]:
    """Prepare, open the run directory, run: the registered strategy ``name`` on ``config``, with progress bars.
    Returns the report and the run directory."""
    from nas.data.mismatch import mismatch_warnings
    from nas.search.strategy import get_strategy, open_run

    strategy = get_strategy(name)(config)
    with progress_bars() as progress:
        prepared = strategy.prepare(progress)  # bad input fails here: one line, exit 2, nothing written
        data, space = getattr(prepared, "data", None), getattr(prepared, "space", None)  # model searches
        print_warnings(mismatch_warnings(data, space) if data is not None and space is not None else [])
        run = open_run(strategy, prepared, out)
        print_warnings(run.warnings)
        console.print(f"{prepared.summary()} -> {run.path}" + (" (resuming)" if run.resumed else ""))
        report = strategy.run(prepared, run, progress)
    return report, run.path


def verdict_line(report: dict) -> str:
    """The report's verdict in one line: the shipped model's measured latency against its target, the prediction
    beside it, and the warnings' count."""
    measured, predicted, target = report.get("measured_ms"), report.get("predicted_ms"), report.get("target_ms")
    figures = []
    if measured is not None:
        figures.append(f"measured {measured:.4g} ms")
    if predicted is not None:
        figures.append(f"predicted {predicted:.4g} ms")
    line = ", ".join(figures) or "no latency figures"
    within, judged_on = report.get("within_target"), report.get("judged_on")
    if within is not None and target is not None:
        given = report.get("target")
        shown = f"{target:g} ms" if given in (None, f"{float(target)!r}ms") else f"{given} = {target:.4g} ms"
        line += (f": {'within' if within else 'OVER'} the target {shown}"
                 + (f" (judged on the {judged_on} figure)" if judged_on != "measured" else ""))
        if not within and judged_on == "measured":
            line += ": re-measure quietly, tighten the target, or re-profile (commands in the warning)"
    elif within is not None:
        line += f": target {'met' if within else 'NOT met'} ({judged_on})"
    notes = report.get("warnings") or []
    if notes:
        line += f"; {len(notes)} warning{'s' if len(notes) > 1 else ''} above"
    return f"verdict: {line}"


def print_verdict(report: dict) -> None:
    """The report's warnings (stderr), then its verdict as the final line (stdout)."""
    from rich.markup import escape

    for w in report.get("warnings") or []:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)
    typer.echo(verdict_line(report))


def renamed(old_flag: str, new_flag: str, old_value, new_value):
    """An option's old spelling, kept hidden: its value when given (with a note saying what to use instead), else
    the new spelling's."""
    if old_value is None:
        return new_value
    console.print(f"[yellow]note:[/yellow] {old_flag} is now {new_flag} (the old spelling still works; use "
                  f"{new_flag})", highlight=False, soft_wrap=True)
    return old_value


CALIBRATION_MODELS = 16  # nas.latency.calibrate.CALIBRATION_MODELS, here so that --help imports no torch

TARGET_HELP = ("latency target: 2.5ms, pN (the Nth percentile of the space's predicted latency on the device: p40) "
               "or Fx:MODEL (F times MODEL's predicted latency there: 0.8x:fbnet_c)")
