"""How well a finished DMasking search's supernet ranks single archs: each trained arch of a comparison run as a one-hot
child of the supernet (its weights at the end of the search, batch statistics), its validation accuracy there
against its trained test accuracy. Prints a table and the rank correlations; asserts nothing.

    .venv/bin/python benchmarks/bench_supernet_ranking.py --out results/bench-compare [--images 4096]

``--out`` is a ``bench_compare.py`` folder: its ``models.csv`` names the trained archs (the searched winners and the
random archs, of the searched space; the fixed models are left out) and each of its searches (``search/``,
``flops/``) gives a supernet. The soft supernet mixes every op of a layer at a Gumbel temperature from 5 down to 1, so
its own validation accuracy is the mixture's: a child far below it is ranked on something else than what it would
train to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch
from scipy.stats import kendalltau, spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nas.arch.space import Arch  # noqa: E402
from nas.search.compare.runs import read_run  # noqa: E402
from nas.search.dnas.search import SupernetSearchSettings  # noqa: E402
from nas.search.dnas.strategy import SearchJob, SupernetStrategy, build_supernet  # noqa: E402
from nas.train.accelerator import resolve_accelerator  # noqa: E402
from nas.train.engine import Engine  # noqa: E402
from nas.train.training import set_dropout  # noqa: E402


def trained_archs(out: Path) -> dict[str, tuple[dict, float]]:
    """Label -> (arch, mean test accuracy over seeds) of every trained arch of the searched space."""
    models = pd.read_csv(out / "models.csv")
    found = {}
    for (_, label), group in models[models.kind.isin(["searched", "random"])].groupby(["run", "label"], sort=False):
        first = Path(group.model.iloc[0]).parent
        arch = json.loads((first / "arch.json").read_text())
        found[label] = (arch, float(group.accuracy.mean()))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench-compare")
    ap.add_argument("--images", type=int, default=4096, help="validation images each child is scored on")
    args = ap.parse_args()
    torch.set_num_threads(1)
    archs = trained_archs(args.out)
    folders = [f for f in ("search", "flops") if (args.out / f / "search_checkpoint.pt").is_file()]
    if not folders:
        raise SystemExit(f"{args.out}: no search_checkpoint.pt under search/ or flops/")
    # both searches of a comparison share the space, the data and its split: one preparation serves them
    run = read_run(args.out / folders[0])
    job = SearchJob(method="dmasking", space=run.space.name, device=run.device, dataset=run.dataset,
                    width=run.space.width_multiplier, resolution=run.space.resolution, seed=run.data_seed,
                    settings=SupernetSearchSettings(), engine=Engine(resolve_accelerator("cpu", "32", 1)))
    prep = SupernetStrategy(job).prepare()
    items = [prep.data.val[i] for i in range(min(args.images, len(prep.data.val)))]
    x = torch.stack([torch.as_tensor(item[0]) for item in items]).float()
    y = torch.as_tensor([int(item[1]) for item in items])
    for folder in folders:
        net = build_supernet(prep)
        net.load_state_dict(torch.load(args.out / folder / "search_checkpoint.pt", weights_only=True)["supernet"])
        net.train()  # batch statistics, as in the search
        set_dropout(net, 0.0)  # (no dropout: the same figures every run)
        rows = []
        with torch.no_grad():
            for label, (arch, accuracy) in archs.items():
                sample = prep.dist.one_hot(prep.space.validate(Arch.from_dict(arch)))
                correct = sum(int((net(x[i:i + 256], sample).argmax(1) == y[i:i + 256]).sum())
                              for i in range(0, len(y), 256))
                rows.append((label, correct / len(y), accuracy))
        print(f"supernet of {args.out / folder} ({len(y)} validation images)")
        for label, child, trained in sorted(rows, key=lambda r: -r[2]):
            print(f"  {label:24s} child accuracy in the supernet {child:.4f}   trained test accuracy {trained:.4f}")
        child, trained = [r[1] for r in rows], [r[2] for r in rows]
        print(f"  Spearman {spearmanr(child, trained)[0]:.2f}, Kendall {kendalltau(child, trained)[0]:.2f} over "
              f"{len(rows)} archs; the search's own last validation accuracy (the mixture) "
              f"{pd.read_csv(args.out / folder / 'history.csv').val_accuracy.iloc[-1]:.3f}")


if __name__ == "__main__":
    main()
