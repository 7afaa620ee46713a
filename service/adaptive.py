"""Adaptive conformal levels in the service (docs/adaptive.md): a request with ``adaptive: true`` gets its conformal
interval (regression) or prediction set (classifiers, with ``set_level``) at the level that ACI
(:mod:`mcdropout.stats.adaptive`) has adapted from the outcomes reported for the model so far.

One controller per (model, kind, nominal level, step gamma): kind ``interval`` or ``set``, the nominal level the
request's ``interval`` or ``set_level``, gamma MCD_ADAPTIVE_GAMMA. Its state lives in the answer store's SQLite
file (MCD_STORE_PATH, table ``adaptive_levels``), not in a process: every worker of ``mcdropout serve --workers
N`` reads the one current level, and outcomes received by any worker move it. ACI's update is a sum,
alpha_{t+1} = alpha_t + gamma (alpha - err_t), so each batch of outcomes is one atomic
``alpha_t = alpha_t + gamma sum(alpha - err)`` whichever worker writes it, and the level survives a restart.

An outcome moves the controller only when its stored answer was made at an adapted level (its kept row has
``adapted_level``); err is the share of the row's outputs outside their interval (regression) or whether the
class fell outside the set. Outcomes come back in any order and late; the bound then grows with the delay
(see mcdropout.stats.adaptive).
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from mcdropout.answer import Options, OptionError
from service.live import Outcome, StoredAnswer
from service.live.store import connect, transaction

log = logging.getLogger("mcdropout.service")

SCHEMA = """
CREATE TABLE IF NOT EXISTS adaptive_levels (
    model TEXT NOT NULL, kind TEXT NOT NULL, level REAL NOT NULL, gamma REAL NOT NULL, alpha_t REAL NOT NULL,
    steps INTEGER NOT NULL, errors REAL NOT NULL, PRIMARY KEY (model, kind, level, gamma));
"""


class AdaptiveLevels:
    """The ACI controllers of one app, over the answer store's file; see the module's description."""

    def __init__(self, enabled: bool, path: Path, gamma: float, registry: CollectorRegistry | None = None) -> None:
        self.enabled, self.path, self.gamma = enabled, Path(path), gamma
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self.gauge = None if registry is None else Gauge(
            "mcdropout_adaptive_level", "the adapted conformal level (ACI) that requests with adaptive: true get, by"
            " kind (interval, set) and nominal level", ["model", "kind", "level"], registry=registry,
            multiprocess_mode="mostrecent")

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            self._connection = connect(self.path)
            self._connection.executescript(SCHEMA)
        return self._connection

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def adapt(self, manifest: Any, level: float, options: Options | None) -> Options | None:
        """``options`` with the current adapted level when they ask ``adaptive`` (OptionError otherwise)."""
        if options is None or not options.adaptive:
            return options
        if not self.enabled:
            raise OptionError("adaptive", "adapts from the outcomes kept in the answer store, which is off on this"
                                          " server (MCD_STORE)")
        kind, nominal = ("interval", level) if manifest.task == "regression" else ("set", options.set_level)
        return dataclasses.replace(options, adapted_level=self.current(manifest.name, kind, nominal))

    def current(self, model: str, kind: str, level: float) -> float:
        """The adapted level 1 - alpha_t of a controller (its nominal ``level`` before any outcome)."""
        with self._lock:
            found = self._db().execute(
                "SELECT alpha_t FROM adaptive_levels WHERE model = ? AND kind = ? AND level = ? AND gamma = ?",
                (model, kind, level, self.gamma)).fetchone()
        return level if found is None else 1.0 - found[0]

    def state(self, model: str) -> list[dict[str, Any]]:
        """Every controller of ``model`` at this server's gamma: kind, level, adapted level, outcomes, misses."""
        with self._lock:
            found = self._db().execute(
                "SELECT kind, level, alpha_t, steps, errors FROM adaptive_levels WHERE model = ? AND gamma = ?"
                " ORDER BY kind, level", (model, self.gamma)).fetchall()
        return [{"kind": kind, "level": level, "adapted_level": 1.0 - alpha_t, "gamma": self.gamma, "outcomes": steps,
                 "miss_rate": errors / steps if steps else None} for kind, level, alpha_t, steps, errors in found]

    def observe(self, model: str, pairs: list[tuple[StoredAnswer, Outcome]]) -> None:
        """The outcome hook (service.live.Live.on_outcomes): ACI's update from every outcome of an adapted answer."""
        sums: dict[tuple[str, float], list[float]] = {}
        for kind, level, miss in _misses(pairs):
            entry = sums.setdefault((kind, level), [0.0, 0, 0.0])
            entry[0] += (1.0 - level) - miss
            entry[1] += 1
            entry[2] += miss
        if not sums:
            return
        with self._lock, transaction(self._db()) as db:
            for (kind, level), (step, steps, errors) in sums.items():
                moved = self.gamma * step
                alpha_t, = db.execute(_UPDATE, (model, kind, level, self.gamma, (1.0 - level) + moved, steps, errors,
                                                moved)).fetchone()
                if self.gauge is not None:
                    self.gauge.labels(model, kind, f"{level:g}").set(1.0 - alpha_t)


# ACI's update as one atomic sum, whichever process writes it: alpha_t += gamma sum(alpha - err)
_UPDATE = ("INSERT INTO adaptive_levels (model, kind, level, gamma, alpha_t, steps, errors)"
           " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (model, kind, level, gamma) DO UPDATE SET"
           " alpha_t = alpha_t + ?, steps = steps + excluded.steps, errors = errors + excluded.errors"
           " RETURNING alpha_t")


def _misses(pairs: Iterable[tuple[StoredAnswer, Outcome]]) -> Iterable[tuple[str, float, float]]:
    """(kind, nominal level, err in [0, 1]) of each outcome whose answer was made at an adapted level."""
    for stored, outcome in pairs:
        kept, scores = stored.kept, outcome.scores
        if kept.get("adapted_level") is None:
            continue
        if "probs" in kept:
            if scores.get("in_set") is not None:
                yield "set", float(kept["set_level"]), 1.0 - float(scores["in_set"])
        elif scores.get("covered") is not None:
            yield "interval", float(kept["level"]), 1.0 - float(scores["covered"])
