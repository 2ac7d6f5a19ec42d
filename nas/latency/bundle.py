"""Remote devices: a self-contained measuring bundle, and the import of its results as a new device table.

``write_bundle`` puts into one zip: every block of a space as ONNX (int8 blocks already QDQ-quantized), the
pass-through graphs that measure call overhead, a few whole calibration models, ``manifest.json`` (keys and
their MACs, params and bytes), and ``measure.py`` (``remote_measure``; needs only Python, numpy, onnxruntime).
``import_results`` turns the ``results.json`` that script writes into ``latency_tables/<device-id>/`` with the
same files a local profile makes (manifest marked ``remote``), built in a temporary folder and renamed into
place, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import uuid
import zipfile
from importlib import resources
from pathlib import Path
from typing import Callable

from nas.arch.opkey import OpKey
from nas.arch.space import Space
from nas.errors import LatencyTableError
from nas.files import atomic_path, current_umask, write_json
from nas.latency import remote_measure
from nas.latency.calibrate import (
    CALIBRATION_MODELS,
    append_calibration,
    arch_calibration_model,
    calibration_archs,
    check_calibration_count,
    refit_correction,
)
from nas.latency.overhead import fit_call_overhead, passthrough_mb, passthrough_model
from nas.latency.profile import ExportedItem, item_onnx, space_profile_items
from nas.latency.table import (
    COLUMNS,
    MANIFEST_FILE,
    TABLE_FILE,
    DeviceManifest,
    LatencyTable,
    check_device_id,
    device_dir,
    encode_row,
    tables_root,
)

OVERHEAD_SIZES = (1, 50_000, 200_000, 600_000)


def write_bundle(space: Space, out: str | Path, *, bits: tuple[int, ...] = (32,),
                 calibration: int = CALIBRATION_MODELS,
                 on_progress: Callable[[int, int, str], None] | None = None, blocks: bool = True,
                 model_bits: int = 32) -> dict:
    """Write the measuring bundle for ``space`` to ``out`` (.zip, atomically); return its manifest. ``blocks``
    False: the whole models alone (what ``hwnas latency adapt`` measures on a new device), at ``model_bits``."""
    check_calibration_count(calibration)
    check_bundle_out(out)
    items = space_profile_items(space, bits) if blocks else []
    archs = calibration_archs(space, calibration) if calibration > 0 else []
    total = len(items) + len(archs)
    manifest = {"format": remote_measure.BUNDLE_FORMAT, "bundle_id": uuid.uuid4().hex, "space": space.name,
                "space_args": space.space_args(), "bits": list(bits),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "timing": remote_measure.DEFAULT_TIMING,
                "overhead": [], "blocks": [], "models": []}
    with atomic_path(out) as tmp_zip, tempfile.TemporaryDirectory(prefix="hwnas-bundle-") as tmp, \
            zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for n in OVERHEAD_SIZES:
            name = f"overhead/pass_{n}.onnx"
            z.writestr(name, passthrough_model(n))
            manifest["overhead"].append({"id": str(n), "file": name, "mb": passthrough_mb(n)})
        for i, item in enumerate(items):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            e: ExportedItem = item_onnx(item, folder)
            name = f"blocks/{i:05d}_{item.key.op}_b{item.key.bits}.onnx"
            z.write(e.path, name)
            manifest["blocks"].append({"id": str(item.key), "file": name, "macs": e.macs, "params": e.params,
                                       "in_bytes": e.in_bytes, "out_bytes": e.out_bytes})
            shutil.rmtree(folder)
            if on_progress:
                on_progress(i + 1, total, item.key.op)
        for j, arch in enumerate(archs):
            model = arch_calibration_model(space, arch, model_bits)
            path = model.export(Path(tmp) / f"model{j}.onnx")
            name = f"models/model_{j:03d}.onnx"
            z.write(path, name)
            manifest["models"].append({"id": model.model_id, "file": name, "arch": arch.to_dict(),
                                       "keys": [str(k) for k in model.keys]})
            if on_progress:
                on_progress(len(items) + j + 1, total, "calibration model")
        z.writestr("manifest.json", json.dumps(manifest, indent=1))
        z.writestr("measure.py", resources.files("nas.latency").joinpath("remote_measure.py").read_text())
        z.writestr("README.txt", _README.format(n_blocks=len(items), n_models=len(archs), space=space.name))
    return manifest


def check_bundle_out(out: str | Path) -> None:
    """LatencyTableError when ``out`` is a folder, or a file that is not an earlier bundle (never overwritten)."""
    out = Path(out)
    if out.is_dir():
        raise LatencyTableError(f"--out {out} is a folder; give the .zip file to write")
    if not out.exists():
        return
    try:
        with zipfile.ZipFile(out) as z:
            manifest = json.loads(z.read("manifest.json"))
        if isinstance(manifest, dict) and manifest.get("format") == remote_measure.BUNDLE_FORMAT:
            return  # an earlier bundle: replaced
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        pass
    raise LatencyTableError(f"--out {out} exists and is not an hwnas bundle; choose another path (it is never "
                            f"overwritten)")


_README = """hwnas latency bundle: {n_blocks} blocks and {n_models} calibration models of space {space}.

On the device (needs Python 3.8+, numpy and onnxruntime):
    python measure.py bundle.zip --device MY-DEVICE [--threads 1] [--provider CPUExecutionProvider] --out results.json
Keep the device otherwise idle. Rerun the same command to resume after an interruption.
Back on the hwnas machine:
    hwnas latency import results.json
"""


# ---- import --------------------------------------------------------------------------------------------------
def load_results(path: Path) -> dict:
    if not path.is_file():
        raise LatencyTableError(f"results file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LatencyTableError(f"{path}: not a results file (invalid JSON: {e})") from None
    if not isinstance(data, dict) or data.get("format") != remote_measure.RESULTS_FORMAT:
        raise LatencyTableError(f"{path}: not an hwnas results file (format "
                                f"{data.get('format') if isinstance(data, dict) else None!r}, expected "
                                f"{remote_measure.RESULTS_FORMAT!r})")
    for k in ("manifest", "device", "blocks", "overhead", "models"):
        if not isinstance(data.get(k), dict):
            raise LatencyTableError(f"{path}: results file lacks {k!r}")
    _check_manifest(path, data["manifest"])
    return data


MANIFEST_ITEM_FIELDS = {"overhead": {"id": str, "mb": (int, float)},
                        "blocks": {"id": str, "macs": int, "params": int, "in_bytes": int, "out_bytes": int},
                        "models": {"id": str, "arch": dict, "keys": list}}


def _check_manifest(path: Path, manifest: dict) -> None:
    """LatencyTableError naming the first missing or mistyped field of the bundle manifest in a results file."""
    def bad(where: str, kind) -> LatencyTableError:
        kinds = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        return LatencyTableError(f"{path}: manifest {where} is missing or not a {kinds}; the results file is "
                                 f"damaged (measure again with the bundle)")
    for name, kind in (("space", str), ("space_args", dict)):
        if not isinstance(manifest.get(name), kind):
            raise bad(repr(name), kind)
    for group, fields in MANIFEST_ITEM_FIELDS.items():
        items = manifest.get(group)
        if not isinstance(items, list):
            raise bad(repr(group), list)
        for n, item in enumerate(items):
            for name, kind in fields.items():
                value = item.get(name) if isinstance(item, dict) else None
                if not isinstance(value, kind) or isinstance(value, bool):
                    raise bad(f"{group}[{n}].{name}", kind)
    for n, model in enumerate(manifest["models"]):
        arch = model["arch"]
        if arch.get("space") != manifest["space"] or not isinstance(arch.get("ops"), list):
            raise LatencyTableError(f"{path}: manifest models[{n}].arch is not an arch of space "
                                    f"{manifest['space']!r} (space {arch.get('space')!r}); the results file is damaged "
                                    f"(measure again with the bundle)")


MAX_MEASURED_MS = 600_000.0  # ten minutes per inference: a larger figure is a damaged or forged file


def _stats(where: str, st) -> dict:
    try:
        out = {k: float(st[k]) for k in ("p50_ms", "p90_ms", "mean_ms", "std_ms", "spread")}
        out |= {"count": int(st["count"]), "stable": bool(st["stable"])}
    except (KeyError, TypeError, ValueError):
        raise LatencyTableError(f"{where}: malformed statistics {str(st)[:80]}") from None
    bad = [k for k in ("p50_ms", "p90_ms", "mean_ms", "std_ms", "spread") if not math.isfinite(out[k])]
    if bad:
        raise LatencyTableError(f"{where}: {bad[0]} is {out[bad[0]]}, not a finite number; the results file is "
                                f"damaged (measure again with the bundle)")
    if not 0 < out["p50_ms"] <= MAX_MEASURED_MS or not 0 < out["p90_ms"] <= MAX_MEASURED_MS or out["count"] < 1:
        raise LatencyTableError(f"{where}: p50_ms and p90_ms must be above 0 and at most {MAX_MEASURED_MS:g} ms, and "
                                f"count at least 1; got {out['p50_ms']:g}, {out['p90_ms']:g}, {out['count']}")
    return out


def import_results(path: str | Path, device_id: str | None = None, tables_dir: str | Path | None = None) -> dict:
    """Create ``latency_tables/<device-id>/`` from a remote ``results.json``; return a summary."""
    path = Path(path)
    data = load_results(path)
    manifest, setup = data["manifest"], data["device"]
    device_id = check_device_id(device_id or str(setup.get("device_id") or ""))
    final = device_dir(device_id, tables_dir)
    if final.exists():
        raise LatencyTableError(f"device {device_id!r} already exists ({final}); import under another --device")
    missing = [it["id"] for group in ("overhead", "blocks", "models") for it in manifest.get(group, [])
               if it["id"] not in data[group]]
    if missing:
        raise LatencyTableError(f"{path}: {len(missing)} measurements are missing (first: {missing[0]}); rerun "
                                f"measure.py with the same --out to finish, then import")
    dm = DeviceManifest.from_dict({**setup, "device_id": device_id, "remote": True,
                                   "notes": {"bundle_id": data.get("bundle_id"), "imported_from": str(path),
                                             "space": manifest.get("space"),
                                             "space_args": manifest.get("space_args")}}, str(path))
    root = tables_root(tables_dir)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".import-{device_id}-", dir=root))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700 folders
    try:
        write_json(tmp / MANIFEST_FILE, dm.to_dict())
        overhead = fit_call_overhead([(float(it["mb"]), _stats(f"{path}: overhead {it['id']}",
                                                              data["overhead"][it["id"]])["p50_ms"])
                                      for it in manifest["overhead"]])
        overhead.save(tmp)
        lines = [",".join(COLUMNS) + "\n"]
        for it in manifest["blocks"]:
            try:
                key = OpKey.parse(it["id"])
            except ValueError as e:
                raise LatencyTableError(f"{path}: {e}") from None
            st = _stats(f"{path}: block {it['id']}", data["blocks"][it["id"]])
            lines.append(encode_row(key, {**st, "overhead_ms": overhead.predict_ms(it["in_bytes"], it["out_bytes"]),
                                          "macs": it["macs"], "params": it["params"], "in_bytes": it["in_bytes"],
                                          "out_bytes": it["out_bytes"]}))
        (tmp / TABLE_FILE).write_text("".join(lines))
        for it in manifest["models"]:
            st = _stats(f"{path}: model", data["models"][it["id"]])
            append_calibration(tmp, {"model_id": it["id"], "space": manifest["space"],
                                     "space_args": json.dumps(manifest["space_args"]), "arch": json.dumps(it["arch"]),
                                     "keys": " ".join(it["keys"]), "measured_ms": f"{st['p50_ms']:.6g}",
                                     "p90_ms": f"{st['p90_ms']:.6g}", "count": st["count"],
                                     "stable": int(st["stable"]), "timestamp": setup.get("created", "")})
        table = LatencyTable.open_folder(tmp)
        correction = refit_correction(table)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"device": device_id, "folder": str(final), "rows": len(manifest["blocks"]),
            "calibration_models": correction.fitted_on, "cpu_model": dm.cpu_model,
            "onnxruntime_version": dm.onnxruntime_version, "provider": dm.provider, "threads": dm.threads}

