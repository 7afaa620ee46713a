"""Training networks with dropout, and choosing the model precision tau."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import optimize, special
from torch import nn

from mcdropout.progress import Progress

LOSSES = ("mse", "gaussian_nll", "cross_entropy")


def fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    loss: str,
    epochs: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    description: str = "training",
    quiet: bool = False,
) -> list[float]:
    """Adam on mini-batches with dropout on; returns the mean training loss per epoch.

    Reproducible on one machine: the seed fixes initial shuffles and dropout masks.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {', '.join(LOSSES)}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.as_tensor(x)
    targets = torch.as_tensor(y)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    history = []
    model.train()
    with Progress(epochs, description, "epoch", quiet=quiet) as progress:
        for _ in range(epochs):
            order = torch.randperm(len(inputs), generator=generator)
            total = 0.0
            for batch in order.split(batch_size):
                optimiser.zero_grad()
                value = _loss(model(inputs[batch]), targets[batch], loss)
                value.backward()
                optimiser.step()
                total += value.item() * len(batch)
            history.append(total / len(inputs))
            progress.update(1, loss=history[-1])
    model.eval()
    return history


def _loss(output, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":
        return F.mse_loss(output, target)
    if kind == "gaussian_nll":
        mean, log_variance = output
        return F.gaussian_nll_loss(mean, target, log_variance.exp(), full=True)
    return F.cross_entropy(output, target)


def fit_tau(samples: np.ndarray, y: np.ndarray) -> float:
    """The precision tau that maximises Gal & Ghahramani's MC log-likelihood of ``y``.

    ``samples`` holds the T sampled means per row, shape (rows, T, outputs), in
    the units of ``y`` (rows, outputs). The search spans e^-10 to e^10 times the
    inverse mean squared error, so it does not depend on y's units.
    """
    squared = (np.asarray(y, dtype=np.float64)[:, None] - np.asarray(samples, dtype=np.float64)) ** 2
    count = squared.shape[1]
    centre = -math.log(max(float(squared.mean()), 1e-300))

    def negative_log_likelihood(log_tau: float) -> float:
        tau = math.exp(log_tau)
        per_row = special.logsumexp(-0.5 * tau * squared, axis=1) - math.log(count)
        return -float(np.mean(per_row + 0.5 * log_tau - 0.5 * math.log(2 * math.pi)))

    result = optimize.minimize_scalar(negative_log_likelihood, bounds=(centre - 10, centre + 10), method="bounded")
    return float(math.exp(result.x))


def standardisation(values: np.ndarray, axis: tuple[int, ...] | int = 0) -> tuple[list[float], list[float]]:
    """Mean and std over ``axis`` (a constant column gets std 1, so it passes through unchanged)."""
    mean = np.mean(values, axis=axis, dtype=np.float64)
    std = np.std(values, axis=axis, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    return np.atleast_1d(mean).ravel().tolist(), np.atleast_1d(std).ravel().tolist()
