"""The answer store: an SQLite file (WAL mode) holding, per model, what each answered row needs to be scored
later (mcdropout.quality.kept_rows) and the outcomes reported for them with their per-row scores.

Answers are written off the request path: :meth:`AnswerStore.record` queues a reference to the answer and
returns; a writer thread, woken when the queue stops being empty, gathers for ``flush_s`` seconds, turns the
queued answers into rows and writes them, ``batch_answers`` answers a transaction. The queue is bounded
(``max_pending_rows``): past it an answer is not kept (counted in ``dropped_rows``), so memory stays bounded
whatever the load. Retention (``max_rows`` per model and table, ``max_age_s``) is applied by the writer
within a second of its writes.

Several processes (``mcdropout serve --workers N``) share one file: SQLite serialises their writes, and
every reader sees what any of them committed.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("mcdropout.service")

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    seq INTEGER PRIMARY KEY, model TEXT NOT NULL, id TEXT NOT NULL, row INTEGER NOT NULL, at REAL NOT NULL,
    task TEXT NOT NULL, kept TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS answers_key ON answers (model, id, row);
CREATE INDEX IF NOT EXISTS answers_model ON answers (model, seq);
CREATE INDEX IF NOT EXISTS answers_age ON answers (at);
CREATE TABLE IF NOT EXISTS outcomes (
    seq INTEGER PRIMARY KEY, model TEXT NOT NULL, id TEXT NOT NULL, row INTEGER NOT NULL, at REAL NOT NULL,
    y TEXT NOT NULL, level REAL, covered REAL, width REAL, interval_score REAL, nll REAL, correct INTEGER,
    confidence REAL, set_level REAL, in_set INTEGER, set_size INTEGER, max_risk REAL, accepted INTEGER);
CREATE UNIQUE INDEX IF NOT EXISTS outcomes_key ON outcomes (model, id, row);
CREATE INDEX IF NOT EXISTS outcomes_model ON outcomes (model, seq);
CREATE INDEX IF NOT EXISTS outcomes_age ON outcomes (at);
"""

# (model, id, answered at, task, a callable giving the kept rows): the rows are made by the writer thread
Pending = tuple[str, str, float, str, Callable[[], list[dict[str, Any]]]]


def connect(path: Path) -> sqlite3.Connection:
    """A connection to the store at ``path`` (created with its tables), in WAL mode, waiting up to 10 s for
    another process's write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(SCHEMA)
    return connection


class transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on an exception): one writer's transaction."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> sqlite3.Connection:
        self.connection.execute("BEGIN IMMEDIATE")
        return self.connection

    def __exit__(self, kind, value, traceback) -> None:
        self.connection.execute("COMMIT" if kind is None else "ROLLBACK")


class AnswerStore:
    """The SQLite answer store of one process; see the module's description."""

    def __init__(self, path: Path, *, max_rows: int, max_age_s: float, flush_s: float = 0.25,
                 batch_answers: int = 1000, max_pending_rows: int = 100_000) -> None:
        self.path = path
        self.max_rows, self.max_age_s = max_rows, max_age_s
        self.flush_s, self.batch_answers, self.max_pending_rows = flush_s, batch_answers, max_pending_rows
        self.dropped_rows = 0
        self._pending: list[Pending] = []
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._flushed = threading.Condition(self._lock)
        self._written = 0  # answers written (or given up) by the writer, to wait for in flush()
        self._queued = 0
        self._stopping = False
        self._reported: set[str] = set()  # models with outcomes written since retention last ran
        # The writer wakes when the queue stops being empty (not on every answer: a thread woken per request
        # makes the event loop's thread wait for the GIL, measured at +4 ms a request), then gathers for
        # flush_s, unless flush() or close() wants it written now.
        self._wake, self._now = threading.Event(), threading.Event()
        self.connection = connect(path)  # for the outcome and quality calls (one thread: the caller's executor)
        self._writer = threading.Thread(target=self._write_loop, name="mcdropout-answer-store", daemon=True)
        self._writer.start()

    # --- answers, written in the background ---
    def record(self, model: str, answer_id: str, task: str, rows: int,
               kept: Callable[[], list[dict[str, Any]]]) -> bool:
        """Queue an answer of ``rows`` rows under ``answer_id``; ``kept()`` (called by the writer) gives its kept
        rows. False when the queue is full (the answer is not kept)."""
        with self._lock:
            if self._pending_rows + rows > self.max_pending_rows:
                self.dropped_rows += rows
                return False
            first = not self._pending
            self._pending.append((model, answer_id, time.time(), task, kept))
            self._pending_rows += rows
            self._queued += 1
        if first:
            self._wake.set()
        return True

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until every answer queued so far is written."""
        with self._lock:
            target = self._queued
            if self._written >= target:
                return
        self._now.set()
        self._wake.set()
        with self._lock:
            self._flushed.wait_for(lambda: self._written >= target, timeout)

    def close(self) -> None:
        with self._lock:
            self._stopping = True
        self._now.set()
        self._wake.set()
        self._writer.join(timeout=30)
        self.connection.close()

    def _write_loop(self) -> None:
        connection = connect(self.path)
        retained, unretained = time.monotonic(), set()  # models written to since retention last ran
        stopping = False
        while not stopping:
            self._wake.wait(timeout=1.0 if unretained else None)
            self._wake.clear()
            self._now.wait(timeout=self.flush_s)
            self._now.clear()
            with self._lock:
                batch, self._pending, stopping = self._pending, [], self._stopping
                unretained |= self._reported
                self._reported = set()
            for first in range(0, len(batch), self.batch_answers):
                self._write(connection, batch[first:first + self.batch_answers])
            unretained.update(model for model, *_ in batch)
            if unretained and time.monotonic() - retained >= 1.0:
                self._retain(connection, unretained)
                retained, unretained = time.monotonic(), set()
        connection.close()

    def _write(self, connection: sqlite3.Connection, batch: list[Pending]) -> None:
        rows, count = [], 0
        for model, answer_id, at, task, kept in batch:
            made = kept()
            count += len(made)
            rows.extend((model, answer_id, i, at, task, orjson.dumps(row).decode()) for i, row in enumerate(made))
        try:
            with transaction(connection):
                # a duplicate (model, id, row) keeps the first answer: a retry with the same id is answered the
                # same (answers are exact), and outcomes are scored against what was stored first
                connection.executemany("INSERT OR IGNORE INTO answers (model, id, row, at, task, kept)"
                                       " VALUES (?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error:
            log.exception("answer store %s: %d answer rows not written", self.path, len(rows))
        with self._lock:
            self._pending_rows -= count
            self._written += len(batch)
            self._flushed.notify_all()

    def _retain(self, connection: sqlite3.Connection, models: Iterable[str]) -> None:
        try:
            with transaction(connection):
                prune(connection, models, self.max_rows, self.max_age_s)
        except sqlite3.Error:
            log.exception("answer store %s: retention not applied", self.path)

    # --- reads, and the outcome writes (the caller's one thread) ---
    def kept(self, model: str, keys: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, dict]]:
        """The kept answer rows of ``model`` for ``keys`` ((id, row) pairs) that the store holds: (task, row)."""
        found = {}
        lookup = self.connection.execute
        for answer_id, row in keys:
            hit = lookup("SELECT task, kept FROM answers WHERE model = ? AND id = ? AND row = ?",
                         (model, answer_id, row)).fetchone()
            if hit is not None:
                found[(answer_id, row)] = (hit[0], orjson.loads(hit[1]))
        return found

    def reported(self, model: str) -> None:
        """Outcomes of ``model`` were written: the writer applies retention to them within a second."""
        with self._lock:
            self._reported.add(model)
        self._wake.set()

    def answers_of(self, model: str, ids: set[str]) -> dict[tuple[str, int], tuple[str, str]]:
        """Every kept row of the answers ``ids`` of ``model``: (id, row) -> (task, the kept row as JSON text).
        One query per answer (an answer has at most MCD_MAX_ROWS rows)."""
        found = {}
        for answer_id in ids:
            for row, task, kept in self.connection.execute(
                    "SELECT row, task, kept FROM answers WHERE model = ? AND id = ?", (model, answer_id)):
                found[(answer_id, row)] = (task, kept)
        return found

    def outcome_keys(self, model: str, ids: set[str]) -> set[tuple[str, int]]:
        """The (id, row) of the outcomes ``model`` holds for the answers ``ids``."""
        return {(answer_id, row) for answer_id in ids for (row,) in self.connection.execute(
            "SELECT row FROM outcomes WHERE model = ? AND id = ?", (model, answer_id))}

    def answer_rows(self, model: str, answer_id: str) -> tuple[int, int] | None:
        """The first and last row the store holds of answer ``answer_id`` (None: none)."""
        first, last = self.connection.execute("SELECT MIN(row), MAX(row) FROM answers WHERE model = ? AND id = ?",
                                              (model, answer_id)).fetchone()
        return None if first is None else (first, last)


def prune(connection: sqlite3.Connection, models: Iterable[str], max_rows: int, max_age_s: float) -> None:
    """Drop rows older than ``max_age_s`` (all models), and past the newest ``max_rows`` of each of ``models``
    (answers and outcomes alike)."""
    oldest = time.time() - max_age_s
    for table in ("answers", "outcomes"):
        connection.execute(f"DELETE FROM {table} WHERE at < ?", (oldest,))
        for model in models:
            connection.execute(f"DELETE FROM {table} WHERE model = ? AND seq <= (SELECT seq FROM {table} WHERE"
                               " model = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)", (model, model, max_rows))
