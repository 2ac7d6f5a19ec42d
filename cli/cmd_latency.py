"""hwnas latency profile | show | validate | predict | check (bundle and import: cmd_latency_remote)"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cli.app import (
    CALIBRATION_MODELS,
    console,
    latency_app,
    print_json,
    print_table,
    print_warnings,
    progress_bar,
    renamed,
)
from cli.cmd_latency_onnx import is_onnx_file, predict_onnx_file

SPACE_OPT = typer.Option(..., "--space", help="space name or YAML")
MAX_VALIDATION_SAMPLES = 10_000  # random archs built and timed by `latency validate` (hours of timing already)
DEVICE_OPT = typer.Option(..., "--device", help="device id: the folder latency_tables/<device-id>/")


def device_option(device: str | None, arguments: list[str]) -> str | None:
    """``--device``, or the device given the old way, as the one argument (with a note saying what to use)."""
    from nas.errors import LatencyTableError

    if len(arguments) > 1:
        raise LatencyTableError(f"unexpected arguments {' '.join(arguments)}: give the device as --device DEVICE")
    positional = arguments[0] if arguments else None
    if positional is not None and device is not None and positional != device:
        raise LatencyTableError(f"two devices given: {positional!r} and --device {device!r}")
    if positional is not None:
        console.print(f"[yellow]note:[/yellow] the device is now an option: --device {positional} (the old "
                      f"spelling still works)", highlight=False, soft_wrap=True)
    return device or positional


def advance_to(advance):
    """An ``on_progress(done, total, note)`` that moves a progress bar to ``done`` (the library reports how many
    are done, counting those done before a resume; the bar advances by the difference)."""
    shown = [0]

    def on_progress(done: int, total: int, note: str) -> None:
        advance(done - shown[0], note=note)
        shown[0] = done
    return on_progress


def space_from_options(space: str, resolution, width, classes, in_channels):
    from nas.arch.space import load_space

    return load_space(space, resolution=resolution, width_multiplier=width, classes=classes, in_channels=in_channels)


@latency_app.command("profile")
def profile(space: str = SPACE_OPT, device: str = DEVICE_OPT,
            resolution: Optional[int] = typer.Option(None, help="input resolution (default: the space's)"),
            width: Optional[float] = typer.Option(None, help="width multiplier"),
            classes: Optional[int] = typer.Option(None, help="number of classes"),
            in_channels: Optional[int] = typer.Option(None, "--in-channels", help="input channels"),
            provider: str = typer.Option("CPUExecutionProvider", help="ONNX Runtime execution provider"),
            ort_threads: int = typer.Option(1, "--ort-threads", help="ONNX Runtime intra-op threads"),
            old_threads: Optional[int] = typer.Option(None, "--threads", hidden=True),
            int8: bool = typer.Option(False, "--int8", help="also profile static QDQ int8 blocks (bits=8)"),
            batch: int = typer.Option(1, help="batch size the blocks and models are timed at"),
            calibration: int = typer.Option(CALIBRATION_MODELS,
                                            help="whole models measured to fit the correction (0: none)"),
            optimization: str = typer.Option("all", help="graph optimisation: none | basic | extended | all"),
            clock: Optional[str] = typer.Option(None, help="wall: perf_counter; cpu: calling thread's CPU time (1 "
                                                             "thread, robust when other processes share the cores); "
                                                             "default: the device table's, else wall"),
            tables_dir: Optional[Path] = typer.Option(None, help="base folder (default $HWNAS_LATENCY_TABLES "
                                                                  "or ./latency_tables)"),
            as_json: bool = typer.Option(False, "--json", help="print the summary as JSON")):
    """Measure every block of a space on this machine into a device table (resumable; safe to run twice)."""
    from nas.latency.calibrate import calibrate, check_calibration_count
    from nas.latency.device import Device, check_provider
    from nas.latency.profile import profile_items, space_profile_items
    from nas.latency.table import check_device_id

    threads = renamed("--threads", "--ort-threads", old_threads, ort_threads)
    clock = table_clock(clock, device, tables_dir, threads)
    check_calibration_count(calibration)
    check_provider(provider)
    measure_on = Device(provider, threads, optimization, clock, check_device_id(device), batch=batch)  # checks
    sp = space_from_options(space, resolution, width, classes, in_channels)
    items = space_profile_items(sp, bits=(32, 8) if int8 else (32,))
    console.print(f"profiling {len(items)} keys of {sp.name} at {sp.resolution}px on device {device!r} "
                  f"({provider}, {threads} thread{'s' if threads > 1 else ''})")
    with progress_bar("blocks", len(items)) as advance:
        counts = profile_items(measure_on, items, tables_dir=tables_dir,
                               on_progress=lambda d, t, note: advance(note=note))
    summary = {"device": device, "space": sp.name, **sp.space_args(), **counts}
    if calibration > 0:
        with progress_bar("calibration", calibration) as advance:
            corr = calibrate(measure_on, sp, models=calibration, tables_dir=tables_dir,
                             on_progress=advance_to(advance))
        summary |= correction_summary(corr)
    if as_json:
        print_json(summary)
        return
    typer.echo(f"device {device}: measured {counts['measured']}, already had {counts['skipped']}, "
               f"identity {counts['identity']} of {counts['total']} keys in {counts['seconds']:.1f} s")
    if counts.get("unstable"):
        console.print(f"[yellow]warning:[/yellow] {counts['unstable']} of {counts['measured']} keys did not reach "
                      f"a stable median (a busy machine? try --clock cpu, or profile again on a quiet one)")
    if calibration > 0 and corr.fitted_on:
        typer.echo(correction_line(corr))


def table_clock(clock: str | None, device: str, tables_dir: Path | None, threads: int) -> str:
    """The clock to profile with: the one given, else the device table's (adding to a table, e.g. one a search
    profiled, times it the same way), else wall; checked against ``threads`` (ONNX Runtime's)."""
    from nas.errors import LatencyTableError
    from nas.latency.table import read_manifest, tables_root
    from nas.latency.timing import check_clock

    tables_root(tables_dir)  # a file in the way is an error, not a device without a table
    if clock is None:
        try:
            clock = read_manifest(device, tables_dir).clock
        except LatencyTableError:
            clock = "wall"
    check_clock(clock, threads)
    return clock


def correction_summary(corr) -> dict:
    """The fitted correction's figures for a JSON summary."""
    return {"calibration_models": corr.fitted_on, "base_ms": corr.base_ms, "scale": corr.scale,
            "per_block_ms": corr.per_block_ms, "per_reorder_ms": corr.per_reorder_ms,
            "per_weight_mb_ms": corr.per_weight_mb_ms, "calibration_mape": corr.fit_mape,
            "uncorrected_mape": corr.raw_mape}


def correction_line(corr) -> str:
    """One line on the fitted correction, or on why there is none (a degenerate fit keeps the plain table sum)."""
    if corr.fit_mape is None:
        return (f"correction: the fit on {corr.fitted_on} whole models was degenerate (too few or too alike); "
                f"predictions use the table sum plus {corr.base_ms:.3f} ms")
    return (f"correction on {corr.fitted_on} whole models: base {corr.base_ms:.3f} ms, scale {corr.scale:.3f}, "
            f"per block {corr.per_block_ms:+.4f} ms{terms_note(corr)}; calibration MAPE {corr.fit_mape:.1f}% "
            f"(uncorrected sum {corr.raw_mape:.1f}%)")


def terms_note(corr) -> str:
    """The layout and weight terms' weights, where the calibration fitted them (nas.latency.correction)."""
    return ((f", per layout reorder {corr.per_reorder_ms * 1000:.2f} us" if corr.per_reorder_ms else "")
            + (f", per MB of weights {corr.per_weight_mb_ms:.4f} ms" if corr.per_weight_mb_ms else ""))


OLD_POSITIONAL = {"allow_extra_args": True}  # the device given the old way, as the first argument


@latency_app.command("show", context_settings=OLD_POSITIONAL)
def show(ctx: typer.Context,
         device: Optional[str] = typer.Option(None, "--device", help="device id (omit to list devices)"),
         space: Optional[str] = typer.Option(None, "--space", help="also show coverage of this space's keys"),
         resolution: Optional[int] = typer.Option(None, help="space input resolution"),
         width: Optional[float] = typer.Option(None, help="space width multiplier"),
         classes: Optional[int] = typer.Option(None, help="space classes"),
         in_channels: Optional[int] = typer.Option(None, "--in-channels", help="space input channels"),
         int8: bool = typer.Option(False, "--int8", help="coverage of int8 keys too"),
         tables_dir: Optional[Path] = typer.Option(None, help="base folder of device tables"),
         as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """List devices, or one device's manifest, table, correction and coverage (measured vs estimated)."""
    from nas.latency.model import LatencyModel

    device = device_option(device, ctx.args)
    from nas.latency.profile import key_is_identity, space_layer_keys
    from nas.latency.table import list_devices, tables_root

    if device is None:
        devices = list_devices(tables_dir)
        if as_json:
            print_json({"tables_dir": str(tables_root(tables_dir)), "devices": devices})
        else:
            typer.echo("\n".join(devices) if devices else f"no devices in {tables_root(tables_dir)}")
        return
    lm = LatencyModel.load(device, tables_dir)
    table = lm.table
    kinds = Counter((k.op.split("_")[0] if k.op.startswith(("ir", "conv")) else k.op, k.bits) for k in table.keys())
    unstable = sum(not r["stable"] for r in table.rows.values())
    info = {"device": device, "folder": str(table.folder), "manifest": table.manifest.to_dict(),
            "table": str(table.path), "rows": len(table), "unstable_rows": unstable,
            "rows_by_kind": {f"{op}/{bits}b": n for (op, bits), n in sorted(kinds.items())},
            "correction": lm.describe(), "warnings": lm.warnings}
    if space:
        sp = space_from_options(space, resolution, width, classes, in_channels)
        keys = [k.with_bits(b) for b in ((32, 8) if int8 else (32,)) for k in space_layer_keys(sp)]
        identity = [k for k in keys if key_is_identity(k)]
        measured = [k for k in keys if not key_is_identity(k) and k in table]
        missing = [k for k in keys if not key_is_identity(k) and k not in table]
        info["coverage"] = {"space": sp.name, **sp.space_args(), "keys": len(keys), "measured": len(measured),
                            "estimated": len(missing), "identity": len(identity),
                            "fraction_measured": len(measured) / max(len(keys) - len(identity), 1),
                            "estimated_keys": [str(k) for k in missing[:20]]}
    if as_json:
        print_json(info)
        return
    m = table.manifest
    typer.echo(f"device {device}  ({table.folder})")
    typer.echo(f"  {m.cpu_model}, {m.cores} cores, {m.os}; onnxruntime {m.onnxruntime_version}, {m.provider}, "
               f"{m.threads} thread(s), optimisation {m.graph_optimization}; created {m.created}"
               + ("; imported from a remote device" if m.remote else ""))
    grid = Table("kind / bits", "rows")
    for name, n in info["rows_by_kind"].items():
        grid.add_row(name, str(n))
    print_table(grid)
    typer.echo(f"  {len(table)} rows ({info['unstable_rows']} did not reach a stable median); correction: base "
               f"{lm.base_ms:.3f} ms, scale {lm.correction.scale:.3f}, per block "
               f"{lm.correction.per_block_ms:+.4f} ms{terms_note(lm.correction)}, fitted on "
               f"{lm.correction.fitted_on} whole models")
    if space:
        c = info["coverage"]
        typer.echo(f"  coverage of {c['space']} at {c['resolution']}px: {c['measured']} measured, "
                   f"{c['estimated']} would be estimated by the fallback, {c['identity']} identity "
                   f"({100 * c['fraction_measured']:.1f}% measured)")
    for w in lm.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")


@latency_app.command("validate")
def validate(space: str = SPACE_OPT, device: str = DEVICE_OPT,
             samples: int = typer.Option(50, help="random archs to measure end to end"),
             seed: int = typer.Option(0, help="seed of the random archs"),
             resolution: Optional[int] = typer.Option(None, help="input resolution (default: the space's)"),
             width: Optional[float] = typer.Option(None, help="width multiplier"),
             classes: Optional[int] = typer.Option(None, help="number of classes"),
             in_channels: Optional[int] = typer.Option(None, "--in-channels", help="input channels"),
             out: Optional[Path] = typer.Option(None, help="run directory (rerun with the same one to resume)"),
             tables_dir: Optional[Path] = typer.Option(None, help="base folder of device tables"),
             as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object")):
    """Measure random whole models end to end and compare them with the device's predictions."""
    from nas.errors import LatencyTableError
    from nas.latency.device import check_provider
    from nas.latency.model import LatencyModel
    from nas.latency.validate import validate as run_validation
    from nas.run import RunDir, default_run_path

    if not 2 <= samples <= MAX_VALIDATION_SAMPLES:
        raise LatencyTableError(f"--samples must be 2 to {MAX_VALIDATION_SAMPLES} (Kendall tau needs pairs; each "
                                f"arch is exported and timed end to end), got {samples}")
    lm = LatencyModel.load(device, tables_dir)
    check_provider(lm.table.manifest.provider)
    sp = space_from_options(space, resolution, width, classes, in_channels)
    out = out or default_run_path("latency-validate", device)
    run = RunDir(out, {"command": "latency validate", "device": device, "space": sp.name,
                       "space_args": sp.space_args(), "samples": samples, "seed": seed})
    print_warnings(run.warnings)
    for w in lm.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    with progress_bar("validate", samples) as advance:
        summary = run_validation(lm, sp, run, samples=samples, seed=seed, on_progress=advance_to(advance))
    summary["out"] = str(out)
    if as_json:
        print_json(summary)
        return
    s = summary
    typer.echo(f"{s['samples']} archs of {sp.name} at {sp.resolution}px on {device}: "
               f"{100 * s['within_10pct']:.0f}% within +-10%, MAPE {s['mape']:.1f}%, bias {s['mean_bias_pct']:+.1f}%, "
               f"Kendall tau {s['kendall_tau']:.3f} (FLOPs tau {s['flops_kendall_tau']:.3f})")
    if "drift_pct" in s:
        typer.echo(f"measured at the calibration's speed (timed with the reference models, which read a drift of "
                   f"{s['drift_pct']:+.1f}%); against the raw times: bias {s['raw_mean_bias_pct']:+.1f}%, "
                   f"tau {s['raw_kendall_tau']:.3f}")
    if "naive_within_10pct" in s:
        typer.echo(f"naive sum of table p50s: {100 * s['naive_within_10pct']:.0f}% within +-10%, "
                   f"MAPE {s['naive_mape']:.1f}%, tau {s['naive_kendall_tau']:.3f}")
    if s["estimated_archs"]:
        typer.echo(f"{s['estimated_archs']} archs used fallback estimates for missing keys")
    typer.echo(f"-> {out}/validation.csv, {out}/scatter.png")


@latency_app.command("predict")
def predict(ref: str = typer.Argument(..., help="arch JSON, a space / model name (its largest arch), or any ONNX "
                                                "model (MODEL.onnx: kernel by kernel)"),
            device: str = DEVICE_OPT,
            resolution: Optional[int] = typer.Option(None, help="input resolution"),
            width: Optional[float] = typer.Option(None, help="width multiplier"),
            classes: Optional[int] = typer.Option(None, help="number of classes"),
            bits: int = typer.Option(32, help="precision of every block: 32 (fp32) or 8 (int8)"),
            no_fallback: bool = typer.Option(False, "--no-fallback",
                                             help="fail on keys missing from the table instead of estimating"),
            profile: bool = typer.Option(False, "--profile", help="MODEL.onnx: time the kernels the device's kernel "
                                                                  "table lacks, here, on the device"),
            tables_dir: Optional[Path] = typer.Option(None, help="base folder of device tables"),
            as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Predict an arch's latency on a device, block by block, or an ONNX model's, kernel by kernel."""
    from nas.arch.space import resolve_model_ref
    from nas.errors import LatencyTableError
    from nas.latency.model import LatencyModel

    if is_onnx_file(ref):
        return predict_onnx_file(Path(ref), device, profile=profile, no_fallback=no_fallback, tables_dir=tables_dir,
                                 as_json=as_json, arch_options={"resolution": resolution, "width": width,
                                                                "classes": classes, "bits": bits})
    if profile:
        raise LatencyTableError("--profile times the kernels of an ONNX model (MODEL.onnx); an arch's blocks are "
                                "profiled with `hwnas latency profile`")

    if bits not in (32, 8):
        raise LatencyTableError(f"--bits must be 32 (fp32) or 8 (int8), got {bits}")
    lm = LatencyModel.load(device, tables_dir, allow_fallback=not no_fallback)
    sp, arch = resolve_model_ref(ref, resolution=resolution, width_multiplier=width, classes=classes)
    keys = lm.arch_keys(sp, arch, bits)
    pred = lm.predict_keys(keys)
    blocks = [{"key": str(k), "cost_ms": lm.block_cost_ms(k), "estimated": lm.is_estimated(k)} for k in keys]
    if as_json:
        print_json({"device": device, "arch": arch.to_dict(), "predicted_ms": pred.ms, "base_ms": lm.base_ms,
                    "layout_ms": pred.layout_ms, "estimated": [str(k) for k in pred.estimated],
                    "warnings": pred.warnings, "blocks": blocks})
        return
    grid = Table("block", "ms", "")
    for b in blocks:
        grid.add_row(b["key"], f"{b['cost_ms']:.4f}", "estimated" if b["estimated"] else "")
    print_table(grid)
    for w in pred.warnings:
        console.print(f"[yellow]warning:[/yellow] {w}")
    typer.echo(f"predicted {pred.ms:.3f} ms on {device} (base {lm.base_ms:.3f} ms + {len(keys)} blocks"
               + (f", {len(pred.estimated)} estimated" if pred.estimated else "")
               + (f"; layout reorders {pred.layout_ms:+.4f} ms" if pred.layout_ms else "") + ")")


@latency_app.command("check", context_settings=OLD_POSITIONAL)
def check(ctx: typer.Context,
          device: Optional[str] = typer.Option(None, "--device", help="device id: the folder "
                                                                    "latency_tables/<device-id>/"),
          model: Optional[Path] = typer.Option(None, "--model", help="also re-time this ONNX file (a shipped "
                                                                     "model.onnx), interleaved with the references"),
          recalibrate: bool = typer.Option(False, "--recalibrate", help="fold the drift into the correction (one "
                                                                        "global rescale; the old one is kept in its "
                                                                        "history)"),
          tables_dir: Optional[Path] = typer.Option(None, "--tables-dir", help="base folder of device tables"),
          as_json: bool = typer.Option(False, "--json", help="print one JSON object")):
    """Re-time the device's reference models (kept at calibration) and report its drift since then."""
    from nas.latency.drift import check_drift
    from nas.latency.drift import recalibrate as fold_drift
    from nas.latency.relative import SpeedFit
    from nas.latency.table import LatencyTable
    from nas.errors import LatencyTableError
    from nas.search.report import DRIFT_WARN_PCT

    device = device_option(device, ctx.args)
    if device is None:
        raise LatencyTableError("latency check needs --device DEVICE (`hwnas latency show` lists them)")
    table = LatencyTable.open(device, tables_dir)
    result = check_drift(table, model=model)
    summary = result.to_dict()
    if recalibrate:
        corrected = fold_drift(table, result)
        summary["correction"] = {**correction_summary(corrected), "rescale": corrected.rescale}
    if as_json:
        print_json(summary)
        return
    grid = Table("reference model", "calibrated ms", "expected ms", "now ms", "drift %", "stable")
    for m in result.models:
        grid.add_row(m["file"].removesuffix(".onnx"), f"{m['calibrated_ms']:.4g}", f"{m['expected_ms']:.4g}",
                     f"{m['measured_ms']:.4g}", f"{m['drift_pct']:+.1f}", "yes" if m["stable"] else "no")
    console.print(grid)
    if result.model is not None:
        s = result.model
        typer.echo(f"{model}: p50 {s['p50_ms']:.4g} ms, p90 {s['p90_ms']:.4g} ms, {s['relative_ms']:.4g} ms at the "
                   f"calibration's speed" + ("" if s["stable"] else " (no stable median: the machine is busy)"))
    fit = SpeedFit(**result.speed)
    if fit.b:
        typer.echo(f"the slowdown depends on size: x{float(fit.speed(fit.lo_ms)):.3f} at {fit.lo_ms:.3g} ms, "
                   f"x{float(fit.speed(fit.hi_ms)):.3f} at {fit.hi_ms:.3g} ms (what validate divides times by)")
    if not result.stable:
        console.print("[yellow]warning:[/yellow] some reference timings did not reach a stable median: rerun on a "
                      "quiet machine before trusting the drift")
    tables = f" --tables-dir {tables_dir}" if tables_dir else ""
    if recalibrate:
        typer.echo(f"device {device}: drift {result.drift_pct:+.1f}% folded into the correction (rescale "
                   f"{summary['correction']['rescale']:.4f}; the old correction is kept in its history)")
    elif abs(result.drift_pct) > DRIFT_WARN_PCT:
        typer.echo(f"device {device}: drift {result.drift_pct:+.1f}% against its calibration (over "
                   f"{DRIFT_WARN_PCT:g}%): refit with `hwnas latency check --device {device} --recalibrate{tables}`")
    else:
        typer.echo(f"device {device}: drift {result.drift_pct:+.1f}% against its calibration (within "
                   f"{DRIFT_WARN_PCT:g}%)")
