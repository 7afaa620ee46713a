"""Per-row scores of a pool's per-sample class probabilities, and the one-pass ways of choosing from them.

Every function here takes probabilities of shape (rows, T, C): row r's class probabilities under sample t
(the T sub-networks the engine's seed picked, the same for every row). Entropies are in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcdropout.errors import InputError

TINY = np.finfo(np.float64).tiny


def entropy(probs: np.ndarray, axis: int = -1) -> np.ndarray:
    """-sum p log p over ``axis`` (0 log 0 = 0), in float64."""
    probs = np.asarray(probs, dtype=np.float64)
    return -(probs * np.log(np.maximum(probs, TINY))).sum(axis=axis)


@dataclass(frozen=True)
class RowScores:
    """Each row's uncertainty, from its T per-sample probabilities.

    ``entropy`` is H[mean_t p_t] (total), ``expected_entropy`` mean_t H[p_t] (aleatoric), ``bald`` their
    difference, the mutual information between the row's label and the sub-network (Houlsby et al. 2011),
    ``margin`` 1 minus the gap between the two most probable classes of the mean probabilities (1: a tie).
    """

    bald: np.ndarray
    entropy: np.ndarray
    expected_entropy: np.ndarray
    margin: np.ndarray

    @classmethod
    def of(cls, probs: np.ndarray) -> RowScores:
        probs = np.asarray(probs, dtype=np.float64)
        mean = probs.mean(axis=1)
        total = entropy(mean)
        expected = entropy(probs).mean(axis=1)
        top_two = -np.partition(-mean, 1, axis=-1)[:, :2] if mean.shape[-1] > 1 else np.pad(mean, ((0, 0), (0, 1)))
        return cls(bald=np.maximum(total - expected, 0.0), entropy=total, expected_entropy=expected,
                   margin=1.0 - (top_two[:, 0] - top_two[:, 1]))

    @classmethod
    def concatenate(cls, parts: list[RowScores]) -> RowScores:
        if not parts:
            empty = np.zeros(0)
            return cls(empty, empty, empty, empty)
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in
                     ("bald", "entropy", "expected_entropy", "margin")))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` rows with the highest scores, best first; ties go to the lower row index."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64)))
    return order[:k]


def gumbel_top_k(log_weights: np.ndarray, k: int, beta: float, rng: np.random.Generator) -> np.ndarray:
    """``k`` rows drawn without replacement with probability proportional to exp(beta * log_weights),
    through the Gumbel-top-k trick: the top k of beta * log_weights + Gumbel(0, 1) noise, in draw order
    (Kirsch et al. 2023, "Stochastic Batch Acquisition"). One Gumbel draw per row, in row order."""
    noise = rng.gumbel(size=len(log_weights))
    return top_k(beta * np.asarray(log_weights, dtype=np.float64) + noise, k)


def stochastic_log_weights(method: str, scores: np.ndarray) -> np.ndarray:
    """log of each row's (unnormalised) chance of being drawn first: ``softmax``: the score itself;
    ``power``: log score (a score of 0 is never drawn while others are left); ``softrank``: -log rank
    (rank 1 = highest score; ties ranked by row index)."""
    scores = np.asarray(scores, dtype=np.float64)
    if method == "softmax":
        return scores
    if method == "power":
        with np.errstate(divide="ignore"):
            return np.log(np.maximum(scores, 0.0))
    if method == "softrank":
        ranks = np.empty(len(scores))
        ranks[top_k(scores, len(scores))] = np.arange(1, len(scores) + 1)
        return -np.log(ranks)
    raise InputError(f"unknown stochastic method {method!r}; expected power, softmax or softrank")
