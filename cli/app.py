"""The typer apps that command modules (cli/cmd_*.py) attach to, and shared console helpers."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from nas.files import finite_json

app = typer.Typer(name="hwnas", help="Hardware-aware neural architecture search.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
space_app = typer.Typer(help="Inspect and sample search spaces.", no_args_is_help=True)
latency_app = typer.Typer(help="Measure, inspect and validate per-device latency tables.", no_args_is_help=True)
search_app = typer.Typer(help="Search architectures under a latency budget.", no_args_is_help=True)
app.add_typer(space_app, name="space")
app.add_typer(latency_app, name="latency")
app.add_typer(search_app, name="search")

console = Console(stderr=True)  # progress and messages; stdout is kept for results (--json)


def print_json(obj) -> None:
    """Write one JSON object to stdout."""
    typer.echo(json.dumps(finite_json(json.loads(json.dumps(obj, default=str))), indent=2, allow_nan=False))


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[callable]:
    """A rich progress bar; yields ``advance(n=1, note="")``."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[note]}")]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, note="")

        def advance(n: int = 1, note: str = "") -> None:
            progress.update(task, advance=n, note=note)

        yield advance
