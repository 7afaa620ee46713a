"""The answer of ``POST /v1/models/{name}/acquire`` as :class:`Picks`, checked to be one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Picks:
    """What ``POST /v1/models/{name}/acquire`` answers: the pool's rows picked, in order.

    ``indices``: rows of the pool (numbered from 0), in the order picked; ``scores``: each step's score (for
    BatchBALD the batch's joint mutual information once that row is added; for the one-pass methods the
    row's own score); ``bald``: every pool row's mutual information (BALD). ``raw`` holds the whole answer.
    """

    model: str
    method: str
    samples: int
    seed: int
    indices: np.ndarray
    scores: np.ndarray
    bald: np.ndarray | None = None
    raw: dict = field(default_factory=dict, repr=False)


def picks_from(body: Any, pool: int) -> Picks:
    """An acquire answer as :class:`Picks` for a pool of ``pool`` rows; ValueError saying what is wrong."""
    try:
        indices = np.asarray(body["indices"], dtype=np.int64)
        scores = np.asarray(body["scores"], dtype=np.float64)
        bald = None if body.get("bald") is None else np.asarray(body["bald"], dtype=np.float64)
        picks = Picks(str(body["model"]), str(body["method"]), int(body["samples"]), int(body["seed"]), indices,
                      scores, bald, body)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError("the acquire answer is not a list of picks") from None
    if indices.ndim != 1 or scores.shape != indices.shape:
        raise ValueError("the acquire answer's indices and scores differ in shape")
    if len(indices) and not ((indices >= 0) & (indices < pool)).all() or len(set(indices.tolist())) != len(indices):
        raise ValueError(f"the acquire answer names rows outside the pool of {pool}, or one twice")
    if bald is not None and bald.shape != (pool,):
        raise ValueError(f"the acquire answer's bald has shape {bald.shape}, expected ({pool},)")
    return picks
