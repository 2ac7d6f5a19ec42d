"""Where token pruning can pay on this device: a capacity space's dynamic ViT at uniform keep ratios against dense
ViTs of the same family shrunk in depth and width, all timed in one interleaved pass (ONNX Runtime, batch 1, one
thread, CPU clock). Latency only: the weights are random (latency does not depend on them). Prints a table and
asserts nothing.

    .venv/bin/python benchmarks/bench_capacity_floor.py                       # the Fashion-MNIST tokens-only space
    .venv/bin/python benchmarks/bench_capacity_floor.py --set resolution=56 --set patch_size=4 --set dim=192 \\
        --set depth=12 --set heads=3 --set stem_channels=48 --set before_blocks=3,6,9       # DeiT-Tiny's width

A dynamic model beats a dense one shrunk to the same latency only where (a) it can run that fast at all, and (b) the
dense front has fallen there. The dynamic model's floor (every stage at the space's lowest keep ratio) and the
dense variants' ratios to the full dense ViT show both: each block the dynamic model still runs pays ONNX Runtime's
per-op overhead however few tokens it sees.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import harness  # first: the repository on the import path
import torch
import yaml

from nas.latency.timing import TimingConfig
from nas.search.capacity.config import capacity_factor_plan
from nas.search.capacity.export import export_plan, interleaved_ms
from nas.search.capacity.space import dense_variant, load_capacity_space
from nas.search.capacity.vit import DynamicViT

INTEGERS = ("resolution", "patch_size", "dim", "depth", "heads", "stem_channels")


def space_yaml(path: Path, overrides: list[str], folder: Path) -> Path:
    """The space file with ``--set key=value`` applied (``before_blocks`` is the pruning stages' list)."""
    spec = yaml.safe_load(path.read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        if key not in (*INTEGERS, "before_blocks"):
            raise SystemExit(f"--set {item!r}: KEY is one of {', '.join((*INTEGERS, 'before_blocks'))}")
        try:
            numbers = [int(v) for v in value.split(",")]
        except ValueError:
            raise SystemExit(f"--set {item!r}: VALUE is an integer (before_blocks: a comma-separated list)") from None
        if key == "before_blocks":
            spec["pruning"]["before_blocks"] = numbers
        else:
            spec[key] = numbers[0]
    if "moe" in spec:
        spec["moe"]["blocks"] = []  # token pruning only: experts change the dynamic model's full cost, not its floor
    out = folder / "space.yaml"
    out.write_text(yaml.safe_dump(spec))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", type=Path, default=harness.DATA / "vit_fashion_tokens.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of the space")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median p50 per model)")
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = load_capacity_space(str(space_yaml(args.space, args.set, folder)), in_channels=1, classes=10)
        depth, dim, heads = base.spec.depth, base.spec.dim, base.spec.heads
        paths = {}
        for d in sorted({depth, depth * 5 // 6, depth * 2 // 3, depth // 2, depth // 3} - {0}, reverse=True):
            for w in dict.fromkeys((dim, dim * 3 // 4 // heads * heads)):
                space = dense_variant(base, depth=d, dim=w)
                paths[f"dense d{d} w{w}"] = export_plan(DynamicViT(space).eval(), capacity_factor_plan(space, []),
                                                        folder / f"d{d}w{w}.onnx")
        dynamic = DynamicViT(base).eval()
        for keep in sorted(set(base.spec.pruning.keep_ratio_options), reverse=True):
            plan = capacity_factor_plan(base, [keep] * len(base.stages))
            paths[f"keep {keep:g} ({', '.join(map(str, plan.kept_patches))} patches)"] = export_plan(
                dynamic, plan, folder / f"keep{keep:g}.onnx")
        timed = interleaved_ms(paths, rounds=args.rounds, timing=TimingConfig(clock="cpu"))
    full = timed[f"dense d{depth} w{dim}"]["measured_ms"]
    print(f"{base.spec.name}: {base.spec.resolution} px, {base.patches} patches, dim {dim}, {depth} blocks, "
          f"pruning before blocks {base.spec.pruning.before_blocks}; {args.rounds} interleaved rounds, CPU clock")
    for name, figures in timed.items():
        print(f"  {name:36s} {figures['measured_ms']:8.3f} ms  {figures['measured_ms'] / full:5.2f}x")


if __name__ == "__main__":
    main()
