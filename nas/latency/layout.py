"""Memory-layout transitions in ONNX Runtime's CPU graphs: the reorders a block timed alone pays that it does not
pay inside a whole model, and the ones a model pays that no block was timed with.

At graph optimisation level ``all`` the CPU provider runs the convolutions whose channels suit its SIMD width in the
blocked NCHWc layout and puts ``ReorderInput`` / ``ReorderOutput`` nodes where a tensor passes between NCHWc and
plain NCHW operators. A block timed in its own session takes and returns NCHW tensors, so its time holds the reorders
at its boundaries. Inside a model, blocks hand NCHWc tensors on without them, and a residual block on an NCHWc trunk
fuses its sum into its last convolution; but a block with an operator that stays NCHW (a grouped 1x1 convolution
whose groups are narrower than the SIMD width) leaves the trunk in NCHW, and every residual block after it, up to the
next block without a residual, then pays a reorder in, a reorder out and a separate ``Add``. The reorders therefore
follow the order of the blocks, which no sum over blocks sees: on fbnet at 32 px, width 0.25, the whole models of
80 random archs run 1 to 25 of them (each about 1.2 us on this VM, against models of 140-290 us), and the table's
error against their measurement correlates with that count at 0.83.

``BlockLayout`` is what a block's own optimised graph says: whether it takes its input in NCHWc, whether its main
path ends in NCHWc, whether it sums its input (a residual), and how many reorders it runs inside and in all. It is
read when the block is profiled, from the device's own ONNX Runtime (the SIMD width is the CPU's), into
``layouts.csv`` in the device folder. ``extra_reorders`` walks a model's blocks with the trunk's layout as its state
and counts the reorders the model runs minus those its blocks were timed with (exact: on those 80 models the walk
gives every model's reorder count in ONNX Runtime's optimised graph); the device's correction weighs it
(``per_reorder_ms``, fitted on the calibration models). ``ExpectedReorders`` is the same walk's expectation
under a factorised arch distribution (the trunk's layout carried as a probability), differentiable for DNAS.
Blocks without a layout (other providers and optimisation levels, keys estimated by the fallback) count as NCHW
operators that run no reorder of their own; identity blocks pass the trunk through.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from nas.arch.opkey import OpKey
from nas.arch.ops import parse_op
from nas.errors import LatencyTableError
from nas.latency.table import append_unique_row, read_csv_rows

LAYOUT_FILE = "layouts.csv"
LAYOUT_COLUMNS = ("key", "nchwc_in", "nchwc_out", "residual", "internal_reorders", "reorders")
REORDERS = ("ReorderInput", "ReorderOutput")
PASS = -1  # the code of an identity block: the trunk passes through unchanged
NCHW = 0  # the code of a block without a layout: an NCHW operator with no reorder of its own


@dataclass(frozen=True)
class BlockLayout:
    nchwc_in: bool  # the block's first operators take NCHWc (timed alone, its input passes a ReorderInput)
    nchwc_out: bool  # its main path ends in NCHWc (before the residual sum, if any)
    residual: bool  # it adds its input to its output
    internal_reorders: int  # reorders between its own operators (there in any context)
    reorders: int  # every reorder of its graph timed alone

    @property
    def code(self) -> int:
        """One integer (the form population costs gather): flags in bits 0-2, internal in 3-7, reorders above."""
        return (int(self.nchwc_in) | int(self.nchwc_out) << 1 | int(self.residual) << 2
                | min(self.internal_reorders, 31) << 3 | self.reorders << 8)


def read_layout(model: onnx.ModelProto) -> BlockLayout:
    """A block's layout from its graph as ONNX Runtime optimised it (one input, one output)."""
    graph = model.graph
    x, y = graph.input[0].name, graph.output[0].name
    producer = {o: n for n in graph.node for o in n.output}
    nchwc_x = {n.output[0] for n in graph.node if n.op_type == "ReorderInput" and n.input[0] == x}
    reorders = sum(n.op_type in REORDERS for n in graph.node)
    last = producer.get(y)
    if last is None:
        return BlockLayout(False, False, False, 0, reorders)
    tail_reorder = last.op_type == "ReorderOutput"
    summing = producer.get(last.input[0]) if tail_reorder else last
    residual, main_nchwc = False, tail_reorder
    if summing is not None and summing.op_type == "Add" and (x in summing.input or nchwc_x & set(summing.input)):
        main = [producer.get(i) for i in summing.input if i != x and i not in nchwc_x]
        residual, main_nchwc = True, bool(main) and main[0] is not None and main[0].op_type == "ReorderOutput"
    elif summing is not None and summing.op_type in ("Conv", "FusedConv") and len(summing.input) > 3 \
            and (summing.input[3] == x or summing.input[3] in nchwc_x):  # a convolution fused with the sum
        residual, main_nchwc = True, "nchwc" in summing.domain
    boundary = len(nchwc_x) + int(tail_reorder) + int(residual and main_nchwc and not tail_reorder)
    return BlockLayout(bool(nchwc_x), main_nchwc, residual, max(reorders - boundary, 0), reorders)


def layouts_apply(device) -> bool:
    """Only the CPU provider at optimisation level ``all`` changes layouts (its NCHWc transformer)."""
    return device.provider == "CPUExecutionProvider" and device.optimization == "all"


def block_layout(path: str | Path, device) -> BlockLayout | None:
    """The layout of a block's ONNX file on ``device`` (None where layouts do not apply); a block with several
    inputs or outputs counts as an NCHW operator with the reorders its graph runs."""
    from nas.latency import remote_measure

    if not layouts_apply(device):
        return None
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="hwnas-layout-") as tmp:
        optimized = str(Path(tmp) / "optimized.onnx")
        remote_measure.open_session(ort, str(path), device.provider, device.threads, device.optimization, optimized)
        model = onnx.load(optimized)
    if len(model.graph.input) != 1 or len(model.graph.output) != 1:
        reorders = sum(n.op_type in REORDERS for n in model.graph.node)
        return BlockLayout(False, False, False, reorders, reorders)
    return read_layout(model)


# ---- the device's file ---------------------------------------------------------------------------------------------
def append_layout(folder: Path, key: OpKey, layout: BlockLayout) -> None:
    append_unique_row(Path(folder) / LAYOUT_FILE, LAYOUT_COLUMNS, {
        "key": str(key), "nchwc_in": int(layout.nchwc_in), "nchwc_out": int(layout.nchwc_out),
        "residual": int(layout.residual), "internal_reorders": layout.internal_reorders,
        "reorders": layout.reorders}, ("key",))


def read_layouts(folder: Path) -> dict[str, BlockLayout]:
    """The device's block layouts by key (empty without ``layouts.csv``)."""
    path = Path(folder) / LAYOUT_FILE
    out = {}
    for i, row in enumerate(read_csv_rows(path), start=2):
        try:
            out[row["key"]] = BlockLayout(row["nchwc_in"] == "1", row["nchwc_out"] == "1", row["residual"] == "1",
                                          int(row["internal_reorders"]), int(row["reorders"]))
        except (KeyError, TypeError, ValueError):
            raise LatencyTableError(f"{path}: corrupt layout row at line {i}; delete the file and rerun "
                                    f"`hwnas latency profile`") from None
    return out


def layout_codes(keys: list[OpKey], layouts: dict[str, BlockLayout]) -> np.ndarray:
    """The codes of a model's keys in its order: ``PASS`` for identity blocks, ``NCHW`` for keys without a layout."""
    return np.asarray([PASS if parse_op(k.op).is_identity(k) else
                       (layouts[str(k)].code if str(k) in layouts else NCHW) for k in keys], dtype=np.int64)


# ---- the walk ------------------------------------------------------------------------------------------------------
def _decode(codes: np.ndarray):
    live = codes != PASS
    c = np.where(live, codes, NCHW).astype(np.int64)
    return live, (c & 1) > 0, (c & 2) > 0, (c & 4) > 0, (c >> 3) & 31, c >> 8


def _step(state, nchwc_in, nchwc_out, residual, internal):
    """Reorders a block runs inside a model given the trunk's layout before it (``state``: NCHWc), and the trunk's
    layout after it (arrays of 0/1 flags)."""
    fused = residual * state * nchwc_out  # the sum fused into its last NCHWc convolution
    separate = residual - fused  # the sum runs in NCHW: the main path and the trunk leave NCHWc for it
    entry = nchwc_in + state - 2 * nchwc_in * state  # the trunk's layout differs from the block's first operators
    runs = internal + entry + separate * (nchwc_out + state * nchwc_in)
    after = fused + (1 - residual) * nchwc_out
    return runs, after


def extra_reorders(codes: np.ndarray) -> np.ndarray:
    """Per model (rows of block codes in model order): reorders its optimised graph runs minus those its blocks ran
    when timed alone."""
    codes = np.atleast_2d(np.asarray(codes, dtype=np.int64))
    state, count = np.zeros(len(codes)), np.zeros(len(codes))
    for j in range(codes.shape[1]):
        live, *flags, internal, timed = _decode(codes[:, j])
        runs, after = _step(state, *(f.astype(np.float64) for f in flags), internal)
        count += np.where(live, runs - timed, 0.0)
        state = np.where(live, after, state)
    return count + state  # the output leaves NCHWc


def reorder_steps(codes: np.ndarray) -> np.ndarray:
    """``extra_reorders``'s walk one position at a time, for every option of the position (``codes``, any shape):
    ``(4, *shape)`` float arrays: the extra reorders an option runs when the trunk arrives in NCHWc, and when it
    arrives in NCHW, then the trunk's layout after it (1: NCHWc) in either case. A whole model's extra reorders are
    the sum of its positions' extras along the walk, plus 1 where the trunk ends in NCHWc."""
    live, *flags, internal, timed = (a.astype(np.float64) for a in _decode(np.asarray(codes)))
    runs_c, after_c = _step(1.0, *flags, internal)
    runs_n, after_n = _step(0.0, *flags, internal)
    return np.stack([live * (runs_c - timed), live * (runs_n - timed), live * after_c + (1 - live), live * after_n])


class ExpectedReorders:
    """``extra_reorders``'s expectation when each position's option is drawn from its probabilities (same shape as
    its codes) independently: the trunk's layout is carried as the probability that it is NCHWc, and each option's
    reorders and next layout are mixed over the two layouts it may find. The positions' terms are prepared once (a
    search evaluates this every step); differentiable in the probabilities."""

    def __init__(self, codes: list[np.ndarray]):
        self._terms = [reorder_steps(c) for c in codes]
        self._tensors: dict = {}

    def __call__(self, probs: list[torch.Tensor]) -> torch.Tensor:
        if not probs:
            return torch.zeros(())
        where = (probs[0].device, probs[0].dtype)
        if where not in self._tensors:
            self._tensors[where] = [torch.as_tensor(t, device=where[0], dtype=where[1]) for t in self._terms]
        state = torch.zeros((), device=where[0], dtype=where[1])
        count = torch.zeros((), device=where[0], dtype=where[1])
        for p, (runs_c, runs_n, after_c, after_n) in zip(probs, self._tensors[where]):
            count = count + (p * (state * runs_c + (1 - state) * runs_n)).sum()
            state = (p * (state * after_c + (1 - state) * after_n)).sum()
        return count + state
