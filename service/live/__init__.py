"""Answers that can be scored later, outcomes in, live quality out.

:class:`Live` is the one object of an app (``ServiceState.live``) that the data plane, the outcome routes
and the gauges use. Its seam, for code that learns from outcomes (an adaptive level, a drift monitor):

- ``await`` :meth:`Live.stored_answer` ``(model, id, row)``: the kept answer row (:class:`StoredAnswer`) or None;
- :meth:`Live.on_outcomes` ``(hook)``: ``hook(model, pairs)`` is called on the event loop with each accepted
  batch of outcomes, after it was committed, as a list of (:class:`StoredAnswer`, :class:`Outcome`) pairs in
  the request's order (duplicates left out). A hook that raises is logged; the request is still answered.

Every process of ``mcdropout serve --workers N`` has its own Live over the one SQLite file
(MCD_STORE_PATH): answers written by any worker are scored by whichever receives their outcomes, and the
windows' figures are read from the file, so every worker reports the same. Hooks run in the process that
received the outcomes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcdropout.quality import kept_rows
from service.inputs import ApiError
from service.live.gauges import QualityGauges
from service.live.outcomes import Outcome, StoredAnswer, check_id, ingest, parse_entries
from service.live.quality import window_figures
from service.live.store import AnswerStore

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from service.request import InferAnswer
    from service.settings import Settings

__all__ = ["Live", "Outcome", "OutcomeHook", "StoredAnswer", "check_id", "new_id"]

log = logging.getLogger("mcdropout.service")

OutcomeHook = Callable[[str, list[tuple[StoredAnswer, Outcome]]], None]
REFRESH_S = 2.0  # the gauges of a model are recomputed at most this often while outcomes stream in


def new_id() -> str:
    """A fresh answer id: 32 hex digits (a random UUID)."""
    return uuid.uuid4().hex


class Live:
    """The answer store, outcome ingestion, live quality and its gauges of one process."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.store: AnswerStore | None = None
        self.gauges = QualityGauges(registry)
        self._hooks: list[OutcomeHook] = []
        self._thread: ThreadPoolExecutor | None = None
        self._refreshed: dict[str, float] = {}  # model -> time.monotonic() of its last gauge refresh
        self._later: dict[str, asyncio.Task] = {}  # model -> its refresh waiting out REFRESH_S

    @property
    def enabled(self) -> bool:
        return self.settings.store

    async def open(self) -> None:
        if self.enabled:
            await asyncio.to_thread(self._open)

    async def close(self) -> None:
        for waiting in self._later.values():
            waiting.cancel()
        await asyncio.to_thread(self._close)

    def _open(self) -> None:
        s = self.settings
        self.store = AnswerStore(Path(s.store_path), max_rows=s.store_max_rows, max_age_s=s.store_max_age_s,
                                 flush_s=s.store_flush_s, max_pending_rows=s.store_max_pending_rows)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="mcdropout-store")

    def _close(self) -> None:
        if self._thread is not None:
            self._thread.shutdown(wait=True)
        if self.store is not None:
            self.store.close()

    # --- answers -----------------------------------------------------------------------------
    def record(self, answer: InferAnswer) -> None:
        """Keep ``answer``'s rows under its id (queued: written off the request path)."""
        if self.store is None:
            return
        result, options = answer.result, answer.request.options
        if result.draws is not None:  # not kept: the queue holds what scoring needs, not the draws
            result = dataclasses.replace(result, draws=None)
        max_risk = None if options is None else options.max_risk
        name = answer.manifest.name
        if not self.store.record(name, answer.request.id, answer.manifest.task, len(result),
                                 lambda: kept_rows(result, max_risk)):
            self.gauges.dropped_rows.labels(name).inc(len(result))

    # --- the seam ----------------------------------------------------------------------------
    def on_outcomes(self, hook: OutcomeHook) -> None:
        """Call ``hook(model, pairs)`` with each accepted batch of (stored answer, outcome) pairs."""
        self._hooks.append(hook)

    async def stored_answer(self, model: str, answer_id: str, row: int) -> StoredAnswer | None:
        """The kept answer row (this process's answers given so far included), or None."""
        if self.store is None:
            return None
        return await self.run(self._stored_answer, model, answer_id, row)

    def _stored_answer(self, model: str, answer_id: str, row: int) -> StoredAnswer | None:
        assert self.store is not None
        self.store.flush(timeout=self.settings.store_flush_s * 4 + 1)
        hit = self.store.kept(model, [(answer_id, row)]).get((answer_id, row))
        return None if hit is None else StoredAnswer(model, answer_id, row, hit[0], hit[1])

    async def run(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` on the store's thread (the one that uses its connection)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    # --- outcomes and quality ----------------------------------------------------------------
    async def report(self, model: str, task: str, classes: list[str] | None, raw: bytes) -> dict[str, Any]:
        """Check and keep a ``POST .../outcomes`` body; ApiError (nothing kept) names the entry at fault."""
        assert self.store is not None
        try:  # parsed, checked and written on the store's thread: the event loop goes on answering
            accepted, duplicates = await self.run(self._ingest, model, classes, raw)
        except sqlite3.OperationalError as error:  # another process held the file past the 10 s busy wait
            log.warning("answer store %s: %s", self.store.path, error)
            raise ApiError(503, "the answer store is busy; retry (nothing of this request was kept)", None,
                           {"Retry-After": str(self.settings.retry_after_s)}) from None
        for hook in self._hooks:
            try:
                hook(model, accepted)
            except Exception:
                log.exception("an outcome hook failed on %d outcome(s) of %s", len(accepted), model)
        await self._refresh(model, task)
        return {"model": model, "accepted": len(accepted), "duplicates": duplicates}

    def _ingest(self, model: str, classes: list[str] | None, raw: bytes) -> tuple[list, int]:
        assert self.store is not None
        entries = parse_entries(raw, self.settings.max_outcomes)
        self.store.flush(timeout=self.settings.store_flush_s * 4 + 1)  # this process's answers, written
        return ingest(self.store, model, classes, entries)

    async def _refresh(self, model: str, task: str) -> None:
        """The gauges follow the accepted outcomes: now, or REFRESH_S after the last refresh (one waiting
        refresh per model), so that a stream of posts does not recompute the windows for each."""
        if model in self._later:
            return
        wait = self._refreshed.get(model, -REFRESH_S) + REFRESH_S - time.monotonic()
        if wait <= 0:
            await self.quality(model, task)
            return

        async def later() -> None:
            await asyncio.sleep(wait)
            del self._later[model]
            await self.quality(model, task)

        self._later[model] = asyncio.get_running_loop().create_task(later(), name=f"mcdropout-quality-{model}")

    async def quality(self, model: str, task: str) -> dict[str, Any]:
        """The model's figures over the count and the time window (and the gauges set from them)."""
        s = self.settings
        assert self.store is not None
        self._refreshed[model] = time.monotonic()
        windows = await self.run(window_figures, self.store.connection, model, task, s.quality_window_rows,
                                 s.quality_window_s, s.quality_window_max_rows)
        self.gauges.show(model, task, windows)
        return {"model": model, "task": task, "windows": windows}
