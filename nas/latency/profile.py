"""Profiling: export each op key's block to ONNX, time it in ONNX Runtime, append a row to the device table.

``space_profile_items`` enumerates every unique key a space can produce (all layers x candidates, every
channel and resolution option); ``profile_items`` measures the ones the device table lacks, so a rerun after
a crash (even ``kill -9``) measures only what is missing, and two profilers of one device share the work.
Identity blocks cost nothing and are never measured. Each block's memory layout (``nas.latency.layout``) is read
from the graph ONNX Runtime optimises for it, into ``layouts.csv`` beside the table (at level ``all`` on the CPU
provider; a rerun reads the layouts an older table lacks). Keys with ``bits == 8`` are quantized to static int8
with ``onnxruntime.quantization`` (calibrated on random inputs; QDQ unless the key says otherwise, see
``quantize``) before timing. Blocks are timed in interleaved chunks (see ``timing``).

A shared machine has slow spells of seconds: in eight profiles of fbnet at 224 px on a 2-vCPU VM, one chunk of
four ran 1.3-1.6x slower than the rest of its profile in four. Interleaving within a chunk cannot help when the
whole chunk lies in the spell, so chunks are timed in **two passes** (``remote_measure.fastest_of_passes``, as
the standalone ``measure.py`` of bundles does too): a segment of four chunks is timed, then timed again, and each
key keeps the faster of its two timings (interference only adds time) before its row is written; the two timings
of a key lie a segment apart (a few seconds at 224 px). Rows of two profiles of fbnet at 224 px then differ by
3.1% (90th percentile, beside one global scale) against 14.8% in one pass, for 10.1 s a profile against 6.5 s
(``benchmarks/bench_profile_repeat.py``, 8 profiles each way, alternately). Tried and rejected: anchoring each
chunk to blocks already in the table (dividing by the chunk's speed against them): a spell that covers the
anchors and not the chunk, or the reverse, then moves the whole chunk (18.4% against 13.6% without).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nas.arch.opkey import OpKey
from nas.arch.ops import parse_op
from nas.arch.space import Space
from nas.errors import LatencyTableError
from nas.latency import remote_measure
from nas.latency.device import Device, check_provider
from nas.latency.layout import append_layout, block_layout, layouts_apply, read_layouts
from nas.latency.overhead import CallOverhead, measure_call_overhead
from nas.latency.quantize import int8_options, quantize_int8
from nas.latency.table import DeviceManifest, LatencyTable
from nas.latency.timing import TimingConfig
from nas.models.onnx_io import OPSET

ProgressCallback = Callable[[int, int, str], None]  # (done, total, note)


@dataclass(frozen=True)
class ProfileItem:
    """One thing to measure: its key, how to build the module, and its input shapes (batch included)."""

    key: OpKey
    build: Callable[[], nn.Module]
    input_shapes: tuple[tuple[int, ...], ...]


def key_is_identity(key: OpKey) -> bool:
    return parse_op(key.op).is_identity(key)


def block_item(key: OpKey, **options) -> ProfileItem:
    """The item of any registered op's key: its builder and input shapes from the op registry (``nas.arch.ops``)."""
    spec = parse_op(key.op)
    return ProfileItem(key, lambda: spec.build(key, **options), spec.input_shapes(key, **options))


def space_layer_keys(space: Space) -> list[OpKey]:
    """Every unique fp32 key of ``space``: each block position's key at every option of its decisions."""
    keys: dict[str, OpKey] = {}
    for position in space.block_positions():
        for _, block in position.blocks():
            key = OpKey.from_block(block)
            keys.setdefault(str(key), key)
    return list(keys.values())


def space_profile_items(space: Space, bits: tuple[int, ...] = (32,)) -> list[ProfileItem]:
    """Every unique key the space can produce (identity blocks left out), at each precision in ``bits``."""
    return [block_item(key.with_bits(b)) for b in bits for key in space_layer_keys(space)
            if not key_is_identity(key)]


# ---- export --------------------------------------------------------------------------------------------------
@contextmanager
def single_thread_torch() -> Iterator[None]:
    """Run torch (tracing, FLOP counting) on one thread: on a busy machine torch's thread pool is many times
    slower, and its spinning workers would steal the core from the ONNX Runtime timings that follow."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def input_names(item: ProfileItem) -> list[str]:
    return ["input"] if len(item.input_shapes) == 1 else [f"input{i}" for i in range(len(item.input_shapes))]


def export_item(item: ProfileItem, path: Path) -> tuple[int, int, tuple[int, ...]]:
    """Export the item's module (eval mode, batch-dynamic) to ONNX; return (MACs, params, output shape)."""
    model = item.build().eval()
    inputs = tuple(torch.zeros(*shape) for shape in item.input_shapes)
    with single_thread_torch(), torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(*inputs)
    names = input_names(item)
    with single_thread_torch(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, str(path), input_names=names, output_names=["output"],
                          opset_version=OPSET, dynamo=False,
                          dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}})
    return counter.get_total_flops() // 2, sum(p.numel() for p in model.parameters()), tuple(out.shape)


@dataclass
class ExportedItem:
    path: Path
    macs: int
    params: int
    in_bytes: int
    out_bytes: int


def item_onnx(item: ProfileItem, folder: Path) -> ExportedItem:
    """Write the item's ONNX file (static int8 when ``key.bits == 8``, see ``quantize``) with its MACs, params
    and fp32 I/O bytes."""
    fp32 = folder / "block.onnx"
    macs, params, out_shape = export_item(item, fp32)
    in_bytes = sum(4 * int(np.prod(s)) for s in item.input_shapes)
    out_bytes = 4 * int(np.prod(out_shape))
    if item.key.bits == 32:
        return ExportedItem(fp32, macs, params, in_bytes, out_bytes)
    if item.key.bits != 8:
        raise LatencyTableError(f"key {item.key}: only bits 32 (fp32) and 8 (int8) can be profiled")
    qformat, qops = int8_options(item.key)
    shapes = dict(zip(input_names(item), item.input_shapes))
    path = quantize_int8(fp32, folder / "block.int8.onnx", shapes, qformat, qops)
    return ExportedItem(path, macs, params, in_bytes, out_bytes)


def record_layout(item: ProfileItem, device: Device, folder: Path) -> None:
    """Read and keep the layout of an item measured before (``nas.latency.layout``)."""
    with tempfile.TemporaryDirectory(prefix="hwnas-layout-") as tmp:
        layout = block_layout(item_onnx(item, Path(tmp)).path, device)
    if layout is not None:
        append_layout(folder, item.key, layout)


def row_metadata(e: ExportedItem, overhead: CallOverhead, batch: int = 1) -> dict:
    """A row's call overhead (for ``batch`` samples in and out) and its batch-1 MACs, params and bytes."""
    return {"overhead_ms": overhead.predict_ms(batch * e.in_bytes, batch * e.out_bytes), "macs": e.macs,
            "params": e.params, "in_bytes": e.in_bytes, "out_bytes": e.out_bytes}


# ---- profiling -----------------------------------------------------------------------------------------------
def profile_items(device: Device, items: list[ProfileItem], *, tables_dir: str | Path | None = None,
                  on_progress: ProgressCallback | None = None, timing: TimingConfig | None = None,
                  chunk: int = 32, passes: int = remote_measure.PASSES) -> dict:
    """Measure every item whose key the table of ``device`` (its ``device_id``) lacks, with the device's provider,
    threads, graph optimisation, clock and batch, and append one row per key.

    Items are exported and timed in chunks of ``chunk`` keys, interleaved (see ``timing``), at ``batch`` samples
    (a table for batched inference: the exports' batch axis is dynamic), each segment of chunks ``passes`` times
    (the fastest timing of a key is kept, see the module doc); each key's row is appended as soon as its segment is
    timed. Returns counts ``{"total", "measured", "skipped", "identity", "seconds"}``; ``on_progress(done, total,
    note)`` is called per item. Safe to interrupt at any point (a rerun measures what is missing) and to run twice
    at once (a key is appended once).
    """
    if device.device_id is None:
        raise ValueError("profile_items: the Device needs a device_id (the table it measures into)")
    check_provider(device.provider)
    timing = device.timing(timing)
    batch = device.batch
    table = LatencyTable.open_for_writing(DeviceManifest.for_this_machine(
        device.device_id, device.provider, device.threads, device.optimization, device.clock, batch), tables_dir)
    unique: dict[str, ProfileItem] = {}
    for item in items:
        unique.setdefault(str(item.key), item)
    start = time.perf_counter()
    counts = {"total": len(unique), "measured": 0, "skipped": 0, "identity": 0, "unstable": 0}
    done = 0

    def progress(note: str) -> None:
        nonlocal done
        done += 1
        if on_progress:
            on_progress(done, len(unique), note)

    overhead = CallOverhead.load(table.folder)
    pending = list(unique.values())
    with_layouts = layouts_apply(device)
    while pending:
        table.refresh()
        todo: list[ProfileItem] = []
        layouts = read_layouts(table.folder) if with_layouts else {}
        while pending and len(todo) < chunk * remote_measure.SEGMENT:
            item = pending.pop(0)
            if key_is_identity(item.key):
                counts["identity"] += 1
                progress("identity")
            elif item.key in table:
                if with_layouts and str(item.key) not in layouts:  # a table profiled before layouts were read
                    record_layout(item, device, table.folder)
                counts["skipped"] += 1
                progress("already measured")
            else:
                todo.append(item)
        if not todo:
            continue
        if overhead is None:
            overhead = measure_call_overhead(device, timing)
            overhead.save(table.folder)
        with tempfile.TemporaryDirectory(prefix="hwnas-profile-") as tmp:
            prepared = []
            for i, item in enumerate(todo):
                folder = Path(tmp) / str(i)
                folder.mkdir()
                exported = item_onnx(item, folder)
                prepared.append((item, device.open(exported.path), exported,
                                 block_layout(exported.path, device) if with_layouts else None))
        stats = remote_measure.fastest_of_passes(
            lambda idx: device.time_sessions([prepared[i][1] for i in idx], timing), len(prepared), chunk, passes,
            p50=lambda st: st.p50_ms)
        for (item, _, e, layout), st in zip(prepared, stats):
            row = {**st.to_dict(), **row_metadata(e, overhead, batch)}
            if layout is not None:  # before the row: a table row without its layout is only an older table's
                append_layout(table.folder, item.key, layout)
            wrote = table.append(item.key, row)
            counts["measured" if wrote else "skipped"] += 1
            counts["unstable"] += int(wrote and not st.stable)
            progress(f"{item.key.op} {st.p50_ms:.3f} ms" + ("" if st.stable else " (unstable)"))
    counts["seconds"] = time.perf_counter() - start
    return counts
