"""Streaming statistics over MC samples, and the prediction objects they make.

Accumulators merge each chunk's statistics in float64 with Chan et al.'s
parallel update, so memory does not grow with T and the result does not depend
on how samples were chunked (up to float64 rounding).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy import stats

from mcdropout.errors import InputError


Index = slice | torch.Tensor


class _Moments:
    """Per-row count, mean and population variance of a (rows, *shape) quantity.

    Storage comes with the first update; when that update holds every row (one
    chunk answered the whole call, the usual case for small requests) its
    tensors become the storage as they are, with no zero-filled copy.
    """

    def __init__(self, rows: int, shape: tuple[int, ...], device: torch.device) -> None:
        self.rows, self.shape, self.device = rows, shape, device
        self.count: torch.Tensor | None = None
        self.mean: torch.Tensor | None = None
        self.variance: torch.Tensor | None = None  # divided by the count, as MC dropout's predictive moments

    def update(self, index: Index, values: torch.Tensor, fresh: bool = False) -> None:
        """Merge ``values`` of shape (samples, rows_in_index, *shape); ``fresh``: those rows have none yet."""
        n_b = values.shape[0]
        variance_b, mean_b = _variance_mean(values)
        if self.count is None:
            if isinstance(index, slice) and index == slice(0, self.rows):
                self.mean, self.variance = mean_b, variance_b
                self.count = torch.full((self.rows,), n_b, dtype=torch.int64, device=self.device)
                return
            self.count = torch.zeros(self.rows, dtype=torch.int64, device=self.device)
            self.mean = torch.zeros(self.rows, *self.shape, dtype=torch.float64, device=self.device)
            self.variance = torch.zeros(self.rows, *self.shape, dtype=torch.float64, device=self.device)
        if fresh:
            self.mean[index], self.variance[index], self.count[index] = mean_b, variance_b, n_b
            return
        n_a = self.count[index].to(torch.float64).reshape(-1, *([1] * (values.dim() - 2)))
        total = n_a + n_b
        delta = mean_b - self.mean[index]
        self.mean[index] = self.mean[index] + delta * (n_b / total)
        m2 = self.variance[index] * n_a + variance_b * n_b + delta.square_() * (n_a * n_b / total)
        self.variance[index] = m2 / total
        self.count[index] += n_b

    def standard_error(self) -> torch.Tensor:
        """Monte Carlo standard error of the mean."""
        return (self.variance / self.count.reshape(-1, *([1] * (self.variance.dim() - 1))).clamp(min=1)).sqrt()


def _variance_mean(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Population variance and mean over dim 0, in float64, in two passes.

    ``torch.var_mean`` over the leading
    dimension runs 2.5-4x slower on the CPU than a mean and a mean of squared deviations once a sample
    holds more than a few dozen values (64 rows x 10 classes: 293 against 70 us); below that its single
    call is the cheaper one.
    """
    values = values.to(torch.float64)
    if math.prod(values.shape[1:]) < 64:
        return torch.var_mean(values, dim=0, correction=0)
    mean = values.mean(dim=0)
    deviation = values - mean
    return deviation.mul_(deviation).mean(dim=0), mean


@dataclass(frozen=True)
class RegressionPrediction:
    """Predictive distribution of a regression model; tensors have the batch dimension first.

    ``variance = epistemic + aleatoric``: epistemic is the variance of the T
    sampled means, aleatoric is 1/tau or the mean of a heteroscedastic head's
    variances (zero when the model gives neither).
    """

    mean: torch.Tensor
    epistemic: torch.Tensor
    aleatoric: torch.Tensor
    num_samples: torch.Tensor
    seed: int
    samples: torch.Tensor | None = None

    @property
    def variance(self) -> torch.Tensor:
        return self.epistemic + self.aleatoric

    @property
    def std(self) -> torch.Tensor:
        return self.variance.sqrt()

    def interval(self, level: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
        """Central interval of the Gaussian with the predictive mean and variance."""
        return normal_interval(self.mean, self.std, level)


@dataclass(frozen=True)
class ClassificationPrediction:
    """Predictive distribution of a classifier; tensors have the batch dimension first.

    ``entropy`` is the entropy of the mean probabilities (total uncertainty),
    ``expected_entropy`` the mean entropy of the samples (aleatoric), and
    ``mutual_information`` their difference (epistemic; BALD's score).
    ``variation_ratio`` is the share of samples whose top class is not the mode.
    """

    probs: torch.Tensor
    entropy: torch.Tensor
    expected_entropy: torch.Tensor
    variation_ratio: torch.Tensor
    num_samples: torch.Tensor
    seed: int
    samples: torch.Tensor | None = None

    @property
    def label(self) -> torch.Tensor:
        return self.probs.argmax(dim=-1)

    @property
    def mutual_information(self) -> torch.Tensor:
        return (self.entropy - self.expected_entropy).clamp(min=0.0)


def normal_interval(mean, std, level: float):
    """Central ``level`` interval of N(mean, std^2) for arrays or tensors: (lower, upper)."""
    if not 0.0 < level < 1.0:
        raise InputError(f"interval level must be in (0, 1), got {level}")
    half_width = _normal_quantile(0.5 + level / 2.0) * std
    return mean - half_width, mean + half_width


@functools.lru_cache(maxsize=64)
def _normal_quantile(probability: float) -> float:
    """scipy's standard normal quantile, cached: servers ask for the same few levels again and again."""
    return float(stats.norm.ppf(probability))


def _host(result: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``Tensor.cpu`` for results on another device than ``result``'s; nothing for those on the CPU: each
    ``.cpu()``, and each read of a ``device.type``, is a call into torch all the same, and with cold caches
    the first one costs 10-30 us (``is_cpu`` is read on the CPU path anyway)."""
    return _unchanged if result.is_cpu else torch.Tensor.cpu


def _unchanged(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


class RegressionAccumulator:
    def __init__(self, rows: int, shape: tuple[int, ...], device: torch.device, tau: float | None) -> None:
        self.moments = _Moments(rows, shape, device)
        self.noise = _Moments(rows, shape, device)  # heteroscedastic variances, when the model gives them
        self.tau = tau
        self.heteroscedastic = False

    def update(self, index: Index, outputs, fresh: bool = False) -> torch.Tensor:
        """Merge (samples, rows, *shape) outputs; returns the per-sample values kept as raw samples."""
        if isinstance(outputs, tuple):
            mean, log_variance = outputs
            self.heteroscedastic = True
            self.noise.update(index, log_variance.to(torch.float64).exp(), fresh)
        else:
            mean = outputs
        self.moments.update(index, mean, fresh)
        return mean

    def converged(self, tolerance: float) -> torch.Tensor:
        """Rows whose MC standard error of the mean is below ``tolerance`` x predictive std."""
        error = self.moments.standard_error()
        std = (self.moments.variance + self._aleatoric()).sqrt()
        return (error <= tolerance * std).flatten(1).all(dim=1)

    def spread(self) -> torch.Tensor:
        return self.moments.variance

    def saturated(self) -> bool:
        return False

    def _aleatoric(self) -> torch.Tensor:
        if self.heteroscedastic:
            return self.noise.mean
        if self.tau is not None:
            return torch.full_like(self.moments.mean, 1.0 / self.tau)
        return torch.zeros_like(self.moments.mean)

    def result(self, seed: int, samples: torch.Tensor | None) -> RegressionPrediction:
        host = _host(self.moments.mean)
        return RegressionPrediction(
            mean=host(self.moments.mean),
            epistemic=host(self.moments.variance),
            aleatoric=host(self._aleatoric()),
            num_samples=host(self.moments.count),
            seed=seed,
            samples=samples,
        )


class ClassificationAccumulator:
    def __init__(self, rows: int, classes: int, device: torch.device, temperature: float | None = None) -> None:
        self.temperature = temperature  # a calibrated bundle's: divides every sample's logits before the softmax
        self.moments = _Moments(rows, (classes,), device)
        self.entropy_sum = torch.zeros(rows, dtype=torch.float64, device=device)
        self.votes = torch.zeros(rows, classes, dtype=torch.int64, device=device)

    def update(self, index: Index, logits: torch.Tensor, fresh: bool = False) -> torch.Tensor:
        if self.temperature is not None:
            logits = logits.to(torch.float64) / self.temperature
        probs, log_probs, labels = softmax_parts(logits)
        samples, rows, classes = probs.shape
        self.moments.update(index, probs, fresh)
        self.entropy_sum[index] -= (probs * log_probs).sum(dim=(0, 2))
        # Each sample's top class counted per row in one scatter, not through a one-hot tensor.
        ones = torch.ones((), dtype=torch.int64, device=labels.device).expand(rows, samples)
        votes = torch.zeros(rows, classes, dtype=torch.int64, device=labels.device)
        self.votes[index] += votes.scatter_add_(1, labels.view(samples, rows).t(), ones)
        return probs

    def converged(self, tolerance: float) -> torch.Tensor:
        """Rows whose MC standard error of every class probability is below ``tolerance``."""
        return (self.moments.standard_error() <= tolerance).all(dim=1)

    def spread(self) -> torch.Tensor:
        return self.moments.variance

    def saturated(self) -> bool:
        """Every row's probability is all on one class, in float64: samples can then come out identical
        because the model is certain (logits hundreds apart), not because dropout has no effect."""
        return bool((self.moments.mean.max(dim=1).values == 1.0).all())

    def result(self, seed: int, samples: torch.Tensor | None) -> ClassificationPrediction:
        count = self.moments.count.to(torch.float64)
        probs = self.moments.mean
        host = _host(probs)
        return ClassificationPrediction(
            probs=host(probs),
            entropy=host(_entropy(probs)),
            expected_entropy=host(self.entropy_sum / count),
            variation_ratio=host(1.0 - self.votes.max(dim=1).values / count),
            num_samples=host(self.moments.count),
            seed=seed,
            samples=samples,
        )


def to_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension in float64; one logit per row means a sigmoid."""
    return softmax_parts(logits)[0]


def softmax_parts(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities, log-probabilities (float64) and the top class over the last dimension.

    One logit z per row means a sigmoid: the softmax of (0, z). Spelled out from one max (values
    and indices together), since on the CPU torch's softmax, argmax and xlogy over a last
    dimension of 10 classes each cost several times an element-wise pass (64 x 64 x 10 float64:
    softmax 560 us, this 160 us).
    """
    logits = logits.to(torch.float64)
    if logits.shape[-1] == 1:
        logits = torch.cat([torch.zeros_like(logits), logits], dim=-1)
    top, labels = logits.max(dim=-1, keepdim=True)
    shifted = logits - top
    exp = shifted.exp()
    total = exp.sum(dim=-1, keepdim=True)
    probs = exp.div_(total)
    # Clamped: a -inf logit (a masked class) has probability 0, and 0 x -inf would make its entropy NaN.
    log_probs = shifted.sub_(total.log_()).clamp_(min=torch.finfo(torch.float64).min)
    return probs, log_probs, labels
