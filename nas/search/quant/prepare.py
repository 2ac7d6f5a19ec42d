"""From command-line settings to a prepared mixed-precision run: the settings and their checks, the model and
its device table (fp32 and int8 rows, measured here when missing), and the cost the search minimises. Every bad
input fails here, before a run directory is written."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from nas.arch.space import Arch, Space
from nas.data.dataset import Dataset
from nas.errors import LatencyTableError, SearchError
from nas.latency.device import Device
from nas.latency.measurement import MeasuringDevice, measuring_device
from nas.latency.model import LatencyModel
from nas.models.builder import build_model
from nas.models.onnx_io import export_onnx
from nas.progress import Progress, no_progress, stage
from nas.search.quant.costs import COSTS, BitopsCost, Cost, LatencyCost, SizeCost
from nas.search.quant.export import FORMATS
from nas.search.quant.graph import QuantGraph, attach_onnx, trace_layers
from nas.search.quant.mixed import BitOption, MixedPrecisionNet, bit_options
from nas.search.quant.profile import layer_items, precision_graph, profile_layers
from nas.search.quant.search import SearchConfig
from nas.search.targets import RANDOM_ARCHS, LatencyScale, given_targets, model_reference, resolve_one
from nas.train.engine import Engine

FP32 = BitOption(32, 32)
INT8 = BitOption(8, 8)


@dataclass
class MixedPrecisionConfig:
    cost: str = "size"
    weight_bits: list[int] = field(default_factory=lambda: [2, 4, 8, 32])
    act_bits: list[int] = field(default_factory=lambda: [8, 32])
    target: str | None = None  # a latency target as given (``nas.search.targets``: 2.5ms, p40, 0.8x:fbnet_a)
    target_ms: float | None = None  # absolute; preparing sets it to what ``target`` resolves to
    target_mb: float | None = None
    pretrain_epochs: int = 20
    pretrain_lr: float = 0.01
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune_epochs: int = 3
    finetune_lr: float = 5e-4
    calibration_samples: int = 256
    latency_fit_models: int = 10  # whole mixed models measured to fit the latency cost (0: table sums only)
    export_formats: tuple[str, ...] = FORMATS

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        if self.cost not in COSTS:
            raise SearchError(f"unknown cost {self.cost!r} (use {', '.join(COSTS)})")
        for name in ("pretrain_epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise SearchError(f"{name.replace('_', ' ')} must be >= 0, got {getattr(self, name)}")
        if self.search.epochs < 1:
            raise SearchError(f"search epochs must be >= 1, got {self.search.epochs}")
        if self.latency_fit_models and self.latency_fit_models < 4:
            raise SearchError(f"latency fit models must be 0 or >= 4 (fp32, int8, pointwise-only, depthwise-only "
                              f"first), got {self.latency_fit_models}")
        if self.calibration_samples < 1:
            raise SearchError(f"calibration samples must be >= 1, got {self.calibration_samples}")
        check_options(self.cost, bit_options(self.weight_bits, self.act_bits))
        latency = given_targets(self.target, self.target_ms)
        if latency and self.target_mb is not None:
            raise SearchError("give one of --target (or --target-ms) and --target-mb, not both")
        if latency and self.cost != "latency":
            raise SearchError(f"--target and --target-ms steer --cost latency; with --cost {self.cost} use "
                              f"{'--target-mb' if self.cost == 'size' else 'no target'}")
        if self.target_mb is not None and self.cost != "size":
            raise SearchError(f"--target-mb steers --cost size; with --cost {self.cost} use "
                              f"{'--target' if self.cost == 'latency' else 'no target'}")

    @property
    def latency_target(self) -> str | None:
        """The latency target as given (``--target`` or ``--target-ms``), or None."""
        given = given_targets(self.target, self.target_ms)
        return given[0] if given else None


def check_options(cost: str, options: list[BitOption]) -> None:
    if cost == "latency":
        bad = [o.label for o in options if not o.is_float and (o.w_bits, o.a_bits) != (8, 8)]
        if bad:
            raise SearchError(f"bit options {', '.join(bad)} cannot be timed: ONNX Runtime runs only int8 and fp32 "
                              f"on this provider, so --cost latency takes --weight-bits 8,32 --act-bits 8,32")
    if cost == "latency" and not any(o.runs_int8 for o in options):
        raise SearchError("--cost latency needs the int8 option (weight and activation bits 8)")
    if len(options) < 2:
        raise SearchError(f"only one bit option ({options[0].label}): nothing to search")


# ---- latency ---------------------------------------------------------------------------------------------------
def load_device_model(device: str, space: Space, arch: Arch, required: bool, tables_dir=None
                      ) -> tuple[LatencyModel | None, str | None]:
    """The device's LatencyModel, checked to hold the model's fp32 and int8 block rows.

    Returns (None, reason) when not ``required`` and the table cannot serve; raises LatencyTableError otherwise.
    """
    try:
        lm = LatencyModel.load(device, tables_dir)
        missing = {bits: [k for k in lm.arch_keys(space, arch, bits) if lm.is_estimated(k)] for bits in (32, 8)}
        if missing[8] or missing[32]:
            bits = 8 if missing[8] else 32
            args = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                            (("resolution", space.resolution), ("width", space.width_multiplier),
                             ("classes", space.classes), ("in_channels", space.in_channels)))
            raise LatencyTableError(
                f"device {device!r} has no {'int8' if bits == 8 else 'fp32'} table rows for "
                f"{len(missing[bits])} blocks of {space.name} (e.g. {missing[bits][0]}); run `hwnas latency profile "
                f"--space {space.name} --device {device} {args} --int8`")
        return lm, None
    except LatencyTableError as e:
        if required:
            raise
        return None, str(e)


def make_cost(name: str, graph: QuantGraph, options: list[BitOption], lm: LatencyModel | None, space: Space,
              arch: Arch) -> Cost:
    if name == "size":
        return SizeCost(graph, options)
    if name == "bitops":
        return BitopsCost(graph, options)
    if name == "latency":
        if lm is None:
            raise LatencyTableError("--cost latency needs a device latency table")
        return LatencyCost(graph, options, lm.precision_costs(lm.arch_keys(space, arch, 32), precision_graph(graph)))
    raise SearchError(f"unknown cost {name!r} (use latency, size or bitops)")


def checked_target(cfg: MixedPrecisionConfig, cost: Cost) -> float | None:
    """The target in the cost's unit (a latency target resolved: ``resolve_latency_target``); SearchError when no
    assignment can meet it."""
    target = cfg.target_ms if cost.name == "latency" else cfg.target_mb if cost.name == "size" else None
    if target is not None:
        floor = cost.lower_bound()
        if not target > 0 or target < floor:
            raise SearchError(f"target {target:g} {cost.unit} is impossible: no assignment of these bit options costs "
                              f"less than {floor:.4g} {cost.unit}")
    return target


def resolve_latency_target(cfg: MixedPrecisionConfig, cost_ms: LatencyCost | None, lm: LatencyModel | None,
                           space: Space, device: str) -> MixedPrecisionConfig:
    """``cfg`` with its latency target in milliseconds (``target_ms``) beside the form given (``target``): a
    percentile reads random bit assignments of the model, a fraction a named model's fp32 prediction."""
    text = cfg.latency_target
    if text is None or cfg.cost != "latency":
        return cfg

    def random_assignments() -> np.ndarray:  # each layer's option uniformly: its int8-or-fp32 row, costed
        rng = np.random.default_rng(cfg.search.seed)
        picks = rng.integers(len(cost_ms.options), size=(RANDOM_ARCHS, len(cost_ms.graph.layers)))
        return np.asarray([float(cost_ms.table.expected_ms(row)) for row in cost_ms.int8_mask[picks]])

    target = resolve_one(text, lambda: LatencyScale(
        device, f"{RANDOM_ARCHS} random bit assignments of {space.name}", random_assignments,
        model_reference(lm, space)))
    return replace(cfg, target=target.given, target_ms=target.ms)


@dataclass(kw_only=True)
class MixedPrecisionJob:
    """What ``hwnas search mixed-precision`` runs: a model (``arch``: model name, space name or arch JSON), its
    data, the device whose table times it, and the search settings."""

    arch: str
    device: str
    dataset: str = "digits"
    resolution: int | None = None
    width: float | None = None
    seed: int = 0
    tables_dir: str | None = None
    settings: MixedPrecisionConfig = field(default_factory=MixedPrecisionConfig)
    engine: Engine = field(default_factory=Engine)  # where pretraining and the bit search train


@dataclass(kw_only=True)
class Prepared:
    """Everything checked and costed before a run directory is touched."""

    space: Space
    arch: Arch
    data: Dataset
    device: str
    cfg: MixedPrecisionConfig
    options: list[BitOption]
    graph: QuantGraph
    lm: LatencyModel | None
    no_table: str | None
    measure_on: MeasuringDevice  # where the candidate files are timed (``nas.latency.measurement``)
    cost_ms: LatencyCost | None
    job: MixedPrecisionJob | None = None

    def run_config(self) -> dict:
        job = self.job
        return {"command": "search mixed-precision", "arch_ref": job.arch, "arch": self.arch.to_dict(),
                "dataset": job.dataset, "device": self.device, "space_args": self.space.space_args(),
                "seed": job.seed, "accelerator": job.engine.accelerator.kind,
                "precision": job.engine.accelerator.precision, "world_size": job.engine.world.size,
                **self.cfg.to_dict()}

    def run_name(self) -> str:
        return self.space.name

    def summary(self) -> str:
        s = self.space
        return (f"mixed precision ({self.cfg.cost}) on {s.name} @ {s.resolution}px x{s.width_multiplier:g}, "
                f"{self.data.name} {self.data.sizes()}, device {self.device}")


def prepare_mixed_precision(space: Space, arch: Arch, data: Dataset, device: str, cfg: MixedPrecisionConfig, *,
                            tables_dir=None, progress: Progress = no_progress) -> Prepared:
    """Check the settings, the model and the device table; measure the model's missing per-layer and transition
    rows into the device table. Every bad input fails here, before a run directory is created."""
    cfg.validate()
    options = bit_options(cfg.weight_bits, cfg.act_bits)
    check_options(cfg.cost, options)
    lm, no_table = load_device_model(device, space, arch, required=cfg.cost == "latency", tables_dir=tables_dir)
    net = MixedPrecisionNet(build_model(space, arch), options)  # SearchError when there is nothing to quantize
    layers = trace_layers(net.model, net.names, net.input_shape)
    with tempfile.TemporaryDirectory(prefix="hwnas-mp-") as tmp:
        path = Path(tmp) / "fp32.onnx"
        export_onnx(net.float_model([FP32] * len(layers)), net.input_shape, path)
        graph = attach_onnx(layers, path)
    cost_ms: LatencyCost | None = None
    if lm is not None:
        with stage(progress, "profile layers", len(layer_items(graph))) as advance:
            profile_layers(lm.device, graph, tables_dir=tables_dir,
                           on_progress=lambda done, total, note: advance(note=note[:40]))
        lm.refresh()
        cost_ms = make_cost("latency", graph, options, lm, space, arch)
    cost = cost_ms if cfg.cost == "latency" else make_cost(cfg.cost, graph, options, lm, space, arch)
    cfg = resolve_latency_target(cfg, cost_ms, lm, space, device)
    checked_target(cfg, cost)  # with the table's latency terms; checked again after the latency fit
    measure_on = measuring_device(lm.device) if lm is not None else MeasuringDevice(Device())
    return Prepared(space=space, arch=arch, data=data, device=device, cfg=cfg, options=options, graph=graph, lm=lm,
                    no_table=no_table, measure_on=measure_on, cost_ms=cost_ms)


