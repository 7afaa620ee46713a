"""Request bodies decoded by their codec (service/codecs/): small ones on the event loop, large ones in a worker process.

Parsing a JSON body is one C call that holds the GIL from start to end (pydantic's parser: about
0.5 s for 10 MB of rows on this project's 2-core machine), so a worker thread would still hold the
event loop for that long. A body over ``threshold`` bytes is therefore decoded in a separate process
(one, started on the first such body), which sends back the rows as one float32 array and the small
fields; the event loop only copies bytes. What runs there imports neither torch nor the web app. The
worker exits after ``idle_s`` without a large body, giving its memory back; the next one starts another.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, TypeVar

from service.inputs import ApiError

T = TypeVar("T")


class Decoder:
    """Runs a decode function inline for a body up to ``threshold`` bytes, else in the worker process."""

    def __init__(self, threshold: int, idle_s: float) -> None:
        self.threshold = threshold
        self.idle_s = idle_s
        self._pool: ProcessPoolExecutor | None = None
        self._busy = 0
        self._idle: asyncio.TimerHandle | None = None

    async def run(self, size: int, function: Callable[..., T], *args: Any) -> T:
        if size <= self.threshold:
            return function(*args)
        if self._pool is None:
            # spawn: a fresh interpreter, not a fork of this one (its compute threads, gRPC's)
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        loop = asyncio.get_running_loop()
        self._busy += 1
        try:
            return await loop.run_in_executor(self._pool, function, *args)
        except BrokenProcessPool:  # the worker died (killed, out of memory): the next large body starts another
            self.close()
            raise ApiError(503, "the body decoder stopped while decoding this request; retry", None,
                           {"Retry-After": "1"}) from None
        finally:
            self._busy -= 1
            if self._idle is not None:
                self._idle.cancel()
            self._idle = loop.call_later(self.idle_s, self._stop_if_idle)

    @property
    def running(self) -> bool:
        """Whether the worker process is up."""
        return self._pool is not None

    def _stop_if_idle(self) -> None:
        self._idle = None
        if self._busy == 0 and self._pool is not None:
            pool, self._pool = self._pool, None
            pool.shutdown(wait=False)  # the worker exits in the background

    def close(self) -> None:
        """Stop the worker (it finishes the body it holds, then exits)."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
