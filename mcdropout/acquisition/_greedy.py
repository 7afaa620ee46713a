"""BatchBALD's greedy loop, written against two callables so that any engine can run the passes.

``scan(state, taken)`` scores every candidate given the chosen rows' :class:`JointState` and returns the
best :class:`Candidate` (a local loop over chunks, or a map over shards and a reduce with
:func:`better`); ``row(index)`` returns a chosen row's per-sample probabilities (T, C) and its expected
entropy. Random draws (sampled configurations) come from :func:`step_rng`, one generator per step, so a
run that is resumed from its first picks (``start``) draws what the whole run would have drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mcdropout.acquisition._joint import JointState
from mcdropout.errors import InputError


@dataclass(frozen=True)
class Candidate:
    """A candidate row and its BatchBALD score a(A + {row}), with the score's sampling standard error."""

    score: float
    row: int
    standard_error: float = 0.0


def better(a: Candidate | None, b: Candidate | None) -> Candidate | None:
    """The better of two candidates: the higher score, on a tie the lower row (a reduce that is order-free)."""
    if a is None:
        return b
    if b is None:
        return a
    if a.score != b.score:
        return a if a.score > b.score else b
    return a if a.row < b.row else b


def best_candidate(state: JointState, rows: np.ndarray, probs: np.ndarray, expected_entropy: np.ndarray,
                   taken: np.ndarray | set) -> Candidate | None:
    """The best of one chunk's candidates (``rows``: their pool indices) that are not ``taken``."""
    rows = np.asarray(rows)
    conditional, errors = state.conditional_entropy(probs)
    scores = state.joint_entropy + conditional - state.expected_entropy - np.asarray(expected_entropy)
    if len(taken):
        scores = np.where(np.isin(rows, np.fromiter(taken, dtype=np.int64) if isinstance(taken, set) else taken),
                          -np.inf, scores)
    if not len(scores) or not np.isfinite(scores).any():
        return None
    best = scores.max()
    index = np.flatnonzero(scores == best)
    index = index[np.argmin(rows[index])]
    return Candidate(float(best), int(rows[index]), float(errors[index]))


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of greedy step ``step`` (0-based) of a run seeded ``seed``."""
    return np.random.default_rng([seed, 0xBA7C, step])


@dataclass(frozen=True)
class Greedy:
    """The picks of a greedy run: rows in order, a(A_i) after each, its standard error, and how many
    steps were exact."""

    rows: np.ndarray
    scores: np.ndarray
    standard_errors: np.ndarray
    exact_steps: int


def batchbald(scan: Callable[[JointState, set], Candidate | None],
              row: Callable[[int], tuple[np.ndarray, float]], k: int, samples: int, *, seed: int,
              configurations: int, joint_budget: int, start: Sequence[int] = (),
              on_pick: Callable[[int, Candidate], None] | None = None) -> Greedy:
    """Greedy BatchBALD: ``k`` picks, the first ones ``start`` (replayed, not searched)."""
    state = JointState.empty(samples)
    taken: set[int] = set()
    rows, scores, errors = [], [], []
    exact_steps = 0
    for step in range(k):
        if step < len(start):
            index = int(start[step])
            if index in taken:
                raise InputError(f"start: row {index} is listed twice")
            probs, _ = row(index)
            _, error = state.conditional_entropy(probs[None])
            candidate = Candidate(float("nan"), index, float(error[0]))
        else:
            candidate = scan(state, taken)
            if candidate is None:
                raise InputError(f"k: asked for {k} rows, but only {step} candidates can be chosen")
        probs, expected = row(candidate.row)
        was_exact = state.exact
        state = state.extend(probs, expected, joint_budget=joint_budget, draws=configurations,
                             rng=step_rng(seed, step))
        exact_steps += int(was_exact)
        candidate = Candidate(state.joint_entropy - state.expected_entropy, candidate.row, candidate.standard_error)
        taken.add(candidate.row)
        rows.append(candidate.row)
        scores.append(candidate.score)
        errors.append(candidate.standard_error)
        if on_pick is not None:
            on_pick(step, candidate)
    return Greedy(np.asarray(rows, dtype=np.int64), np.asarray(scores), np.asarray(errors), exact_steps)
