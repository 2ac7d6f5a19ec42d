"""hwnas worker  (evaluate the trials of a search's Optuna study, on this machine or any other)"""

from __future__ import annotations

from typing import Optional

import typer

from cli.app import app, console, print_json


@app.command("worker")
def worker(
    storage: str = typer.Option(..., "--storage", help="the study's Optuna storage URL (postgresql://USER@HOST/DB, "
                                "mysql://..., or sqlite:///RUN/study.db on this machine)"),
    study: str = typer.Option("hwnas", "--study", help="study name (the search's --study)"),
    workers: int = typer.Option(1, "--workers", help="worker processes on this machine"),
    accelerator: str = typer.Option("auto", help="auto | cpu | cuda (auto: cuda when a GPU is present)"),
    precision: str = typer.Option("32", help="32 | bf16 | 16-mixed (16-mixed needs a GPU)"),
    threads: Optional[int] = typer.Option(None, help="torch threads per worker (default 1 on the CPU)"),
    as_json: bool = typer.Option(False, "--json", help="print the workers' counts as JSON"),
):
    """Take the next waiting trial of a search's study, evaluate it (training on this machine's accelerator) and
    record it, until the study's budget is reached. Start as many as you like, on any machine."""
    from nas.errors import SearchError
    from nas.search.predict.optuna_search import LocalWorkers, work
    from nas.search.blackbox.study import masked_url

    if workers < 1:
        raise SearchError(f"--workers must be at least 1 (got {workers})")
    from nas.train.accelerator import check_per_core, resolve_accelerator
    check_per_core("--workers", workers, "worker processes")
    resolve_accelerator(accelerator, precision, threads)  # this machine can train so: checked before joining
    machine = {"accelerator": accelerator, "precision": precision, "threads": threads}
    from nas.search.blackbox.study import load_study
    load_study(storage, study, read_only=True)  # the storage and study exist: checked before starting workers
    console.print(f"worker on study {study!r} in {masked_url(storage)}", soft_wrap=True, highlight=False)
    others = LocalWorkers(storage, study, workers - 1, machine)
    try:
        stats = [work(storage, study, on_trial=lambda n: console.print(f"{n} evaluations in the study"),
                      machine=machine)]
        stats += others.close(wait=True)
    finally:
        others.close(wait=False)
    if stats[0]["nothing_to_do"]:
        typer.echo(f"nothing to do: study {study!r} has reached its budget")
        return
    if as_json:
        print_json({"workers": stats})
        return
    typer.echo(f"done: {sum(s.get('evaluated', 0) for s in stats)} evaluations by {len(stats)} worker(s) here")
