"""hwnas search nars | chamnet | optuna  (predictor-guided architecture x recipe search)"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from cli.app import (
    TARGET_HELP,
    next_step,
    print_json,
    print_table,
    print_verdict,
    renamed,
    run_strategy,
    search_app,
)
from nas.search.strategy import strategies


def _make_command(strategy: str):
    def command(
        space: str = typer.Option(..., "--space", help="space name or YAML, or table:PATH.csv (a user's table)"),
        device: Optional[List[str]] = typer.Option(None, "--device", help="device id of a latency table "
                                                   "(repeat for several devices)"),
        target: Optional[List[str]] = typer.Option(None, "--target", help=TARGET_HELP + ", for every device, "
                                                   "or DEVICE=TARGET[,DEVICE=TARGET]; repeat for a Pareto family "
                                                   "(default: p25, p50, p75)"),
        target_ms: Optional[List[str]] = typer.Option(None, "--target-ms", help="latency bound in milliseconds: "
                                                      "MS or DEVICE=MS[,DEVICE=MS]; repeatable"),
        old_latency_ms: Optional[List[str]] = typer.Option(None, "--latency-ms", hidden=True),
        budget: int = typer.Option(100, help="expensive evaluations (trainings or table lookups)"),
        seed: int = typer.Option(0, help="random seed (search, data split, training)"),
        out: Optional[Path] = typer.Option(None, help="run directory (rerun with the same one to resume)"),
        dataset: str = typer.Option("digits", help="digits | npz:PATH | folder:PATH (model spaces)"),
        objective: Optional[str] = typer.Option(None, help="metric to optimise (table: a column; model: "
                                                "val_accuracy)"),
        direction: str = typer.Option("max", help="max or min: whether the objective is maximised"),
        latency_column: Optional[List[str]] = typer.Option(None, "--latency-column", help="table: latency "
                                                           "column, one per device (free, like a latency table)"),
        proxy: Optional[List[str]] = typer.Option(None, "--proxy", help="table: a free column the MLP "
                                                  "pretrains on (e.g. macs)"),
        metric: Optional[List[str]] = typer.Option(None, "--metric", help="table: a further metric column "
                                                   "(reported, not a decision)"),
        decision: Optional[List[str]] = typer.Option(None, "--decision", help="table: decision columns "
                                                     "(default: every other column)"),
        resolution: Optional[int] = typer.Option(None, help="input resolution (model spaces)"),
        width: Optional[float] = typer.Option(None, help="width multiplier (model spaces)"),
        recipe: Optional[Path] = typer.Option(None, help="base recipe YAML/JSON; the space's recipe_space "
                                              "ranges are searched on top"),
        max_epochs: Optional[int] = typer.Option(None, "--max-epochs", help="cap on the epochs of each search "
                                                 "evaluation (the winner trains with its full recipe)"),
        tables_dir: Optional[Path] = typer.Option(None, "--tables-dir", help="base folder of latency tables"),
        measure_each: bool = typer.Option(False, "--measure-each", help="export and time every evaluated "
                                          "model in ONNX Runtime (measured_ms in history.csv)"),
        pool: int = typer.Option(4096, help="Sobol pool size"),
        init: Optional[int] = typer.Option(None, help="initial Sobol evaluations (default budget/10, and at least "
                                                      "10 or budget/4, whichever is fewer)"),
        batch: Optional[int] = typer.Option(None, help="evaluations per predictor round (default budget/20)"),
        generations: int = typer.Option(40, help="evolutionary search generations"),
        population: int = typer.Option(2048, help="evolutionary search population"),
        pretrain: bool = typer.Option(True, "--pretrain/--no-pretrain", help="nars: pretrain the MLP on "
                                      "free proxies"),
        sampler: str = typer.Option("nsga2", help="optuna: nsga2 or tpe"),
        storage: Optional[str] = typer.Option(None, help="Optuna storage URL holding the search's study (default "
                                              "sqlite:///RUN/study.db; postgresql://USER@HOST/DB for many "
                                              "machines: start `hwnas worker` on them)"),
        study: str = typer.Option("hwnas", help="study name in the storage"),
        workers: int = typer.Option(1, help="worker processes on this machine evaluating the study's trials"),
        accelerator: str = typer.Option("auto", help="where evaluations and the winner train: auto | cpu | cuda "
                                        "(auto: cuda when a GPU is present)"),
        precision: str = typer.Option("32", help="32 | bf16 | 16-mixed (16-mixed needs a GPU)"),
        threads: Optional[int] = typer.Option(None, help="torch threads per evaluation (default 1 on the CPU: "
                                              "each worker takes a core; the winner's training takes all)"),
        asynchronous: bool = typer.Option(True, "--async/--sync", help="nars, chamnet with several workers: "
                                          "propose the next batch while the last one's final evaluations run "
                                          "(--sync: wait for whole batches, the same search for a seed with any "
                                          "number of workers)"),
        export: str = typer.Option("first", help="model spaces: export the winner of the first constraint, "
                                   "of all, or none"),
        as_json: bool = typer.Option(False, "--json", help="print report.json"),
    ):
        from nas.search.predict.search_setup import PredictorSearchSettings
        from nas.search.targets import given_targets

        target_ms = renamed("--latency-ms", "--target-ms", old_latency_ms or None, target_ms)
        settings = PredictorSearchSettings(
            strategy=strategy, space=space, devices=list(device or []), targets=given_targets(target, target_ms),
            budget=budget, seed=seed, dataset=dataset, objective=objective, direction=direction,
            latency_columns=list(latency_column or []), proxy_columns=list(proxy or []),
            metric_columns=list(metric or []), decision_columns=list(decision or []), resolution=resolution,
            width=width, recipe=str(recipe) if recipe else None, max_epochs=max_epochs,
            tables_dir=str(tables_dir) if tables_dir else None, measure_each=measure_each, pool=pool, init=init,
            batch=batch, generations=generations, population=population, pretrain=pretrain, sampler=sampler,
            storage=storage, study=study, workers=workers, asynchronous=asynchronous, accelerator=accelerator,
            precision=precision, threads=threads, export=export)
        report, out = run_strategy(strategy, settings, out)
        if as_json:
            print_json(report)
            return
        _print_summary(report, out, tables_dir)

    return command


def _num(v) -> str:
    return "n/a (too few evaluations)" if v is None else f"{v:.3f}"


def _print_summary(report: dict, out: Path, tables_dir: Path | None = None) -> None:
    detail = report[report["method"]]
    obj = detail["objective"]
    study = detail.get("optuna") or detail.get("study") or {}
    if study.get("nothing_to_do"):
        typer.echo(f"nothing to do: study {study['study']!r} already has its {detail['evaluations']} evaluations; "
                   f"the results below are read from it")
    table = Table(title=f"best under each constraint ({detail['evaluations']} evaluations)")
    for col in ("constraint", obj, "latency (ms)", "found at eval", "random search (expected)"):
        table.add_column(col)
    for w in detail.get("winners", []):
        given = w.get("target", w["constraint"])
        shown = w["constraint"] if given == w["constraint"] else f"{given} ({w['constraint']})"
        expected = detail.get("progress", {}).get(w["constraint"], {}).get("random_search_expected_best")
        expected = "" if expected is None else f"{expected:.4f}"
        if not w["found"]:
            table.add_row(shown, "none evaluated meets it", "", "", expected)
            continue
        lat = ", ".join(f"{d} {v:.4g}" for d, v in w["latency_ms"].items())
        table.add_row(shown, f"{w[obj]:.4f}", lat, str(w["eval"]), expected)
    print_table(table)
    pred = detail.get("predictor")
    if pred:
        typer.echo(f"predictor: held-out Kendall tau {_num(pred['heldout_kendall_tau'])} (predictions made before "
                   f"each batch), {_num(pred['cv_kendall_tau'])} (5-fold at the end)")
    evo = detail.get("evolution")
    if evo:
        typer.echo(f"evolution: {evo['scored']:,} candidates scored "
                   f"({evo['candidates_per_cpu_minute']:,.0f} per CPU-minute)")
    if "optuna" in detail:
        typer.echo(f"optuna: {detail['optuna']['evaluations']} evaluations in {detail['optuna']['trials']} "
                   f"trials; dashboard: {detail['optuna']['dashboard']}")
    elif "study" in detail:
        typer.echo(f"study: {detail['study']['trials']} trials; dashboard: {detail['study']['dashboard']}")
    for e in detail.get("export", []):
        typer.echo(f"exported {e['onnx']} ({e['constraint']}): test accuracy {e['accuracy']:.4f}, onnx max abs "
                   f"diff {e['onnx_max_abs_diff']:.2e}, measured {e['measured_ms']:.4f} ms vs predicted "
                   f"{e['predicted_ms']:.4f} ms")
    typer.echo(f"-> {out} (arch.json, history.csv, pareto.csv, report.json, pareto.png)")
    print_verdict(report)
    typer.echo(next_step(report, out, tables_dir))


@search_app.command("status")
def status(
    storage: str = typer.Option(..., "--storage", help="the study's Optuna storage URL"),
    study: str = typer.Option("hwnas", "--study", help="study name"),
    as_json: bool = typer.Option(False, "--json", help="print the status as JSON"),
):
    """Progress of a search's study: evaluations done / running / waiting / failed, the best under each
    constraint, and the workers seen recently."""
    from nas.search.blackbox.study import load_study, study_status

    info = study_status(load_study(storage, study, read_only=True))
    if as_json:
        print_json(info)
        return
    budget = info["budget"] if info["budget"] is not None else "?"
    typer.echo(f"{info['strategy'] or 'study'} {info['study']}: {info['done']} of {budget} done, "
               f"{info['running']} running, {info['waiting']} waiting, {info['failed']} failed "
               f"({info['retried']} retried)")
    table = Table(title="best under each constraint")
    for col in ("constraint", "trial", "objective", "latency (ms)"):
        table.add_column(col)
    for b in info["best"]:
        value = next((v for k, v in b.items() if k not in ("constraint", "trial", "latency_ms")), None)
        table.add_row(b["constraint"], str(b["trial"]) if b["trial"] is not None else "none yet",
                      "" if value is None else f"{value:.4f}",
                      ", ".join(f"{v:.4g}" for v in b.get("latency_ms", [])))
    print_table(table)
    typer.echo(f"workers seen in the last 5 minutes: {', '.join(info['workers_recent']) or 'none'} "
               f"({info['workers_seen']} seen in all)")


for _entry in strategies(options="predictor"):
    search_app.command(_entry.name, help=_entry.help)(_make_command(_entry.name))
