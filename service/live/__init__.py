"""Answers that can be scored later, outcomes in, live quality out.

:class:`Live` is the one object of an app (``ServiceState.live``) that the data plane, the outcome routes
and the gauges use. Its seam, for code that learns from outcomes (an adaptive level, a drift monitor):

- :meth:`Live.stored_answer` ``(model, id, row)``: the kept answer row (:class:`StoredAnswer`) or None;
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
import logging
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcdropout.quality import kept_rows
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

    @property
    def enabled(self) -> bool:
        return self.settings.store

    def open(self) -> None:
        if not self.enabled:
            return
        s = self.settings
        self.store = AnswerStore(Path(s.store_path), max_rows=s.store_max_rows, max_age_s=s.store_max_age_s,
                                 flush_s=s.store_flush_s, max_pending_rows=s.store_max_pending_rows)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="mcdropout-store")

    def close(self) -> None:
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
        max_risk = None if options is None else options.max_risk
        name = answer.manifest.name
        if not self.store.record(name, answer.request.id, answer.manifest.task, len(result),
                                 lambda: kept_rows(result, max_risk)):
            self.gauges.dropped_rows.labels(name).inc(len(result))

    # --- the seam ----------------------------------------------------------------------------
    def on_outcomes(self, hook: OutcomeHook) -> None:
        """Call ``hook(model, pairs)`` with each accepted batch of (stored answer, outcome) pairs."""
        self._hooks.append(hook)

    def stored_answer(self, model: str, answer_id: str, row: int) -> StoredAnswer | None:
        """The kept answer row (blocking: call it off the event loop, or through :meth:`run`)."""
        if self.store is None:
            return None
        self.store.flush()
        hit = self.store.kept(model, [(answer_id, row)]).get((answer_id, row))
        return None if hit is None else StoredAnswer(model, answer_id, row, hit[0], hit[1])

    async def run(self, call: Callable[..., Any], *args: Any) -> Any:
        """``call(*args)`` on the store's thread (the one that uses its connection)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, call, *args)

    # --- outcomes and quality ----------------------------------------------------------------
    async def report(self, model: str, task: str, classes: list[str] | None, raw: bytes) -> dict[str, Any]:
        """Check and keep a ``POST .../outcomes`` body; ApiError (nothing kept) names the entry at fault."""
        entries = parse_entries(raw, self.settings.max_outcomes)
        assert self.store is not None
        self.store.flush(timeout=self.settings.store_flush_s * 4 + 1)  # this process's answers, written
        accepted, duplicates = await self.run(ingest, self.store, model, classes, entries)
        for hook in self._hooks:
            try:
                hook(model, accepted)
            except Exception:
                log.exception("an outcome hook failed on %d outcome(s) of %s", len(accepted), model)
        await self.quality(model, task)  # the gauges follow every accepted batch
        return {"model": model, "accepted": len(accepted), "duplicates": duplicates}

    async def quality(self, model: str, task: str) -> dict[str, Any]:
        """The model's figures over the count and the time window (and the gauges set from them)."""
        s = self.settings
        assert self.store is not None
        windows = await self.run(window_figures, self.store.connection, model, task, s.quality_window_rows,
                                 s.quality_window_s)
        self.gauges.show(model, task, windows)
        return {"model": model, "task": task, "windows": windows}
