"""BatchBALD's joint state of the chosen rows, and the scores of every candidate given it.

BatchBALD (Kirsch et al. 2019) scores a batch A by the mutual information between its labels and the
sub-network, a(A) = H(y_A) - sum_{i in A} E_t H(y_i | t), and grows A greedily. With the chosen rows'
label configurations c (exactly all C^n of them, or M sampled ones) the joint entropy splits by the
chain rule:

    H(y_A, y) = H(y_A) + sum_c w_c H(y | y_A = c),   p(y = j | y_A = c) = sum_t W[t, c] p_t(j)

where ``w_c = p(y_A = c)`` and ``W[t, c] = p(t | y_A = c)`` is the posterior over the T sub-networks given
the configuration. So a step needs only (W, w): every candidate is scored independently of the others,
which is what lets a pool be scored in chunks, on disk, or as shards on many workers (broadcast the
state, score each shard, keep the best candidate) with the same numbers.

Exact while C^n x T fits ``joint_budget`` values. Past it, M configurations are drawn from p(y_A) by
ancestral sampling (each drawn configuration extended by a label drawn from p(y | y_A = c)), identical
draws merged with their counts as weights. The sum over c is then a mean over M independent draws of
H(y | y_A = c), which lies in [0, log C]: unbiased, with a standard error of at most log(C) / (2 sqrt(M))
(Popoviciu's bound on the standard deviation of a bounded variable), and by Hoeffding off by more than
log(C) sqrt(ln(2 / delta) / (2 M)) with probability at most delta.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from mcdropout.acquisition._scores import entropy

TINY32 = np.finfo(np.float32).tiny


@dataclass(frozen=True)
class JointState:
    """The chosen rows' labels as a distribution over configurations (see the module's text).

    ``posterior``: (T, K) float64, column c = p(t | y_A = c); ``weights``: (K,) p(y_A = c) (exact) or the
    share of the M draws that came out as c (sampled); ``joint_entropy``: H(y_A) (exact, or each step's
    estimate added up); ``expected_entropy``: sum over chosen rows of E_t H(y_i | t); ``draws``: 0 while
    exact, else M. Small and picklable: this is what a sharded step broadcasts.
    """

    posterior: np.ndarray
    weights: np.ndarray
    joint_entropy: float = 0.0
    expected_entropy: float = 0.0
    draws: int = 0
    chosen: int = 0

    @classmethod
    def empty(cls, samples: int) -> JointState:
        """No row chosen yet: one configuration (the empty one), every sub-network equally likely."""
        return cls(np.full((samples, 1), 1.0 / samples), np.ones(1))

    @property
    def exact(self) -> bool:
        return self.draws == 0

    @property
    def configurations(self) -> int:
        return self.weights.shape[0]

    @functools.cached_property
    def _posterior32(self) -> np.ndarray:
        return self.posterior.astype(np.float32)

    def conditional(self, probs: np.ndarray) -> np.ndarray:
        """p(y_r = j | y_A = c) for candidate rows ``probs`` (rows, T, C): an array (rows, C, K), float64."""
        probs = np.asarray(probs, dtype=np.float64)
        rows, samples, classes = probs.shape
        flat = np.ascontiguousarray(probs.transpose(0, 2, 1)).reshape(rows * classes, samples) @ self.posterior
        return flat.reshape(rows, classes, -1)

    def conditional_entropy(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per candidate: sum_c w_c H(y_r | y_A = c), and the standard error of that mean over draws
        (zeros while exact).

        The (rows x C x K) work runs in float32, one matrix product and one logarithm per value, which is
        where a step's time goes; each candidate's sum over configurations is float64. The entropies are
        then good to about 1e-6 nats relative, far below the gaps between candidates that decide a pick."""
        rows, samples, classes = probs.shape
        flat = np.ascontiguousarray(np.asarray(probs, dtype=np.float32).transpose(0, 2, 1))
        conditional = flat.reshape(rows * classes, samples) @ self._posterior32  # (rows * C, K)
        logs = np.maximum(conditional, TINY32)
        np.log(logs, out=logs)
        logs *= conditional
        per_configuration = -logs.reshape(rows, classes, -1).sum(axis=1, dtype=np.float64)  # (rows, K)
        mean = per_configuration @ self.weights
        if self.exact:
            return mean, np.zeros_like(mean)
        spread = np.maximum((per_configuration ** 2) @ self.weights - mean ** 2, 0.0)
        return mean, np.sqrt(spread / max(self.draws - 1, 1))

    def scores(self, probs: np.ndarray, expected_entropy: np.ndarray) -> np.ndarray:
        """BatchBALD of the chosen rows plus each candidate: a(A + {r}) for rows ``probs`` (rows, T, C),
        given each candidate's E_t H(y_r | t) (``RowScores.expected_entropy``)."""
        conditional, _ = self.conditional_entropy(probs)
        return self.joint_entropy + conditional - self.expected_entropy - np.asarray(expected_entropy)

    def chunk_rows(self, samples: int, classes: int, budget_bytes: int) -> int:
        """How many candidates to score at once within ``budget_bytes`` of float64 work arrays."""
        per_row = 4 * samples * classes * 2 + 4 * self.configurations * classes * 2 + 16 * self.configurations
        return max(1, budget_bytes // per_row)

    def extend(self, probs: np.ndarray, expected_entropy: float, *, joint_budget: int, draws: int,
               rng: np.random.Generator) -> JointState:
        """The state once the row with per-sample probabilities ``probs`` (T, C) is chosen too.

        Exact while the new table's K * C x T values fit ``joint_budget``; else (or once sampled) each
        of the ``draws`` configurations gets one more label drawn from p(y | y_A = c), using ``rng``.
        """
        probs = np.asarray(probs, dtype=np.float64)
        samples, classes = probs.shape
        conditional = self.conditional(probs[None])[0].T  # (K, C)
        gained = float(entropy(conditional) @ self.weights)
        exact = self.exact and self.configurations * classes * samples <= joint_budget
        if exact:
            counts = None
            parents, labels = np.nonzero(self.weights[:, None] * conditional > 0)
            weights = self.weights[parents] * conditional[parents, labels]
        else:
            if self.exact:  # first sampled step: M draws from the exact p(y_A)
                parent_counts = rng.multinomial(draws, self.weights / self.weights.sum())
            else:
                parent_counts = np.rint(self.weights * self.draws).astype(np.int64)
            rows = np.flatnonzero(parent_counts)
            conditional_rows = conditional[rows]
            conditional_rows = conditional_rows / conditional_rows.sum(axis=1, keepdims=True)
            counts = rng.multinomial(parent_counts[rows], conditional_rows)  # (parents, C)
            keep_parent, labels = np.nonzero(counts)
            parents = rows[keep_parent]
            counts = counts[keep_parent, labels]
            weights = counts / draws
        posterior = self.posterior[:, parents] * probs[:, labels]
        posterior /= posterior.sum(axis=0, keepdims=True)
        return JointState(posterior, weights, self.joint_entropy + gained, self.expected_entropy + expected_entropy,
                          0 if exact else draws, self.chosen + 1)


def sampling_error_bound(classes: int, draws: int, delta: float) -> float:
    """Hoeffding: a sampled conditional entropy is within this of its exact value with probability 1 - delta."""
    return math.log(classes) * math.sqrt(math.log(2.0 / delta) / (2.0 * draws))
