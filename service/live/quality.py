"""Live quality of one model over two sliding windows of its scored outcomes: the newest ``rows`` outcomes
(by count) and those received in the last ``seconds`` (by time); the figures are mcdropout.quality.summarise's."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import numpy as np

from mcdropout.quality import SCORE_COLUMNS, summarise

_COLUMNS = ", ".join(SCORE_COLUMNS)


def window_figures(connection: sqlite3.Connection, model: str, task: str, rows: int, seconds: float
                   ) -> dict[str, Any]:
    """``{"count": {...}, "time": {...}}``: each window's size and figures."""
    by_count = connection.execute(f"SELECT {_COLUMNS} FROM outcomes WHERE model = ? ORDER BY seq DESC LIMIT ?",
                                  (model, rows)).fetchall()
    by_time = connection.execute(f"SELECT {_COLUMNS} FROM outcomes WHERE model = ? AND at >= ?",
                                 (model, time.time() - seconds)).fetchall()
    return {"count": {"size_rows": rows, **summarise(_columns(by_count), task)},
            "time": {"size_seconds": seconds, **summarise(_columns(by_time), task)}}


def _columns(found: list[tuple]) -> dict[str, np.ndarray]:
    if not found:
        return {name: np.empty(0) for name in SCORE_COLUMNS}
    table = np.array(found, dtype=object)
    return {name: np.array([np.nan if v is None else v for v in table[:, i]], dtype=np.float64)
            for i, name in enumerate(SCORE_COLUMNS)}
