"""Dynamic batching: concurrent requests for one model merged into few engine runs.

Requests queue per model. When the compute thread is free, the batcher takes
queued requests in arrival order until their forward rows (inputs x samples)
reach ``max_batch_rows``, waiting up to ``max_delay_ms`` for more when the
batch is not full. Requests that share (samples, seed) run as one engine call
on their concatenated rows; since a row's answer depends only on (model, row,
T, seed), each request gets exactly what it would get alone. Interval levels,
calibration options and sample returns are per request and applied afterwards
(:func:`mcdropout.bundle.summarise`, once per level and options in a run),
so no parameter leaks between requests. Compute runs on one thread per process
(one device), off the event loop; it also gives each request its rows,
so the event loop converts nothing per request. The queue is bounded: past
``max_queue`` waiting requests, ``submit`` raises :class:`Overloaded` (the
app answers 503 with Retry-After). A request whose deadline passed or whose
client went away is left out of every run that has not started (and counted
through ``dropped``): its rows are never computed.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from mcdropout.answer import RegressionResult, Result, take_rows
from mcdropout.bundle import Bundle, NonFiniteError, summarise

if TYPE_CHECKING:
    from service.request import InferRequest


class Overloaded(Exception):
    """The model's queue is full."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its answer was ready."""


class ClientGone(Exception):
    """The request's client went away before its answer was ready."""


@dataclass(eq=False)
class Job:
    request: InferRequest
    cost: int  # forward rows: inputs x samples (x the maximum for "auto")
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    abandoned: bool = False
    reason: str = ""  # why it was abandoned: "deadline" or "disconnected"

    @property
    def inputs(self) -> np.ndarray:
        return self.request.rows

    @property
    def run(self) -> tuple:
        """What one engine run shares: requests with the same (samples, seed, tolerance) are merged."""
        return self.request.samples, self.request.seed, self.request.tolerance


@dataclass(frozen=True)
class BatchStats:
    """What one merged run did, for the metrics."""

    requests: int
    rows: int
    forward_rows: int
    queue_seconds: list[float]
    compute_seconds: float
    result: Result
    abstained: int = 0  # rows answered with abstain: true, over the group's requests
    set_sizes: list[int] = field(default_factory=list)  # of every prediction set served

    @property
    def uncertainty(self) -> tuple[str, np.ndarray]:
        """The uncertainty served per row: predictive std (regression) or mutual information."""
        if isinstance(self.result, RegressionResult):
            return "predictive_std", self.result.std
        return "mutual_information", self.result.mutual_information


class Batcher:
    def __init__(self, bundle: Bundle, executor: Executor, *, enabled: bool, max_batch_rows: int,
                 max_delay_ms: float, max_queue: int, observe: Callable[[BatchStats], None] | None = None,
                 max_samples: int | None = None, dropped: Callable[[str], None] | None = None) -> None:
        self.bundle = bundle
        # samples="auto" stops here: the bundle's maximum, or the server's (MCD_MAX_SAMPLES) when lower
        self.max_samples = min(bundle.manifest.max_samples, max_samples or bundle.manifest.max_samples)
        self.executor = executor
        self.enabled = enabled
        self.max_batch_rows = max_batch_rows
        self.max_delay = max_delay_ms / 1000.0
        self.max_queue = max_queue
        self.observe = observe
        self.dropped = dropped  # called with the reason of each abandoned request left out of a run
        self.queue: deque[Job] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        return len(self.queue)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.bundle.name}")

    async def close(self) -> None:
        """Finish every queued request, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def submit(self, request: InferRequest, *, timeout: float, gone: asyncio.Future | None = None) -> Result:
        """The answer for ``request``'s rows; ``gone``: a future that completes when the client went away."""
        if self._closing:
            raise Overloaded("the server is shutting down")
        if len(self.queue) >= self.max_queue:
            raise Overloaded(f"model {self.bundle.name!r} has {len(self.queue)} requests waiting (the limit)")
        per_row = self.max_samples if request.samples == "auto" else request.samples
        loop = asyncio.get_running_loop()
        job = Job(request, cost=len(request.rows) * per_row, future=loop.create_future())
        self.queue.append(job)
        self._wakeup.set()
        # A timer that fails the future, not asyncio.wait_for: that wraps each request in a task of its own.
        deadline = loop.call_later(timeout, _expire, job, timeout)
        leave = functools.partial(_leave, job)
        if gone is not None:
            gone.add_done_callback(leave)
        try:
            return await job.future
        except asyncio.CancelledError:  # the caller was cancelled (a gRPC call whose client went away)
            if not job.abandoned:
                job.abandoned, job.reason = True, "disconnected"
            raise
        finally:
            deadline.cancel()
            if gone is not None:
                gone.remove_done_callback(leave)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather_more()
            batch = self._take()
            if not batch:
                continue
            try:
                stats = await loop.run_in_executor(self.executor, self._compute, batch)
            except Exception as error:  # a failed run answers its requests with the error
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            if self.observe is not None:
                for item in stats:
                    self.observe(item)

    async def _gather_more(self) -> None:
        """Wait (up to max_delay after the oldest request) while the batch is not full."""
        if not self.enabled or self.max_delay <= 0:
            return
        deadline = self.queue[0].enqueued + self.max_delay
        while sum(job.cost for job in self.queue) < self.max_batch_rows and not self._closing:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    def _take(self) -> list[Job]:
        batch: list[Job] = []
        cost = 0
        while self.queue:
            job = self.queue[0]
            if job.abandoned:
                self._drop(self.queue.popleft())
                continue
            if batch and (not self.enabled or cost + job.cost > self.max_batch_rows):
                break
            batch.append(self.queue.popleft())
            cost += job.cost
        return batch

    def _compute(self, batch: list[Job]) -> list[BatchStats]:
        """On the compute thread: one engine run per (samples, seed) group."""
        loop = batch[0].future.get_loop()
        groups: dict[tuple, list[Job]] = {}
        for job in batch:
            groups.setdefault(job.run, []).append(job)
        stats = []
        work = list(groups.items())
        while work:
            run, jobs = work.pop(0)
            samples, seed, tolerance = run
            for job in jobs:
                if job.abandoned:
                    self._drop(job)
            jobs = [job for job in jobs if not job.abandoned]
            if not jobs:
                continue
            started = time.perf_counter()
            inputs = jobs[0].inputs if len(jobs) == 1 else np.concatenate([job.inputs for job in jobs])
            try:
                prediction = self.bundle.predict(inputs, samples=samples, seed=seed, tolerance=tolerance,
                                                 return_samples=any(job.request.return_samples for job in jobs),
                                                 max_samples=self.max_samples if samples == "auto" else None)
            except NonFiniteError as error:
                if len(jobs) == 1:
                    loop.call_soon_threadsafe(_fail, [jobs[0].future], error)
                    continue
                # Each request answers for its own rows: the requests with bad rows fail with their row
                # numbers, the others are run again without them (a row's answer does not depend on its batch).
                good, start = [], 0
                for job in jobs:
                    stop = start + len(job.inputs)
                    own = error.rows[(error.rows >= start) & (error.rows < stop)] - start
                    if len(own):
                        loop.call_soon_threadsafe(_fail, [job.future], NonFiniteError(error.model, own))
                    else:
                        good.append(job)
                    start = stop
                if good:
                    work.append((run, good))
                continue
            except Exception as error:
                loop.call_soon_threadsafe(_fail, [job.future for job in jobs], error)
                continue
            finished = time.perf_counter()
            results: dict[tuple, Result] = {}  # one table per interval level and calibration options asked for
            answers: list[Result] = []
            abstained, set_sizes = 0, []
            start = 0
            for job in jobs:
                stop = start + len(job.inputs)
                key = (job.request.level, job.request.options)
                if key not in results:
                    results[key] = summarise(self.bundle.manifest, prediction, *key)
                own = take_rows(results[key], start, stop)
                if own.draws is not None and not job.request.return_samples:
                    own.draws = None
                if own.abstain is not None:
                    abstained += int(own.abstain.sum())
                if getattr(own, "set_size", None) is not None:
                    set_sizes.extend(own.set_size.tolist())
                answers.append(own)
                start = stop
            # One hand-over to the event loop for the whole group, not one wake-up per request.
            loop.call_soon_threadsafe(_resolve, [job.future for job in jobs], answers)
            stats.append(BatchStats(
                requests=len(jobs), rows=len(inputs), forward_rows=int(prediction.num_samples.sum()),
                queue_seconds=[started - job.enqueued for job in jobs], compute_seconds=finished - started,
                result=results[(jobs[0].request.level, jobs[0].request.options)], abstained=abstained,
                set_sizes=set_sizes,
            ))
        return stats

    def _drop(self, job: Job) -> None:
        if self.dropped is not None:
            self.dropped(job.reason)


def _abandon(job: Job, reason: str, error: BaseException) -> None:
    """Answer ``job`` with ``error`` and mark it, so that no run that has not started computes it."""
    if job.future.done():
        return
    job.abandoned, job.reason = True, reason
    job.future.set_exception(error)


def _expire(job: Job, timeout: float) -> None:
    _abandon(job, "deadline", DeadlineExceeded(f"no answer within {timeout:g} s"))


def _leave(job: Job, _gone: asyncio.Future) -> None:
    _abandon(job, "disconnected", ClientGone("the client closed the connection"))


def _resolve(futures: list[asyncio.Future], answers: list[Result]) -> None:
    for future, answer in zip(futures, answers):
        if not future.done():  # a request past its deadline has its 504 already
            future.set_result(answer)


def _fail(futures: list[asyncio.Future], error: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)
