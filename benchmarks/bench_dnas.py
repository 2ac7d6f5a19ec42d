"""Claims of DNAS and DMaskingNAS: a supernet step costs little more than its largest child, channel options cost
no memory, alpha steers latency, and the searched arch beats random archs of its latency. Prints, asserts nothing.

    .venv/bin/python benchmarks/bench_dnas.py [--device local-cpu] [--only cost,memory,alpha,quality]

- cost: one supernet training step vs the largest single child at equal batch (interleaved timing, medians):
  DMasking (masks for ops and channels, one sampled resolution), DMasking with the interleaved resolution mix,
  DNAS sampled-path and DNAS all-paths.
- memory: peak RSS of DMasking training steps with 4 vs 32 channel options per layer (fresh processes).
- alpha: DMasking searches at increasing alpha; the found archs' predicted latency.
- quality: a DMasking search at a latency target on digits, retrained with the recipe and measured in ONNX
  Runtime, against random archs within +-10% of its predicted latency trained with the same recipe and seed.
The device table is profiled on first use (as ``--profile`` does; pass --tables-dir to keep it out of
latency_tables/). Timings are noisy on a shared machine. About 4.5 CPU-minutes in all with the defaults (each
section can run alone with --only); on a machine loaded by other work the wall time is several times that.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness  # first: the repository on the import path  # noqa: F401
import numpy as np
import torch
import torch.nn.functional as F

from nas.arch.space import load_space  # noqa: E402
from nas.models.builder import build_model  # noqa: E402
from nas.search.dnas.decode import most_probable_in_band  # noqa: E402
from nas.search.dnas.distribution import ArchDistribution  # noqa: E402
from nas.search.dnas.dmasking_supernet import DMaskingSupernet  # noqa: E402
from nas.search.dnas.dnas_supernet import DNASSupernet  # noqa: E402
from nas.search.dnas.search import SupernetSearch, SupernetSearchSettings  # noqa: E402
from nas.search.dnas.strategy import SearchJob, SupernetStrategy, build_supernet  # noqa: E402
from nas.search.strategy import open_run  # noqa: E402
from nas.train.recipe import Recipe  # noqa: E402

WIDE_SPACE = """
name: wide_options
resolution: 32
in_channels: 1
classes: 10
stem: [conv_k3, 16, 2]
candidates: [ir_k3_e1, ir_k3_e1_g2, ir_k3_e3, ir_k3_e6, ir_k5_e1, ir_k5_e1_g2, ir_k5_e3, ir_k5_e6, skip]
stages:
  - {channels: 256, repeat: 2, stride: 2}
  - {channels: 256, repeat: 2, stride: 2}
channel_options: [OPTIONS]
head: [conv_k1, 256]
dropout: 0.0
"""


def step_ratio(make_step_a, make_step_b, reps: int = 15, warm: int = 3) -> tuple[float, float, float]:
    """Median ms of step A, of step B, and their ratio, timed in alternation so that load drifts cancel."""
    a, b = [], []
    for i in range(reps + warm):
        t = time.perf_counter()
        make_step_a()
        ta = time.perf_counter() - t
        t = time.perf_counter()
        make_step_b()
        tb = time.perf_counter() - t
        if i >= warm:
            a.append(ta)
            b.append(tb)
    ma, mb = float(np.median(a)) * 1e3, float(np.median(b)) * 1e3
    return ma, mb, ma / mb


def _child_step(space, batch):
    model = build_model(space, space.fixed_arch()).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(batch, space.in_channels, space.resolution, space.resolution).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, space.classes, (batch,))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def _supernet_step(net, dist, space, batch, **paths):
    net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(batch, space.in_channels, space.resolution, space.resolution).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, space.classes, (batch,))

    def step():
        with torch.no_grad():
            sample = dist.sample(2.0, **paths)
        loss = F.cross_entropy(net(x, sample), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def bench_cost(args) -> None:
    print(f"== cost: one training step / the largest child's step (batch {args.batch}, {args.resolution}px, "
          f"1 thread, medians of alternated steps)")
    torch.manual_seed(0)
    for width in args.widths:
        v2 = load_space("fbnet_v2", resolution=args.resolution, width_multiplier=width, classes=10, in_channels=1)
        v1 = load_space("fbnet", resolution=args.resolution, width_multiplier=width, classes=10, in_channels=1)
        cases = []
        d = ArchDistribution(v2)
        cases.append(("dmasking (op+channel masks, sampled resolution)", v2,
                      _supernet_step(DMaskingSupernet(d), d, v2, args.batch, resolution_paths=1)))
        d = ArchDistribution(v2)
        cases.append(("dmasking --soft-resolution (interleaved mix)", v2,
                      _supernet_step(DMaskingSupernet(d), d, v2, args.batch)))
        d = ArchDistribution(v2)
        cases.append(("dmasking --sampled-path (one op slice)", v2,
                      _supernet_step(DMaskingSupernet(d), d, v2, args.batch, op_paths=1, resolution_paths=1)))
        d = ArchDistribution(v1)
        cases.append(("dnas --sampled-path (fbnet)", v1, _supernet_step(DNASSupernet(d), d, v1, args.batch, op_paths=1)))
        d = ArchDistribution(v1)
        cases.append(("dnas --all-paths (fbnet)", v1, _supernet_step(DNASSupernet(d), d, v1, args.batch)))
        for name, space, step in cases:
            ms, child_ms, ratio = step_ratio(step, _child_step(space, args.batch), reps=args.reps)
            print(f"  width {width:<5g} {name:50s} {ms:8.1f} ms vs largest child {child_ms:7.1f} ms  "
                  f"= {ratio:.2f}x")


def _memory_child(options: int, batch: int) -> None:
    """Run in a fresh process: peak RSS growth over DMasking training steps."""
    torch.set_num_threads(1)
    text = WIDE_SPACE.replace("OPTIONS", ", ".join(f"{(i + 1) / options:g}" for i in range(options)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wide.yaml"
        path.write_text(text)
        space = load_space(str(path), resolution=32, classes=10, in_channels=1)
    dist = ArchDistribution(space)
    net = DMaskingSupernet(dist)
    step = _supernet_step(net, dist, space, batch, resolution_paths=1)
    before = _rss_mb()
    for _ in range(3):
        step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"options": [len(s.channel_options) for s in space.stages], "before_mb": before,
                      "peak_mb": peak, "params": sum(p.numel() for p in net.parameters())}))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_memory(args) -> None:
    print(f"== memory: DMasking training steps, channel options per layer 4 vs 32 (batch {args.batch}, 32px, "
          f"channels up to 256, fresh process each)")
    rows = []
    for n in (4, 32):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--batch", str(args.batch)],
                             capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"  {n:2d} options {r['options']}: params {r['params']:,}, RSS before steps {r['before_mb']:.0f} MB, "
              f"peak {r['peak_mb']:.0f} MB (+{r['peak_mb'] - r['before_mb']:.0f} MB in the steps)")
    grow = (rows[1]["peak_mb"] - rows[1]["before_mb"]) / (rows[0]["peak_mb"] - rows[0]["before_mb"])
    print(f"  peak memory 32 vs 4 options: {rows[1]['peak_mb'] / rows[0]['peak_mb']:.3f}x (total), "
          f"{grow:.3f}x (growth during the steps)")


def _job(args, engine=None, **kw) -> SearchJob:
    settings = SupernetSearchSettings(epochs=args.epochs, **{k: v for k, v in kw.items() if k != "target_ms"},
                                      target_ms=kw.get("target_ms"))
    return SearchJob(method="dmasking", space="fbnet_v2", device=args.device, dataset=args.dataset,
                     resolution=args.resolution, width=args.width, target_ms=kw.get("target_ms"),
                     tables_dir=args.tables_dir, profile=True, settings=settings,
                     recipe=Recipe(epochs=args.final_epochs, batch_size=args.batch, augment=args.augment),
                     **({"engine": engine} if engine is not None else {}))


def bench_alpha(args) -> None:
    print(f"== alpha sweep: DMasking on fbnet_v2 @ {args.resolution}px x{args.width:g}, {args.epochs} search "
          f"epochs, device {args.device}")
    found = []
    for alpha in args.alphas:
        prep = SupernetStrategy(_job(args, alpha=alpha)).prepare()
        search = SupernetSearch(build_supernet(prep), prep.dist, prep.terms, prep.data, prep.job.settings,
                                prep.job.recipe, prep.min_ms)
        history = search.run()
        arch = prep.dist.argmax_arch()
        ms = prep.lm.predict(prep.space, arch)
        found.append(ms)
        print(f"  alpha {alpha:<7g} predicted {ms:.4f} ms  (E[lat] {history[-1]['expected_ms']:.4f} ms, supernet val "
              f"acc {history[-1]['val_accuracy']:.3f}, entropy {history[-1]['entropy']:.2f})", flush=True)
    monotone = all(a > b for a, b in zip(found, found[1:]))
    from scipy.stats import spearmanr
    print(f"  predicted latency strictly falls as alpha grows: {monotone} (Spearman rho "
          f"{spearmanr(args.alphas, found)[0]:+.2f})")


def _train_measure(prep, space, arch, out: Path, prefix: str) -> dict:
    """Train ``arch`` with the search's recipe and engine, export it, check parity and time it: the same path as
    the search's winner (``train_export_measure``); adds the child's training images/s."""
    from nas.run import RunDir
    from nas.latency.measurement import measuring_device
    from nas.search.finalize import train_export_measure

    start = time.perf_counter()
    rep = train_export_measure(space, arch, prep.data, prep.job.recipe, RunDir(out, {"bench": "quality"}),
                               measure_on=measuring_device(prep.lm.device), prefix=prefix, table=prep.lm.table,
                               engine=prep.job.engine)
    rep["seconds"] = time.perf_counter() - start
    rep["images_per_s"] = _median_images_per_s(out / f"{prefix}train_history.csv")
    return rep


def _median_images_per_s(train_history: Path) -> float:
    import pandas as pd

    return float(pd.read_csv(train_history)["images_per_s"].median())


def _fbnet_a_at(prep, measured_ms: float, widths: list[float]) -> tuple[float, float]:
    """The width of FBNet-A (at the search's resolution and data) whose exported model measures closest to
    ``measured_ms`` on the search's device, and its measured ms."""
    from nas.models.onnx_io import export_onnx
    from nas.latency.measurement import measuring_device

    device = measuring_device(prep.lm.device).device
    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for w in widths:
            space = load_space("fbnet_a", resolution=prep.space.resolution, width_multiplier=w,
                               classes=prep.space.classes, in_channels=prep.space.in_channels)
            model = build_model(space, space.fixed_arch()).eval()
            path = export_onnx(model, model.input_shape, Path(tmp) / f"fbnet_a_{w:g}.onnx")
            found.append((w, device.time_file(path).p50_ms))
            print(f"  FBNet-A x{w:g}: measured {found[-1][1]:.4f} ms", flush=True)
    return min(found, key=lambda f: abs(np.log(f[1] / measured_ms)))


def bench_quality(args) -> None:
    from nas.train.accelerator import resolve_accelerator
    from nas.train.engine import Engine

    begin = time.perf_counter()
    engine = Engine(resolve_accelerator("cpu", "32", args.threads), workers=args.loader_workers)
    print(f"== quality: DMasking at a target vs random archs at the same predicted latency and FBNet-A scaled to it "
          f"({args.dataset}, {args.resolution}px x{args.width:g}, {args.epochs} search epochs, recipe "
          f"{args.final_epochs} epochs, seed 0, {engine.accelerator.threads} threads, {args.loader_workers} "
          f"DataLoader workers)")
    probe = SupernetStrategy(_job(args, engine=engine)).prepare()
    rng = np.random.default_rng(0)
    lat = [probe.lm.predict(probe.space, probe.space.sample(rng)) for _ in range(400)]
    target = args.target_ms or float(np.quantile(lat, 0.25))
    prep = SupernetStrategy(_job(args, target_ms=target, engine=engine)).prepare()
    sizes = {k: len(getattr(prep.data, k)) for k in ("train", "val", "test")}
    print(f"  data: {sizes['train']} train / {sizes['val']} val / {sizes['test']} test images")
    out = Path(args.out or tempfile.mkdtemp(prefix="bench-dnas-"))
    t = time.perf_counter()
    strategy = SupernetStrategy(prep.job)
    report = strategy.run(prep, open_run(strategy, prep, out))
    detail = report[report["method"]]
    epoch_s = [row["seconds"] for row in _search_history(out)]
    supernet_ips = (sizes["train"] + sizes["val"]) / float(np.median(epoch_s))
    print(f"  target {target:.4f} ms (attainable {prep.min_ms:.4f}-{prep.max_ms:.4f}); search "
          f"{detail['search_seconds']:.0f} s, search + retrain + export {time.perf_counter() - t:.0f} s -> {out}")
    print(f"  supernet: {supernet_ips:.0f} images/s (weights on train + architecture on val, median epoch "
          f"{np.median(epoch_s):.1f} s)")
    winner_ips = _median_images_per_s(out / "train_history.csv")
    print(f"  found arch: predicted {report['predicted_ms']:.4f} ms, measured {report['measured_ms']:.4f} ms "
          f"({report['prediction_error_pct']:+.1f}%, clock {detail['timing']['clock']}), test accuracy "
          f"{report['accuracy']:.4f}, onnx max abs diff {report['onnx_max_abs_diff']:.1e}; child training "
          f"{winner_ips:.0f} images/s")
    lo, hi = 0.9 * report["predicted_ms"], 1.1 * report["predicted_ms"]
    randoms = []
    for _ in range(20000):
        arch = prep.space.sample(rng)
        if lo <= prep.lm.predict(prep.space, arch) <= hi:
            randoms.append(arch)
        if len(randoms) == args.randoms:
            break
    while len(randoms) < args.randoms:  # rare latencies: random logits, most probable arch inside the band
        with torch.no_grad():
            prep.dist.logits.normal_()
        found = most_probable_in_band(prep.terms, lo, hi)
        randoms.append(prep.dist.arch_from_indices(*found))
    accs = []
    for i, arch in enumerate(randoms):
        rep = _train_measure(prep, prep.space, arch, out / "randoms", f"random{i}_")
        accs.append(rep["accuracy"])
        print(f"  random arch {i + 1}: predicted {prep.lm.predict(prep.space, arch):.4f} ms, measured "
              f"{rep['measured_ms']:.4f} ms, test accuracy {rep['accuracy']:.4f}, {rep['images_per_s']:.0f} images/s",
              flush=True)
    width, fbnet_ms = _fbnet_a_at(prep, report["measured_ms"], args.fbnet_a_widths)
    space_a = load_space("fbnet_a", resolution=prep.space.resolution, width_multiplier=width,
                         classes=prep.space.classes, in_channels=prep.space.in_channels)
    rep_a = _train_measure(prep, space_a, space_a.fixed_arch(), out / "fbnet_a", "")
    print(f"  FBNet-A x{width:g} (measured {fbnet_ms:.4f} ms untrained, {rep_a['measured_ms']:.4f} ms trained): "
          f"test accuracy {rep_a['accuracy']:.4f}, {rep_a['images_per_s']:.0f} images/s")
    print(f"  DMasking arch {report['accuracy']:.4f} @ {report['measured_ms']:.4f} ms vs random archs mean "
          f"{np.mean(accs):.4f} (std {np.std(accs):.4f}, best {np.max(accs):.4f}, n={len(accs)}) and FBNet-A "
          f"x{width:g} {rep_a['accuracy']:.4f} @ {rep_a['measured_ms']:.4f} ms; beats the random mean: "
          f"{report['accuracy'] > np.mean(accs)}, beats FBNet-A: {report['accuracy'] > rep_a['accuracy']}")
    print(f"  took {time.perf_counter() - begin:.0f} s in all")


def _search_history(out: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(out / "history.csv").to_dict("records")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="cost,memory,alpha,quality")
    ap.add_argument("--device", default="local-cpu")
    ap.add_argument("--tables-dir", default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--width", type=float, default=0.25, help="width of the alpha / quality searches")
    ap.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5], help="widths of the cost figures")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=8, help="search epochs")
    ap.add_argument("--final-epochs", type=int, default=10)
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.3, 1.0, 3.0, 10.0])
    ap.add_argument("--target-ms", type=float, default=None, help="quality target (default: the 25th percentile "
                                                                    "of random archs' latency)")
    ap.add_argument("--randoms", type=int, default=5)
    ap.add_argument("--dataset", default="digits", help="quality: digits, npz:FILE or folder:DIR (Fashion-MNIST: "
                                                        "benchmarks/make_fashion_mnist.py --all)")
    ap.add_argument("--augment", default="none", help="quality: the recipe's augmentation")
    ap.add_argument("--threads", type=int, default=None, help="quality: training threads (default: all cores)")
    ap.add_argument("--loader-workers", type=int, default=0, help="quality: DataLoader processes")
    ap.add_argument("--fbnet-a-widths", type=float, nargs="+", default=[0.25, 0.35, 0.5, 0.75, 1.0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.memory_child:
        _memory_child(args.memory_child, args.batch)
        return
    sections = {"cost": bench_cost, "memory": bench_memory, "alpha": bench_alpha, "quality": bench_quality}
    for name in args.only.split(","):
        sections[name](args)


if __name__ == "__main__":
    main()
