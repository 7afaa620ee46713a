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


def window_figures(connection: sqlite3.Connection, model: str, task: str, rows: int, seconds: float,
                   most: int) -> dict[str, Any]:
    """``{"count": {...}, "time": {...}}``: each window's size and figures; the time window's of at most its
    ``most`` newest outcomes (``capped`` says when it held more)."""
    newest = f"SELECT {_COLUMNS} FROM outcomes WHERE model = ? AND at >= ? ORDER BY seq DESC LIMIT ?"
    by_count = connection.execute(newest, (model, 0.0, rows)).fetchall()
    by_time = connection.execute(newest, (model, time.time() - seconds, most + 1)).fetchall()
    return {"count": {"size_rows": rows, **summarise(_columns(by_count), task)},
            "time": {"size_seconds": seconds, "capped": len(by_time) > most,
                     **summarise(_columns(by_time[:most]), task)}}


def _columns(found: list[tuple]) -> dict[str, np.ndarray]:
    table = np.array(found, dtype=np.float64).reshape(len(found), len(SCORE_COLUMNS))
    return {name: table[:, i] for i, name in enumerate(SCORE_COLUMNS)}
