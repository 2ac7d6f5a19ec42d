"""hwnas search dnas | dmasking  (differentiable search with a latency loss from the device's table)"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.app import TARGET_HELP, next_step, print_json, print_verdict, renamed, run_strategy, search_app
from nas.search.strategy import strategies

DEFAULT_SPACE = {"dnas": "fbnet", "dmasking": "fbnet_v2"}
FINAL_TEMPERATURE, ENTROPY_WEIGHT = 1.0, 4.0  # nas.search.dnas.search.SupernetSearchSettings' defaults (no torch at --help)


def _make_command(method: str):
    def command(
        space: str = typer.Option(DEFAULT_SPACE.get(method, "fbnet"), "--space", help="space name or YAML"),
        dataset: str = typer.Option("digits", help="digits | npz:PATH | folder:PATH"),
        device: str = typer.Option(..., "--device", help="device id of the latency table "
                                                         "(latency_tables/<device-id>/)"),
        target: Optional[str] = typer.Option(None, "--target", help=TARGET_HELP + "; alpha is steered so that "
                                             "the final arch lands at most 10% under it"),
        target_ms: Optional[float] = typer.Option(None, "--target-ms", help="latency target in milliseconds "
                                                  "(--target 2.5ms)"),
        alpha: float = typer.Option(1.0, help="latency trade-off: larger finds faster archs (0: ignore latency)"),
        beta: float = typer.Option(0.6, help="exponent of the latency factor (FBNet's beta)"),
        cost: str = typer.Option("latency", help="latency: the device's table | flops: FLOPs fitted to ms on the "
                                 "device's calibration models (a hardware-unaware ablation)"),
        epochs: int = typer.Option(20, help="search epochs (the first fifth train weights only)"),
        warmup_epochs: Optional[int] = typer.Option(None, "--warmup-epochs", help="weights-only epochs "
                                                    "(default: a fifth of --epochs)"),
        resolution: Optional[int] = typer.Option(None, help="input resolution (default: data size, >= 32)"),
        width: Optional[float] = typer.Option(None, help="width multiplier"),
        out: Optional[Path] = typer.Option(None, help="run directory (rerun with the same one to resume)"),
        profile: bool = typer.Option(False, "--profile", help="measure the device's missing table entries "
                                     "on this machine first"),
        sampled_path: bool = typer.Option(False, "--sampled-path/--all-paths", help="run only the sampled "
                                          "candidate per layer (hard Gumbel, straight-through) instead of "
                                          "every candidate"),
        soft_resolution: bool = typer.Option(False, "--soft-resolution", help="dmasking: mix every input "
                                             "resolution's interleaved map each step (2-3x a step), instead "
                                             "of one sampled resolution per step"),
        recipe: Optional[Path] = typer.Option(None, help="recipe YAML/JSON of the supernet and final training"),
        final_epochs: Optional[int] = typer.Option(None, "--final-epochs", help="override the recipe's epochs "
                                                   "for retraining the winner"),
        arch_lr: float = typer.Option(0.1, "--arch-lr", help="Adam learning rate of the architecture logits"),
        temperature: float = typer.Option(5.0, help="initial Gumbel-softmax temperature"),
        temperature_decay: Optional[float] = typer.Option(None, "--temperature-decay", help="temperature factor "
                                                          "per epoch (FBNet's is 0.956; default: the one that "
                                                          "reaches --final-temperature at the last epoch)"),
        final_temperature: float = typer.Option(FINAL_TEMPERATURE, "--final-temperature", help="the temperature "
                                                "of the last epoch, whatever the number of epochs"),
        entropy_weight: float = typer.Option(ENTROPY_WEIGHT, "--entropy-weight", help="the architecture loss is "
                                             "multiplied by 1 + w x the choices' mean relative entropy, w ramped "
                                             "up from 0 to this over the search (0: off)"),
        seed: int = typer.Option(0, help="supernet, search and training seed (and the data split's, unless "
                                 "--split-seed)"),
        split_seed: Optional[int] = typer.Option(None, "--split-seed", help="the train / val / test split's seed "
                                                 "(default: --seed): search seeds compared on one split"),
        tables_dir: Optional[Path] = typer.Option(None, "--tables-dir", help="base folder of latency tables "
                                                  "(default $HWNAS_LATENCY_TABLES or ./latency_tables)"),
        allow_estimated: bool = typer.Option(False, "--allow-estimated", help="search even if some blocks "
                                             "are missing from the table (the fallback regressor estimates "
                                             "them)"),
        accelerator: str = typer.Option("auto", help="auto | cpu | cuda (auto: cuda when a GPU is present)"),
        precision: str = typer.Option("32", help="32 | bf16 | 16-mixed (16-mixed needs a GPU)"),
        threads: Optional[int] = typer.Option(None, help="torch threads for the supernet search and the final "
                                              "training (default: all cores; on a shared machine 1 can be much "
                                              "faster)"),
        loader_workers: int = typer.Option(0, "--loader-workers", help="DataLoader processes that decode "
                                           "streamed data"),
        old_workers: Optional[int] = typer.Option(None, "--workers", hidden=True),
        skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="folder: train without the "
                                             "images that cannot be read (default: refuse)"),
        as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
    ):
        from nas.search.dnas.search import SupernetSearchSettings
        from nas.search.dnas.strategy import SearchJob
        from nas.train.distributed import FollowerDone
        from nas.train.engine import engine_for
        from nas.train.recipe import load_recipe

        from nas.search.targets import given_targets

        loader_workers = renamed("--workers", "--loader-workers", old_workers, loader_workers)
        given = given_targets(target, target_ms)
        engine = engine_for(accelerator, precision, threads, loader_workers)
        rec = load_recipe(recipe)
        rec = rec.model_copy(update={"seed": seed, **({"epochs": final_epochs} if final_epochs else {})})
        settings = SupernetSearchSettings(
            epochs=epochs, warmup_epochs=warmup_epochs, arch_lr=arch_lr, initial_temperature=temperature,
            temperature_decay=temperature_decay, final_temperature=final_temperature, entropy_weight=entropy_weight,
            alpha=alpha, beta=beta, op_paths=1 if sampled_path else None, channel_paths=None,
            resolution_paths=None if soft_resolution else 1)
        job = SearchJob(method=method, space=space, device=device, dataset=dataset, target_ms=None,
                        resolution=resolution, width=width, seed=seed, split_seed=split_seed, settings=settings,
                        recipe=rec, tables_dir=str(tables_dir) if tables_dir else None, profile=profile,
                        allow_estimated=allow_estimated, engine=engine, skip_bad_images=skip_bad_images,
                        target=given[0] if given else None, cost=cost)
        try:
            report, out_dir = run_strategy(method, job, out)
        except FollowerDone:  # torchrun: ranks above 0 trained their share; rank 0 reports
            return
        if as_json:
            print_json(report)
            return
        shown = f" (target {report['target']} = {report['target_ms']:.4g} ms)" if report["target"] else ""
        cost_note = " (FLOPs line)" if cost == "flops" else ""
        typer.echo(f"{method}: predicted{cost_note} {report['predicted_ms']:.4g} ms{shown}, measured "
                   f"{report['measured_ms']:.4g} ms ({report['prediction_error_pct']:+.1f}%), test accuracy "
                   f"{report['accuracy']:.4f}, onnx max "
                   f"abs diff {report['onnx_max_abs_diff']:.2e} -> {out_dir}")
        print_verdict(report)
        typer.echo(next_step(report, out_dir, tables_dir))

    return command


for _entry in strategies(options="dnas"):
    search_app.command(_entry.name, help=_entry.help)(_make_command(_entry.name))
