"""Accuracy predictors with a scikit-learn style interface: ``fit(X, y)``, ``predict(X)``.

``ArchRecipePredictor`` is FBNetV3's MLP predictor (Dai et al. 2021, arXiv 2006.02049): a shared encoder and a
head. ``pretrain(X, proxies)`` first teaches the encoder to predict free proxies (MACs, params, predicted latency)
on a large unlabelled pool; ``fit`` then replaces the head and fine-tunes on measured accuracy, the encoder frozen
for the first part of training and unfrozen after, with a Huber loss. Without ``pretrain`` it trains from scratch.

``predict_mean_std`` gives the ensemble's mean and spread (a deep ensemble, as BANANAS uses: the members differ in
their initialisation), the uncertainty behind NARS' acquisition.

``kendall_tau`` and ``cross_validated_tau`` report how well a predictor ranks held-out candidates.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import nn


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run small-model torch work on ``n`` threads (faster than many for tiny matrices), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def kendall_tau(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Kendall rank correlation (tau-b); NaN when either side is constant or fewer than 2 points."""
    predicted, actual = np.asarray(predicted, float), np.asarray(actual, float)
    if len(predicted) < 2 or np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        return float("nan")
    return float(kendalltau(predicted, actual).statistic)


def cross_validated_tau(make: Callable[[], object], x: np.ndarray, y: np.ndarray, folds: int = 5,
                        seed: int = 0) -> float:
    """Held-out Kendall tau of the pooled out-of-fold predictions of fresh predictors (``make()``)."""
    n = len(y)
    if n < 2 * folds:
        folds = max(2, n // 2)
    if n < 4:
        return float("nan")
    order = np.random.default_rng(seed).permutation(n)
    predicted = np.empty(n)
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        predicted[test] = make().fit(x[train], y[train]).predict(x[test])
    return kendall_tau(predicted, y)


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.encoder = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


class ArchRecipePredictor:
    """FBNetV3's MLP accuracy predictor over the joint arch x recipe encoding."""

    def __init__(self, hidden: tuple[int, ...] = (128, 128), *, epochs: int = 400, lr: float = 3e-3,
                 weight_decay: float = 1e-4, freeze_fraction: float = 0.5, pretrain_epochs: int = 60,
                 pretrain_batch: int = 256, ensemble: int = 5, seed: int = 0):
        self.hidden = tuple(hidden)
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.freeze_fraction = freeze_fraction
        self.pretrain_epochs, self.pretrain_batch = pretrain_epochs, pretrain_batch
        self.ensemble = ensemble
        self.seed = seed
        self._pretrained: list[dict] | None = None  # encoder state per ensemble member
        self._nets: list[_Net] = []
        self.pretrain_loss: float | None = None

    @property
    def is_pretrained(self) -> bool:
        return self._pretrained is not None

    # ---- proxy pretraining -----------------------------------------------------------------------------------
    def pretrain(self, x: np.ndarray, proxies: np.ndarray) -> "ArchRecipePredictor":
        """Train the encoder to predict the free proxies (log-scaled, standardised) of an unlabelled pool."""
        with torch_threads(1):
            return self._pretrain(x, proxies)

    def _pretrain(self, x: np.ndarray, proxies: np.ndarray) -> "ArchRecipePredictor":
        x_t = torch.as_tensor(np.asarray(x, np.float32))
        targets = np.log(np.maximum(np.asarray(proxies, np.float64), 1e-9))
        targets = (targets - targets.mean(0)) / np.maximum(targets.std(0), 1e-9)
        y_t = torch.as_tensor(targets, dtype=torch.float32)
        states, losses = [], []
        for member in range(self.ensemble):
            torch.manual_seed(self.seed * 1000 + member)
            net = _Net(x_t.shape[1], self.hidden, y_t.shape[1])
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            gen = torch.Generator().manual_seed(self.seed * 1000 + member)
            steps = self.pretrain_epochs * max(1, -(-len(x_t) // self.pretrain_batch))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
            for _ in range(self.pretrain_epochs):
                order = torch.randperm(len(x_t), generator=gen)
                for i in range(0, len(order), self.pretrain_batch):
                    idx = order[i:i + self.pretrain_batch]
                    loss = nn.functional.mse_loss(net(x_t[idx]), y_t[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
            with torch.no_grad():
                losses.append(float(nn.functional.mse_loss(net(x_t), y_t)))
            states.append({k: v.clone() for k, v in net.encoder.state_dict().items()})
        self._pretrained = states
        self.pretrain_loss = float(np.mean(losses))  # standardised MSE (1.0 = predicting the mean)
        return self

    # ---- fitting on measured labels --------------------------------------------------------------------------
    def fit(self, x: np.ndarray, y: np.ndarray) -> "ArchRecipePredictor":
        with torch_threads(1):
            return self._fit(x, y)

    def _fit(self, x: np.ndarray, y: np.ndarray) -> "ArchRecipePredictor":
        x_t = torch.as_tensor(np.asarray(x, np.float32))
        y = np.asarray(y, np.float64)
        self._mean, self._std = float(y.mean()), float(max(y.std(), 1e-9))
        y_t = torch.as_tensor((y - self._mean) / self._std, dtype=torch.float32)[:, None]
        self._nets = []
        for member in range(self.ensemble):
            torch.manual_seed(self.seed * 1000 + 500 + member)
            net = _Net(x_t.shape[1], self.hidden, 1)
            frozen_epochs = 0
            if self._pretrained is not None:
                net.encoder.load_state_dict(self._pretrained[member])
                frozen_epochs = int(self.freeze_fraction * self.epochs)
            head_opt = torch.optim.AdamW(net.head.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            all_opt = torch.optim.AdamW(net.parameters(), lr=self.lr if not frozen_epochs else self.lr / 3,
                                        weight_decay=self.weight_decay)
            for epoch in range(self.epochs):  # full batch: labels are few (tens to hundreds)
                opt = head_opt if epoch < frozen_epochs else all_opt
                loss = nn.functional.huber_loss(net(x_t), y_t, delta=1.0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            net.eval()
            self._nets.append(net)
        return self

    @torch.no_grad()
    def members(self, x: np.ndarray, batch: int = 65536) -> np.ndarray:
        """Each ensemble member's prediction (members x n), in objective units."""
        if not self._nets:
            raise RuntimeError("ArchRecipePredictor.predict called before fit")
        x = np.asarray(x, np.float32)
        out = np.empty((len(self._nets), len(x)))
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i:i + batch])
            out[:, i:i + batch] = torch.stack([net(xb)[:, 0] for net in self._nets]).numpy()
        return out * self._std + self._mean

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.members(x).mean(0)

    def predict_mean_std(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ensemble's mean and spread (the members' standard deviation): the uncertainty the acquisition
        sees, after ``nas.search.predict.acquisition.calibration`` has scaled it to the errors seen so far."""
        m = self.members(x)
        return m.mean(0), m.std(0)

    def clone_unfitted(self) -> "ArchRecipePredictor":
        """A fresh predictor with the same settings and the same pretrained encoder (for cross-validation)."""
        other = ArchRecipePredictor(self.hidden, epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                                    freeze_fraction=self.freeze_fraction, pretrain_epochs=self.pretrain_epochs,
                                    pretrain_batch=self.pretrain_batch, ensemble=self.ensemble, seed=self.seed)
        other._pretrained = self._pretrained
        return other
