"""hwnas worker  (evaluate the trials of a search's Optuna study, on this machine or any other)"""

from __future__ import annotations

import typer

from cli.app import app, console, print_json


@app.command("worker")
def worker(
    storage: str = typer.Option(..., "--storage", help="the study's Optuna storage URL (postgresql://USER@HOST/DB, "
                                "mysql://..., or sqlite:///RUN/study.db on this machine)"),
    study: str = typer.Option("hwnas", "--study", help="study name (the search's --study)"),
    workers: int = typer.Option(1, "--workers", help="worker processes on this machine"),
    as_json: bool = typer.Option(False, "--json", help="print the workers' counts as JSON"),
):
    """Take the next waiting trial of a search's study, evaluate it (training on this machine's accelerator) and
    record it, until the study's budget is reached. Start as many as you like, on any machine."""
    from nas.errors import SearchError
    from nas.predict.optuna_search import LocalWorkers, work
    from nas.predict.study import masked_url

    if workers < 1:
        raise SearchError(f"--workers must be at least 1 (got {workers})")
    console.print(f"worker on study {study!r} in {masked_url(storage)}", soft_wrap=True, highlight=False)
    others = LocalWorkers(storage, study, workers - 1)
    try:
        stats = [work(storage, study, on_trial=lambda n: console.print(f"{n} evaluations in the study"))]
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
