"""ChamNet's Gaussian-process accuracy predictor (Dai et al. 2019) with gpytorch, and expected improvement.

An exact GP with a constant mean and a scaled Matern-5/2 kernel, its hyperparameters fitted by maximising the exact
marginal log likelihood. ``predict`` is the posterior mean, ``predict_std`` the posterior standard deviation of the
latent function, for acquisition functions.

The kernel suits categorical inputs: given ``groups`` (the decision each feature column belongs to,
``DecisionSpace.feature_groups``), the features of one decision share one lengthscale. A categorical decision's
one-hot block then contributes 2 / lengthscale^2 to the squared distance when two candidates differ in it and 0 when
they agree, so the kernel is a function of the (weighted) Hamming distance between categorical choices, as in the
categorical kernels of COMBO / CoCaBO, with one lengthscale per decision rather than per option: fewer
hyperparameters to fit from tens of evaluations. Without ``groups``, one lengthscale per feature (plain ARD).
"""

from __future__ import annotations

import math

import gpytorch
import numpy as np
import torch
from scipy.stats import norm

from nas.search.predict.predictors import torch_threads


class GroupedMaternKernel(gpytorch.kernels.Kernel):
    """Matern-5/2 over feature columns whose lengthscales are tied within groups (one group per decision)."""

    has_lengthscale = True

    def __init__(self, groups: np.ndarray):
        groups = np.asarray(groups, int)
        super().__init__(ard_num_dims=int(groups.max()) + 1)
        self.register_buffer("groups", torch.as_tensor(groups, dtype=torch.long))

    def forward(self, x1, x2, diag=False, **params):
        scale = self.lengthscale[..., self.groups]  # one lengthscale per feature column, from its group's
        mean = x1.mean(dim=-2, keepdim=True)
        distance = self.covar_dist((x1 - mean) / scale, (x2 - mean) / scale, diag=diag, **params)
        return (1 + math.sqrt(5) * distance + 5.0 / 3.0 * distance ** 2) * torch.exp(-math.sqrt(5) * distance)


class _ExactGP(gpytorch.models.ExactGP):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, likelihood, nu: float, groups: np.ndarray | None):
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ConstantMean()
        if groups is None:
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.MaternKernel(nu=nu,
                                                                                           ard_num_dims=x.shape[1]))
        else:  # main effects (linear in the one-hot features) plus the interactions (Matern over decisions)
            self.covar_module = gpytorch.kernels.ScaleKernel(gpytorch.kernels.LinearKernel()) + \
                gpytorch.kernels.ScaleKernel(GroupedMaternKernel(groups))

    @property
    def matern(self):
        return self.covar_module.kernels[1].base_kernel if hasattr(self.covar_module, "kernels") else \
            self.covar_module.base_kernel

    def forward(self, x: torch.Tensor):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


class GPPredictor:
    """Exact GP regression (Matern kernel; lengthscales per decision with ``groups``, else per feature) with
    scikit-learn style ``fit``/``predict``/``predict_std``."""

    def __init__(self, *, iterations: int = 100, lr: float = 0.1, nu: float = 2.5, seed: int = 0,
                 groups: np.ndarray | None = None):
        self.iterations, self.lr, self.nu, self.seed = iterations, lr, nu, seed
        self.groups = None if groups is None else np.asarray(groups, int)
        self._model: _ExactGP | None = None
        self._factor: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit(self, x: np.ndarray, y: np.ndarray) -> "GPPredictor":
        with torch_threads(1):
            return self._fit(x, y)

    def _fit(self, x: np.ndarray, y: np.ndarray) -> "GPPredictor":
        torch.manual_seed(self.seed)
        x_t = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        y = np.asarray(y, np.float64)
        self._mean, self._std = float(y.mean()), float(max(y.std(), 1e-9))
        y_t = torch.as_tensor((y - self._mean) / self._std, dtype=torch.float64)
        likelihood = gpytorch.likelihoods.GaussianLikelihood(noise_constraint=gpytorch.constraints.GreaterThan(1e-4))
        if self.groups is not None and len(self.groups) != x_t.shape[1]:
            raise ValueError(f"GPPredictor: {len(self.groups)} feature groups for {x_t.shape[1]} features")
        model = _ExactGP(x_t, y_t, likelihood, self.nu, self.groups).double()
        # start lengthscales near the scale of the distances: features are in [0, 1], one-hot or positions
        n_scales = x_t.shape[1] if self.groups is None else int(self.groups.max()) + 1
        model.matern.lengthscale = torch.full((1, n_scales), math.sqrt(n_scales) / 2,
                                                                dtype=torch.float64)
        model.train()
        likelihood.train()
        opt = torch.optim.Adam(model.parameters(), lr=self.lr)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
        for _ in range(self.iterations):
            opt.zero_grad(set_to_none=True)
            loss = -mll(model(x_t), y_t)
            loss.backward()
            opt.step()
        model.eval()
        likelihood.eval()
        self._model, self._likelihood, self._factor = model, likelihood, None
        self.final_mll = float(-loss.detach())
        return self

    @torch.no_grad()
    def _posterior(self, x: np.ndarray, batch: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """The exact posterior of the latent function (mean, std) at ``x``, from the Cholesky factor of the
        training covariance: only the diagonal of the test covariance is computed, so a pool of any size costs
        one cross-covariance per batch."""
        if self._model is None:
            raise RuntimeError("GPPredictor.predict called before fit")
        model = self._model
        if self._factor is None:
            x_t, y_t = model.train_inputs[0], model.train_targets
            k = model.covar_module(x_t).to_dense() + self._likelihood.noise * torch.eye(len(x_t), dtype=x_t.dtype)
            chol = torch.linalg.cholesky(k + 1e-8 * torch.eye(len(x_t), dtype=x_t.dtype))
            alpha = torch.cholesky_solve((y_t - model.mean_module.constant)[:, None], chol)
            self._factor = (chol, alpha)
        chol, alpha = self._factor
        x_train = model.train_inputs[0]
        x = np.asarray(x)
        means, stds = [], []
        for i in range(0, len(x), batch):
            xb = torch.as_tensor(x[i:i + batch], dtype=torch.float64)
            cross = model.covar_module(xb, x_train).to_dense()
            v = torch.linalg.solve_triangular(chol, cross.T, upper=False)
            prior = model.covar_module(xb, diag=True)
            means.append((model.mean_module.constant + cross @ alpha[:, 0]).numpy())
            stds.append((prior - (v ** 2).sum(0)).clamp_min(0).sqrt().numpy())
        mean = np.concatenate(means) if means else np.zeros(0)
        std = np.concatenate(stds) if stds else np.zeros(0)
        return mean * self._std + self._mean, std * self._std

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._posterior(x)[0]

    def predict_std(self, x: np.ndarray) -> np.ndarray:
        return self._posterior(x)[1]

    def predict_mean_std(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._posterior(x)

    @property
    def lengthscales(self) -> np.ndarray:
        return self._model.matern.lengthscale.detach().numpy().ravel()

    def clone_unfitted(self) -> "GPPredictor":
        return GPPredictor(iterations=self.iterations, lr=self.lr, nu=self.nu, seed=self.seed, groups=self.groups)


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float, xi: float = 0.0) -> np.ndarray:
    """EI of maximising: E[max(f - best - xi, 0)] under N(mean, std^2); reduces to the gain when std is 0."""
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    gain = mean - best - xi
    safe = np.maximum(std, 1e-12)
    z = gain / safe
    ei = gain * norm.cdf(z) + safe * norm.pdf(z)
    return np.where(std > 1e-12, ei, np.maximum(gain, 0.0))
