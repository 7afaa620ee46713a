"""Live quality of one model over two sliding windows of its scored outcomes: the newest ``rows`` outcomes
(by count) and those received in the last ``seconds`` (by time); the figures are mcdropout.quality.summarise's."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import numpy as np

from mcdropout.quality import SCORE_COLUMNS, summarise

# NULL (a figure a row has none of) comes back as the text 'NaN', which numpy reads as nan
_COLUMNS = ", ".join(f"COALESCE({name}, 'NaN')" for name in SCORE_COLUMNS)


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
    table = np.array(found, dtype=np.float64).reshape(len(found), len(SCORE_COLUMNS))
    return {name: table[:, i] for i, name in enumerate(SCORE_COLUMNS)}
