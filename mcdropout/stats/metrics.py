"""Scores for predictive distributions: lower is better except coverage, accuracy and AUROC.

Every function takes numpy arrays or tensors with the batch dimension first and
returns a float averaged over rows (and outputs). Values they cannot score (empty,
shapes that differ, a non-positive variance) raise :class:`mcdropout.errors.InputError`,
a ``ValueError``.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike  # tensors qualify too: they convert through __array__
from scipy import special, stats

from mcdropout.errors import InputError


def _array(values: ArrayLike, name: str) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise InputError(f"{name} is empty")
    return array


def _same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise InputError("shapes differ: " + ", ".join(f"{n} {s}" for n, s in shapes.items()))


def rmse(y: ArrayLike, mean: ArrayLike) -> float:
    y, mean = _array(y, "y"), _array(mean, "mean")
    _same_shape(y=y, mean=mean)
    return float(np.sqrt(np.mean((y - mean) ** 2)))


def gaussian_nll(y: ArrayLike, mean: ArrayLike, variance: ArrayLike) -> float:
    """Mean negative log density of y under N(mean, variance)."""
    y, mean, variance = _array(y, "y"), _array(mean, "mean"), _array(variance, "variance")
    _same_shape(y=y, mean=mean, variance=variance)
    if np.any(variance <= 0):
        raise InputError("variance must be positive")
    return float(-np.mean(stats.norm.logpdf(y, loc=mean, scale=np.sqrt(variance))))


def mc_log_likelihood(y: ArrayLike, samples: ArrayLike, tau: float) -> float:
    """Gal & Ghahramani's test log-likelihood: log-mean-exp over T sampled means.

    ``samples`` has shape (rows, T) or (rows, T, outputs) matching ``y`` of shape
    (rows,) or (rows, outputs); ``tau`` is the model precision in y's units.
    """
    y, samples = _array(y, "y"), _array(samples, "samples")
    if samples.shape[:1] + samples.shape[2:] != y.shape:
        raise InputError(f"samples of shape {samples.shape} do not match y of shape {y.shape} as (rows, T, ...)")
    if tau <= 0:
        raise InputError(f"tau must be positive, got {tau}")
    log_density = -0.5 * tau * (np.expand_dims(y, 1) - samples) ** 2
    per_row = special.logsumexp(log_density, axis=1) - math.log(samples.shape[1])
    return float(np.mean(per_row - 0.5 * math.log(2 * math.pi) + 0.5 * math.log(tau)))


def interval_coverage(y: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> float:
    """Share of y inside [lower, upper]."""
    y, lower, upper = _array(y, "y"), _array(lower, "lower"), _array(upper, "upper")
    _same_shape(y=y, lower=lower, upper=upper)
    return float(np.mean((y >= lower) & (y <= upper)))


def interval_score(y: ArrayLike, lower: ArrayLike, upper: ArrayLike, level: float) -> float:
    """Winkler's interval score of central ``level`` intervals (Gneiting & Raftery, 2007, eq. 43).

    The width, plus 2 / alpha times how far y falls outside, with alpha = 1 - level: a proper score, so
    an interval cannot gain by being too narrow or too wide. Lower is better; in y's units.
    """
    if not 0.0 < level < 1.0:
        raise InputError(f"level must be in (0, 1), got {level}")
    y, lower, upper = _array(y, "y"), _array(lower, "lower"), _array(upper, "upper")
    _same_shape(y=y, lower=lower, upper=upper)
    penalty = 2.0 / (1.0 - level)
    below, above = np.maximum(lower - y, 0.0), np.maximum(y - upper, 0.0)
    return float(np.mean(upper - lower + penalty * (below + above)))


def crps_gaussian(y: ArrayLike, mean: ArrayLike, std: ArrayLike) -> float:
    """Continuous ranked probability score of N(mean, std^2), closed form (Gneiting et al., 2005)."""
    y, mean, std = _array(y, "y"), _array(mean, "mean"), _array(std, "std")
    _same_shape(y=y, mean=mean, std=std)
    if np.any(std <= 0):
        raise InputError("std must be positive")
    z = (y - mean) / std
    score = std * (z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi))
    return float(np.mean(score))


def _classes(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    probs = _array(probs, "probs")
    labels = _array(labels, "labels")
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise InputError(f"expected probs (rows, classes) and labels (rows,), got {probs.shape} and {labels.shape}")
    if np.any(labels != np.round(labels)) or labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise InputError(f"labels must be class indices in [0, {probs.shape[1]})")
    return probs, labels.astype(np.int64)


def accuracy(probs: ArrayLike, labels: ArrayLike) -> float:
    probs, labels = _classes(probs, labels)
    return float(np.mean(probs.argmax(axis=1) == labels))


def classification_nll(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log probability of the true class."""
    probs, labels = _classes(probs, labels)
    chosen = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(chosen, np.finfo(np.float64).tiny, None))))


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean over rows of the squared distance between probs and the one-hot label."""
    probs, labels = _classes(probs, labels)
    onehot = np.eye(probs.shape[1])[labels]
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def reliability_bins(probs: ArrayLike, labels: ArrayLike, bins: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty equal-width confidence bin (lo, hi]: the mean confidence, the accuracy and the rows."""
    probs, labels = _classes(probs, labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    used, counts = np.unique(index, return_counts=True)
    return (np.array([confidence[index == b].mean() for b in used]),
            np.array([correct[index == b].mean() for b in used]), counts)


def ece(probs: ArrayLike, labels: ArrayLike, bins: int = 15) -> float:
    """Expected calibration error: |accuracy - confidence| over equal-width confidence bins (lo, hi]."""
    confidence, accuracy, counts = reliability_bins(probs, labels, bins)
    return float(np.sum(counts * np.abs(accuracy - confidence)) / np.sum(counts))


def auroc(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """Probability that an out-of-distribution input scores higher than an in-distribution one (ties count half)."""
    scores_in, scores_out = _array(scores_in, "scores_in").ravel(), _array(scores_out, "scores_out").ravel()
    u = stats.mannwhitneyu(scores_out, scores_in, alternative="two-sided").statistic
    return float(u / (len(scores_in) * len(scores_out)))


def risk_coverage(scores: ArrayLike, losses: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve of a selective predictor that accepts rows in order of increasing ``scores``
    (uncertainty) and suffers ``losses`` on them (1 for an error, 0 for a right answer; or any loss).

    Returns (coverage, risk): at each distinct score, the share of rows accepted with scores up to it and
    their mean loss. Rows with tied scores cannot be told apart, so they are accepted together.
    """
    accepted, risk = _accepted_risk(scores, losses)
    return accepted / accepted[-1], risk


def aurc(scores: ArrayLike, losses: ArrayLike) -> float:
    """Area under the risk-coverage curve (Geifman, Uziel & El-Yaniv, 2019): the mean over k = 1..n of the
    mean loss of the k least uncertain rows. Lower is better. Tied scores are accepted together: each of
    their positions takes the risk with all of them accepted (so the area does not depend on row order).
    """
    accepted, risk = _accepted_risk(scores, losses)
    return float(np.sum(np.diff(accepted, prepend=0) * risk) / accepted[-1])


def _accepted_risk(scores: ArrayLike, losses: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Rows accepted and their mean loss at each distinct score, in increasing order."""
    scores, losses = _array(scores, "scores").ravel(), _array(losses, "losses").ravel()
    _same_shape(scores=scores, losses=losses)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    cumulative = np.cumsum(losses[order])
    ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))  # the last row of each tie
    return ends + 1, cumulative[ends] / (ends + 1)
