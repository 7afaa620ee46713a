"""Choosing k rows of a pool from its per-sample class probabilities: every method, one entry point."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcdropout.acquisition import _scores
from mcdropout.acquisition._greedy import Candidate, batchbald, best_candidate, better
from mcdropout.acquisition._joint import JointState
from mcdropout.acquisition._scores import RowScores
from mcdropout.acquisition._source import Buffer, ProbabilitySource, iter_chunks
from mcdropout.errors import InputError

METHODS: tuple[str, ...] = ("batchbald", "bald", "power", "softmax", "softrank", "entropy", "margin", "random")
STOCHASTIC: tuple[str, ...] = ("power", "softmax", "softrank")
DEFAULT_CONFIGURATIONS = 1000


@dataclass(frozen=True)
class Acquisition:
    """The rows chosen from a pool, in the order chosen.

    ``indices``: pool row indices (0-based, int64). ``scores``: per pick; ``batchbald``: a(A_i), the
    BatchBALD (nats) of the first i picks together; ``bald``, ``entropy``, ``margin``: that row's score;
    ``power``, ``softmax``, ``softrank``, ``random``: that row's BALD. ``standard_errors``: per pick, the
    sampling standard error of the BatchBALD step (0 while exact, and for the other methods).
    ``bald``: every pool row's BALD (mutual information, nats). ``parameters``: the method's settings as run.
    """

    indices: np.ndarray
    scores: np.ndarray
    bald: np.ndarray
    method: str
    seed: int
    samples: int
    classes: int
    parameters: dict[str, Any] = field(default_factory=dict)
    standard_errors: np.ndarray | None = None
    exact_steps: int = 0

    def __len__(self) -> int:
        return len(self.indices)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able numbers: what a service or a file stores."""
        return {"indices": self.indices.tolist(), "scores": self.scores.tolist(), "method": self.method,
                "seed": self.seed, "samples": self.samples, "classes": self.classes, "parameters": self.parameters,
                "standard_errors": None if self.standard_errors is None else self.standard_errors.tolist(),
                "exact_steps": self.exact_steps}


def parse_budget(value: int | str) -> int:
    """Bytes from an int or a size like "256MB" (text is read by the engine's parser, which imports torch)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    from mcdropout.engine import parse_bytes  # noqa: PLC0415

    return parse_bytes(value)


def check_request(k: Any, method: Any, *, beta: Any = 1.0, candidates: Any = None,
                  configurations: Any = DEFAULT_CONFIGURATIONS, pool_rows: int | None = None) -> None:
    """Refuse bad settings before any pass runs, naming the field (``pool_rows``: the pool's size, where known)."""
    if method not in METHODS:
        raise InputError(f"method: unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InputError(f"k: expected a positive whole number of rows to choose, got {k!r}")
    if pool_rows is not None and k > pool_rows:
        raise InputError(f"k: asked for {k} rows from a pool of {pool_rows}")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not (math.isfinite(beta) and beta > 0):
        raise InputError(f"beta: expected a positive number (the stochastic methods' coldness), got {beta!r}")
    if candidates is not None and (isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer))
                                   or candidates < k):
        raise InputError(f"candidates: expected a whole number >= k ({k}) or None (every row), got {candidates!r}")
    if (isinstance(configurations, bool) or not isinstance(configurations, (int, np.integer))
            or configurations < 1):
        raise InputError(f"configurations: expected a positive whole number, got {configurations!r}")


def new_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**63))


def acquire_probabilities(
    probabilities: ProbabilitySource,
    k: int,
    method: str = "batchbald",
    *,
    seed: int | None = None,
    beta: float = 1.0,
    candidates: int | None = None,
    configurations: int = DEFAULT_CONFIGURATIONS,
    joint_budget: int | None = None,
    memory_budget: int | str = 256_000_000,
    spill_dir: str | os.PathLike | None = None,
    start: Sequence[int] = (),
    on_pick: Callable[[int, Candidate], None] | None = None,
) -> Acquisition:
    """Choose ``k`` rows of a pool from its per-sample class probabilities.

    ``probabilities``: an array (rows, T, C), or chunks of it in row order: an iterable (or a callable
    returning one) of :class:`Chunk` or of bare (rows, T, C) arrays. Sample t must be the same
    sub-network for every row (the engine's shared masks give that for one seed), so that joint
    entropies across rows and chunks are consistent. The chunks are read once.

    Methods: ``bald``, ``entropy``, ``margin``: the top k by that score. ``power``, ``softmax``,
    ``softrank``: k rows drawn without replacement with chances proportional to BALD^beta,
    exp(beta * BALD), rank^-beta (Kirsch et al. 2023). ``random``: uniform. ``batchbald``: greedy
    BatchBALD (Kirsch et al. 2019): exact while C^n x T joint values fit ``joint_budget`` (default
    ``configurations`` x T: exact while that costs no more than sampling), then ``configurations`` (M)
    sampled label configurations, each step's standard error at most log(C) / (2 sqrt(M)).

    ``candidates``: BatchBALD searches only the ``candidates`` rows of highest BALD (found in the one
    pass, kept in a bounded buffer); None searches every row. ``memory_budget``: BatchBALD's buffer of
    candidate probabilities stays in RAM up to half of it and spills to a float32 file in ``spill_dir``
    past that; each greedy step's work arrays take at most a quarter. ``start``: rows already chosen by
    an earlier run with the same seed and settings (BatchBALD only): replayed, then the run goes on, so
    a resumed run picks what an uninterrupted one would. ``on_pick(step, candidate)`` is called after
    each BatchBALD pick. ``seed`` drives every random draw (None draws one, reported in the result).
    """
    check_request(k, method, beta=beta, candidates=candidates, configurations=configurations)
    if start and method != "batchbald":
        raise InputError("start: only BatchBALD's greedy picks can be resumed; the other methods take one pass")
    if joint_budget is not None and (isinstance(joint_budget, bool) or not isinstance(joint_budget, int)
                                     or joint_budget < 1):
        raise InputError(f"joint_budget: expected a positive number of joint values (C^n x T), got {joint_budget!r}")
    budget = parse_budget(memory_budget)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                             or not 0 <= seed < 2**63):
        raise InputError(f"seed: expected a whole number from 0 to 2^63-1 or None, got {seed!r}")
    seed = new_seed() if seed is None else int(seed)
    collector = _Collector(method, candidates, budget // 2, spill_dir, score_bytes=budget // 8)
    try:
        for chunk in iter_chunks(probabilities, chunk_bytes=budget // 8):
            collector.add(chunk.offset, chunk.probs)
        rows = collector.rows
        if rows == 0:
            raise InputError("probabilities: the pool is empty")
        check_request(k, method, pool_rows=rows)
        samples, classes = collector.shape
        scores = collector.row_scores()
        parameters: dict[str, Any] = {}
        errors = None
        exact_steps = 0
        if method == "batchbald":
            joint_budget = configurations * samples if joint_budget is None else joint_budget
            parameters = {"configurations": configurations, "joint_budget": joint_budget, "candidates": candidates}
            greedy = _local_batchbald(collector, scores, k, samples, classes, seed=seed, configurations=configurations,
                                      joint_budget=joint_budget, work_bytes=budget // 4, start=start, on_pick=on_pick)
            indices, picked, errors, exact_steps = greedy.rows, greedy.scores, greedy.standard_errors, greedy.exact_steps
        else:
            indices, picked = _one_pass(method, scores, k, seed, beta)
            if method in STOCHASTIC:
                parameters = {"beta": float(beta), "score": "bald"}
            errors = np.zeros(len(indices))
        return Acquisition(indices=indices, scores=picked, bald=scores.bald, method=method, seed=seed,
                           samples=samples, classes=classes, parameters=parameters, standard_errors=errors,
                           exact_steps=exact_steps)
    finally:
        collector.close()


def _one_pass(method: str, scores: RowScores, k: int, seed: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    if method in ("bald", "entropy", "margin"):
        values = getattr(scores, method)
        indices = _scores.top_k(values, k)
        return indices.astype(np.int64), values[indices]
    rng = np.random.default_rng([seed, 0x5A3D])
    if method == "random":
        indices = rng.choice(len(scores.bald), size=k, replace=False)
    else:
        indices = _scores.gumbel_top_k(_scores.stochastic_log_weights(method, scores.bald), k, beta, rng)
    return indices.astype(np.int64), scores.bald[indices]


class _Collector:
    """One pass over the chunks: every row's scores, and for BatchBALD the candidates' probabilities
    (every row appended in order, or the ``candidates`` rows of highest BALD in fixed slots)."""

    def __init__(self, method: str, candidates: int | None, buffer_bytes: int, spill_dir, score_bytes: int) -> None:
        self.keep = method == "batchbald"
        self.score_bytes = score_bytes  # float64 work arrays of the per-row scores: a few per value
        self.candidates = candidates
        self.buffer_bytes = buffer_bytes
        self.spill_dir = spill_dir
        # the per-row arrays this method needs (8 bytes a row each), not the whole RowScores
        self.fields = ("bald",) + {"batchbald": ("expected_entropy",), "entropy": ("entropy",),
                                   "margin": ("margin",)}.get(method, ())
        self.scores: dict[str, list[np.ndarray]] = {name: [] for name in self.fields}
        self.rows = 0
        self.shape: tuple[int, int] = (0, 0)
        self.buffer: Buffer | None = None
        self.slot_rows = np.zeros(0, dtype=np.int64)  # prefilter: the pool row in each slot (-1: empty)
        self.slot_bald = np.zeros(0)

    def add(self, offset: int, probs: np.ndarray) -> None:
        step = max(1, self.score_bytes // (32 * probs.shape[1] * probs.shape[2]))
        row_scores = RowScores.concatenate([RowScores.of(probs[first:first + step])
                                            for first in range(0, len(probs), step)])
        for name in self.fields:
            self.scores[name].append(getattr(row_scores, name))
        self.rows = offset + len(probs)
        self.shape = probs.shape[1:]
        if not self.keep:
            return
        if self.buffer is None:
            self.buffer = Buffer(*self.shape, self.buffer_bytes, capacity=self.candidates, directory=self.spill_dir)
            if self.candidates is not None:
                self.slot_rows = np.full(self.candidates, -1, dtype=np.int64)
                self.slot_bald = np.full(self.candidates, -np.inf)
        if self.candidates is None:
            self.buffer.append(probs)
            return
        rows = np.arange(offset, offset + len(probs))
        every_row = np.concatenate([self.slot_rows, rows])
        every_bald = np.concatenate([self.slot_bald, row_scores.bald])
        filled = every_row >= 0
        order = np.lexsort((np.where(filled, every_row, np.iinfo(np.int64).max), -np.where(filled, every_bald, -np.inf)))
        kept = np.zeros(len(every_row), dtype=bool)
        kept[order[: self.candidates]] = True
        kept &= filled
        entering = np.flatnonzero(kept[self.candidates:])  # this chunk's rows that take a slot
        free = np.flatnonzero(~kept[: self.candidates])  # slots left empty or whose row was pushed out
        slots = free[: len(entering)]
        self.slot_rows[free] = -1
        self.slot_bald[free] = -np.inf
        self.slot_rows[slots] = rows[entering]
        self.slot_bald[slots] = row_scores.bald[entering]
        if len(slots):
            self.buffer.write(slots, probs[entering])

    def row_scores(self) -> RowScores:
        """Every row's scores (the fields this method does not need are left empty)."""
        joined = {name: np.concatenate(parts) for name, parts in self.scores.items()}
        empty = np.zeros(0)
        return RowScores(**{name: joined.get(name, empty) for name in ("bald", "entropy", "expected_entropy", "margin")})

    def candidate_rows(self) -> np.ndarray:
        """The pool row of each buffered row."""
        return np.arange(self.rows) if self.candidates is None else self.slot_rows

    def close(self) -> None:
        if self.buffer is not None:
            self.buffer.close()


def _local_batchbald(collector: _Collector, scores: RowScores, k: int, samples: int, classes: int, *, seed: int,
                     configurations: int, joint_budget: int, work_bytes: int, start: Sequence[int],
                     on_pick) -> Any:
    """Each greedy step a pass over the buffered candidates, a chunk of rows at a time."""
    buffer = collector.buffer
    assert buffer is not None
    pool_rows = collector.candidate_rows()  # the pool row in each buffered slot (-1: an empty slot)
    slot_of = None if collector.candidates is None else {int(r): i for i, r in enumerate(pool_rows) if r >= 0}
    expected = scores.expected_entropy

    def scan(state: JointState, taken: set) -> Candidate | None:
        best = None
        step = state.chunk_rows(samples, classes, work_bytes)
        for first in range(0, len(pool_rows), step):
            rows = pool_rows[first:first + step]
            filled = rows >= 0
            probs = buffer.read(first, first + len(rows))
            if not filled.all():
                rows, probs = rows[filled], probs[filled]
            if len(rows):
                best = better(best, best_candidate(state, rows, probs, expected[rows], taken))
        return best

    def row(index: int) -> tuple[np.ndarray, float]:
        if not 0 <= index < collector.rows or (slot_of is not None and index not in slot_of):
            raise InputError(f"start: row {index} is not a candidate of this pool")
        slot = index if slot_of is None else slot_of[index]
        return np.asarray(buffer.read(slot, slot + 1)[0], dtype=np.float64), float(expected[index])

    return batchbald(scan, row, k, samples, seed=seed, configurations=configurations, joint_budget=joint_budget,
                     start=start, on_pick=on_pick)
