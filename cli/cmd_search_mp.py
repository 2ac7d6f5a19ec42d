"""hwnas search mixed-precision  (per-layer bit-widths by DNAS, exported as a runnable ONNX int8 / fp32 model)"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.app import TARGET_HELP, next_step, print_json, print_verdict, renamed, run_strategy, search_app
from nas.search.strategy import STRATEGIES


def _bits(text: str, flag: str) -> list[int]:
    from nas.errors import SearchError

    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise SearchError(f"{flag} {text!r}: give comma-separated integers, e.g. 2,4,8,32") from None


@search_app.command("mixed-precision", help=STRATEGIES["mixed-precision"].help)
def mixed_precision(
    space: Optional[str] = typer.Option(None, "--space", help="the model whose bits are searched: a model name "
                                        "(fbnet_a ...), a space name (its largest arch) or an arch JSON"),
    old_arch: Optional[str] = typer.Option(None, "--arch", hidden=True),
    dataset: str = typer.Option("digits", help="digits | npz:PATH | folder:PATH"),
    device: str = typer.Option(..., "--device", help="device id of the latency table (latency_tables/<id>/); "
                               "its provider and threads time the exported models"),
    cost: str = typer.Option("size", help="latency (ms from the device's int8/fp32 table) | size (params x bits) "
                             "| bitops (MACs x w bits x a bits)"),
    target: Optional[str] = typer.Option(None, "--target", help=TARGET_HELP + " (with --cost latency; pN reads "
                                         "random bit assignments of the model)"),
    target_ms: Optional[float] = typer.Option(None, "--target-ms", help="latency target in milliseconds (with "
                                              "--cost latency)"),
    target_mb: Optional[float] = typer.Option(None, "--target-mb", help="size target in MB (with --cost size)"),
    weight_bits: Optional[str] = typer.Option(None, "--weight-bits", help="weight bit options (32 = float); "
                                              "default 8,32 for latency, 2,4,8,32 otherwise"),
    act_bits: Optional[str] = typer.Option(None, "--act-bits", help="activation bit options (32 = float); "
                                           "default 8,32 (4 and 2 are emulated on uint8 in ONNX Runtime)"),
    epochs: int = typer.Option(8, help="bit-search epochs (the first trains weights only)"),
    pretrain_epochs: int = typer.Option(20, "--pretrain-epochs", help="fp32 training before the search"),
    finetune_epochs: int = typer.Option(3, "--finetune-epochs", help="quantization-aware fine-tuning of the "
                                        "chosen assignment (the uniform baselines train --epochs + this many)"),
    fit_models: int = typer.Option(10, "--fit-models", help="whole mixed models measured to fit the latency "
                                   "cost (0: per-layer table sums only; needs >= 4)"),
    alpha: float = typer.Option(1.0, help="cost trade-off in CE * (1 + alpha * log(COST / COST_min)) ** beta"),
    beta: float = typer.Option(0.6, help="exponent of the cost factor"),
    resolution: Optional[int] = typer.Option(None, help="input resolution (default: data size, >= 32)"),
    width: Optional[float] = typer.Option(None, help="width multiplier"),
    seed: int = typer.Option(0, help="data split and training seed"),
    tables_dir: Optional[Path] = typer.Option(None, "--tables-dir", help="base folder of latency tables "
                                              "(default $HWNAS_LATENCY_TABLES or ./latency_tables)"),
    out: Optional[Path] = typer.Option(None, help="run directory (rerun with the same one to resume)"),
    accelerator: str = typer.Option("auto", help="auto | cpu | cuda (auto: cuda when a GPU is present)"),
    precision: str = typer.Option("32", help="32 | bf16 | 16-mixed (16-mixed needs a GPU)"),
    threads: Optional[int] = typer.Option(None, help="torch threads while training (default: all cores; on a "
                                          "shared machine 1 can be much faster)"),
    loader_workers: int = typer.Option(0, "--loader-workers", help="DataLoader processes that decode streamed "
                                       "data"),
    old_workers: Optional[int] = typer.Option(None, "--workers", hidden=True),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON"),
):
    from nas.search.quant.prepare import MixedPrecisionConfig, MixedPrecisionJob
    from nas.search.quant.search import SearchConfig
    from nas.train.engine import engine_for

    from nas.errors import SearchError
    from nas.search.targets import given_targets

    space = renamed("--arch", "--space", old_arch, space)
    if space is None:
        raise SearchError("search mixed-precision needs --space MODEL (a model name, a space name or an arch JSON)")
    loader_workers = renamed("--workers", "--loader-workers", old_workers, loader_workers)
    given = given_targets(target, target_ms)
    engine = engine_for(accelerator, precision, threads, loader_workers)

    default_w = "8,32" if cost == "latency" else "2,4,8,32"
    cfg = MixedPrecisionConfig(
        cost=cost, weight_bits=_bits(weight_bits or default_w, "--weight-bits"),
        act_bits=_bits(act_bits or "8,32", "--act-bits"), target=given[0] if given else None, target_mb=target_mb,
        pretrain_epochs=pretrain_epochs, search=SearchConfig(epochs=epochs, alpha=alpha, beta=beta, seed=seed),
        finetune_epochs=finetune_epochs, latency_fit_models=fit_models)
    job = MixedPrecisionJob(arch=space, device=device, dataset=dataset, resolution=resolution, width=width, seed=seed,
                            tables_dir=str(tables_dir) if tables_dir else None, settings=cfg, engine=engine)
    report, out = run_strategy("mixed-precision", job, out)
    if as_json:
        print_json(report)
        return
    m = report["mixed_precision"]
    b = m["baselines"]

    def line(name, f):
        pred = f"{f['predicted_ms']:.4g}" if f.get("predicted_ms") is not None else "n/a"
        return (f"  {name:6s} acc torch {f['accuracy_torch']:.4f} onnx {f['accuracy_onnx']:.4f}  measured "
                f"{f['measured_ms']:.4g} ms (predicted {pred})  {f['size_mb']:.4g} MB  mean w bits "
                f"{f['mean_weight_bits']:.2f}  [{f['format']}]")

    typer.echo(line("mixed", m["mixed"]))
    for name in ("fp32", "int8"):
        typer.echo(line(name, b[name]))
    if m["mixed"]["sub8_layers"]:
        typer.echo(f"  note: {m['mixed']['sub8_layers']} layers below 8 bits run and are stored as int8 in ONNX "
                   f"Runtime; size_mb is their effective size, model.onnx takes {m['mixed']['file_mb']:.4g} MB")
    typer.echo(f"-> {out}")
    print_verdict(report)
    typer.echo(next_step(report, out, tables_dir))
