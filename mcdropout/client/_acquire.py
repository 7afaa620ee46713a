"""The client's ``acquire``: ``POST /v1/models/{name}/acquire``, its answer checked and typed.

A pool is picked from as a whole (BatchBALD's score of a row depends on the rows picked before it), so
unlike ``predict`` a pool over the server's row limit is not split into several requests: it is refused
before anything is sent, naming the limit (``mcdropout acquire`` takes pools of any size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mcdropout.client._client import Flow, InvalidInput, _bad, _Request, _rows


@dataclass
class Picks:
    """What ``POST /v1/models/{name}/acquire`` answers: the pool's rows picked, in order.

    ``indices``: rows of the pool (numbered from 0), best first; ``scores``: each step's score (for
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


def acquire_flow(client: Any, name: str, inputs: Any, k: int, method: str, samples: int | None,
                 seed: int | None, parameters: dict[str, Any]) -> Flow:
    """The steps of one acquire call of ``client`` (a Client or an AsyncClient)."""
    info = yield from client._model_flow(name)
    rows = _rows(inputs, info)
    if len(rows) == 0:
        raise InvalidInput("inputs: no rows to pick from", None, "inputs")
    if info.max_rows and len(rows) > info.max_rows:
        raise InvalidInput(f"inputs: {len(rows)} rows is over the server's limit of {info.max_rows} per request"
                           " (MCD_MAX_ROWS); a pool is picked from as a whole, so it is not split: pick from a"
                           " larger pool with `mcdropout acquire`", None, "inputs")
    body = {"inputs": rows.tolist(), "k": k, "method": method, "samples": samples, "seed": seed, **parameters}
    body = {key: value for key, value in body.items() if value is not None}
    answer = yield from client._call(_Request("POST", f"/v1/models/{name}/acquire", json=body))
    return _picks(answer, name, len(rows))


def _picks(body: Any, name: str, pool: int) -> Picks:
    """An acquire answer as :class:`Picks`, checked to be one for a pool of ``pool`` rows."""
    try:
        indices = np.asarray(body["indices"], dtype=np.int64)
        scores = np.asarray(body["scores"], dtype=np.float64)
        bald = None if body.get("bald") is None else np.asarray(body["bald"], dtype=np.float64)
        picks = Picks(str(body["model"]), str(body["method"]), int(body["samples"]), int(body["seed"]), indices,
                      scores, bald, body)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise _bad(f"model {name!r}: the acquire answer is not a list of picks", body) from None
    if indices.ndim != 1 or scores.shape != indices.shape:
        raise _bad(f"model {name!r}: the acquire answer's indices and scores differ in shape", body)
    if len(indices) and not ((indices >= 0) & (indices < pool)).all() or len(set(indices.tolist())) != len(indices):
        raise _bad(f"model {name!r}: the acquire answer names rows outside the pool of {pool}, or one twice", body)
    if bald is not None and bald.shape != (pool,):
        raise _bad(f"model {name!r}: the acquire answer's bald has shape {bald.shape}, expected ({pool},)", body)
    return picks
