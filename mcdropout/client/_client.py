"""Python client for the mcdropout service: :class:`Client` and :class:`AsyncClient`.

>>> from mcdropout.client import Client
>>> with Client("http://127.0.0.1:8000") as client:  # doctest: +SKIP
...     result = client.predict("diabetes", rows, samples=100, seed=7)
...     result.mean, result.std, result.lower, result.upper

Inputs may be lists, numpy arrays or a pandas DataFrame (its columns are matched
to the model's feature names). Inputs longer than the server's row limit go as
several requests whose answers are joined in order; with one seed the answer
for a row does not depend on what it was sent with. Connection errors and 503
answers are retried with exponential backoff (honouring Retry-After); 4xx
answers never are; a server's Retry-After is honoured up to ``max_backoff``.
``timeout`` bounds each call as a whole (retries, waits and a slow answer
included, in both clients: the blocking client's reads are cut at the deadline
even while a server drips its headers). An answer is at most ``max_answer_bytes``
(default :data:`MAX_ANSWER_BYTES`, 256 MiB, counted after decompression, so a
gzip bomb stops there; None: no cap), and a predict answer must fit the model's
description (its task, outputs and classes). Errors are typed: :class:`NotFound`, :class:`InvalidInput`,
:class:`Unauthorized`, :class:`Overloaded`, :class:`ServerError`,
:class:`Unreachable`, :class:`TimedOut`, :class:`BadAnswer`, all
:class:`ServiceError`.

Importing this module imports neither torch nor fastapi: it needs httpx and numpy.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import re
import time
import zlib
from collections.abc import Generator
from dataclasses import dataclass, field, fields
from typing import Any, Union

import httpcore
import httpx
import numpy as np

from mcdropout.answer import (
    ClassificationResult,
    RegressionResult,
    Result,
    concatenate,
    from_json,
    statistics,
)
from mcdropout.client._acquire import Picks, picks_from

__all__ = ["AsyncClient", "BadAnswer", "ClassificationResult", "Client", "InvalidInput", "ModelInfo", "NotFound",
           "Overloaded", "RegressionResult", "Result", "ServerError", "ServiceError", "TimedOut", "Unauthorized",
           "Unreachable"]

EXCERPT_CHARS = 200  # of a bad answer's body, in its error
MAX_ANSWER_BYTES = 256 * 2**20  # the default cap on one answer, decompressed: 256 MiB
_UNSET: Any = object()
OUTCOMES_PER_REQUEST = 5000  # outcomes per POST .../outcomes (the server takes up to MCD_MAX_OUTCOMES)
# The server's lists of rows in its errors: "rows numbered from 0: 3, 7, ..." and "in row(s) 3, 7, ..."
_ROW_LIST = re.compile(r"(rows numbered from 0: |in row\(s\) )(\d+(?:, \d+)*)")


class ServiceError(Exception):
    """An answer the client cannot turn into a result; ``status`` is the HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class NotFound(ServiceError):
    """404: no such model (or path)."""


class InvalidInput(ServiceError):
    """4xx for a bad request; ``field`` names the part of it that is wrong."""

    def __init__(self, message: str, status: int | None = 422, field: str | None = None) -> None:
        super().__init__(message, status)
        self.field = field

    def __str__(self) -> str:
        return f"{self.message} (field {self.field!r})" if self.field else self.message

    def shifted(self, offset: int) -> InvalidInput:
        """This error with the row numbers it names counted from ``offset``: for a call on the rows of a
        larger table that start at ``offset`` (``inputs[N]``, and the server's lists of rows)."""
        def shift(text: str | None) -> str | None:
            if text is None:
                return None
            text = re.sub(r"inputs\[(\d+)\]", lambda m: f"inputs[{int(m[1]) + offset}]", text)
            return _ROW_LIST.sub(lambda m: m[1] + re.sub(r"\d+", lambda n: str(int(n[0]) + offset), m[2]), text)

        return InvalidInput(shift(self.message), self.status, shift(self.field))


class Unauthorized(ServiceError):
    """401: the API key is missing or wrong."""


class Overloaded(ServiceError):
    """503 after every retry; ``retry_after`` is the server's last hint in seconds."""

    def __init__(self, message: str, status: int | None = 503, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class ServerError(ServiceError):
    """5xx other than 503 (504: the request passed its deadline)."""


class Unreachable(ServiceError):
    """No answer after every retry: connection refused, reset or timed out."""


class TimedOut(ServiceError):
    """The call's deadline (the client's ``timeout``, for the whole call) passed before its answer was in."""


class BadAnswer(ServiceError):
    """An answer that is not what the route returns (not JSON, the wrong shape, the wrong row count, a task,
    outputs or classes other than the model's, or larger than ``max_answer_bytes``); ``excerpt`` holds its
    start."""

    def __init__(self, message: str, status: int | None = None, excerpt: str = "") -> None:
        super().__init__(f"{message}; the answer begins {excerpt!r}" if excerpt else message, status)
        self.excerpt = excerpt


@dataclass
class ModelInfo:
    """What ``GET /v1/models/{name}`` says about a model; ``raw`` holds the whole answer."""

    name: str
    status: str
    task: str | None = None
    version: str | None = None
    input_shape: list[int] | None = None
    feature_names: list[str] | None = None
    outputs: list[str] | None = None
    classes: list[str] | None = None
    default_samples: int | None = None
    max_samples: int | None = None
    max_rows: int | None = None
    error: str | None = None
    metrics: dict = field(default_factory=dict)
    calibration: dict | None = None  # the bundle's fitted calibration; None: uncalibrated
    text: dict | None = None  # a text model ({"max_tokens": N}): inputs are strings; None: rows of numbers
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelInfo:
        known = {f.name: body.get(f.name) for f in fields(cls) if f.name not in ("metrics", "raw")}
        return cls(**known, metrics=body.get("metrics") or {}, raw=body)


@dataclass
class _Request:
    method: str
    path: str
    json: Any = None
    ok: tuple[int, ...] = (200,)


@dataclass
class _Sleep:
    seconds: float


# A method is a flow: it yields requests (receiving the httpx response, or the transport error) and
# waits, and returns the result. The blocking and the async client each only carry the steps out.
Flow = Generator[Union[_Request, _Sleep], Any, Any]


class _Base:
    def __init__(self, base_url: str, api_key: str | None, timeout: float, retries: int, backoff: float,
                 max_backoff: float, max_answer_bytes: int | None = MAX_ANSWER_BYTES) -> None:
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if max_answer_bytes is not None and not (isinstance(max_answer_bytes, int) and max_answer_bytes > 0):
            raise ValueError(f"max_answer_bytes must be a positive number of bytes or None, got {max_answer_bytes!r}")
        self.max_answer_bytes = max_answer_bytes
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._headers = {"Accept-Encoding": ACCEPT_ENCODING}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = timeout
        self._models: dict[str, ModelInfo] = {}

    def _call(self, request: _Request) -> Flow:
        """``request``'s JSON answer, retried with backoff on connection errors and 503; typed errors."""
        attempt = 0
        while True:
            answer = yield request
            if isinstance(answer, httpx.TransportError):
                failure: ServiceError = Unreachable(f"{self.base_url}{request.path}: {answer!r}")
            else:
                outcome = _outcome(answer, request)
                if not isinstance(outcome, ServiceError):
                    return outcome
                failure = outcome
            if not _retryable(failure) or attempt == self.retries:
                raise failure
            yield _Sleep(self._delay(attempt, getattr(failure, "retry_after", None)))
            attempt += 1

    def _models_flow(self) -> Flow:
        body = yield from self._call(_Request("GET", "/v1/models"))
        try:
            infos = [ModelInfo.from_json(m) for m in body["models"]]
        except (KeyError, TypeError, AttributeError):
            raise _bad("GET /v1/models did not answer a model list", body) from None
        self._models.update({m.name: m for m in infos})
        return infos

    def _model_flow(self, name: str) -> Flow:
        if name not in self._models:
            body = yield from self._call(_Request("GET", f"/v1/models/{name}"))
            if not isinstance(body, dict) or not isinstance(body.get("name"), str):
                raise _bad(f"GET /v1/models/{name} did not answer a model", body)
            self._models[name] = ModelInfo.from_json(body)
        return self._models[name]

    def _health_flow(self) -> Flow:
        live = yield from self._call(_Request("GET", "/v2/health/live", ok=(200, 503)))
        ready = yield from self._call(_Request("GET", "/v2/health/ready", ok=(200, 503)))
        return {"live": bool(live.get("live")), "ready": bool(ready.get("ready"))}

    def _predict_flow(self, name: str, inputs: Any, samples: int | str | None, seed: int | None,
                      interval: float | None, calibration: dict[str, Any] | None = None) -> Flow:
        info = yield from self._model_flow(name)
        rows = _rows(inputs, info)
        if len(rows) == 0:
            raise InvalidInput("inputs: no rows to predict", None, "inputs")
        options: dict[str, Any] = {"samples": samples, "seed": seed}
        if interval is not None:
            options["interval"] = interval
        options.update(calibration or {})
        options = {k: v for k, v in options.items() if v is not None}
        step = info.max_rows or len(rows)
        parts = []
        for start in range(0, len(rows), step):
            if start and calibration and calibration.get("id") is not None:  # one id per request
                options["id"] = f"{calibration['id']}.{start // step}"
            try:
                body = yield from self._call(_Request("POST", f"/v1/models/{name}/predict",
                                                      json={"inputs": rows[start:start + step].tolist(), **options}))
            except InvalidInput as error:
                raise error.shifted(start) from None
            part = _prediction(body, info, len(rows[start:start + step]))
            parts.append(part)
            options.setdefault("seed", parts[0].seed)  # the server's default seed, kept for later chunks
        return concatenate(parts)

    def _outcomes_flow(self, name: str, outcomes: Result | list[dict[str, Any]], y: Any) -> Flow:
        entries = _outcome_entries(outcomes, y)
        total = {"accepted": 0, "duplicates": 0}
        for start in range(0, len(entries), OUTCOMES_PER_REQUEST):
            body = yield from self._call(_Request("POST", f"/v1/models/{name}/outcomes",
                                                  json=entries[start:start + OUTCOMES_PER_REQUEST]))
            for key in total:
                total[key] += int(body.get(key, 0)) if isinstance(body, dict) else 0
        return total

    def _acquire_flow(self, name: str, inputs: Any, k: int, method: str, samples: int | None, seed: int | None,
                      parameters: dict[str, Any]) -> Flow:
        # A pool is picked from as a whole (a row's BatchBALD score depends on the rows picked before it), so
        # unlike predict's rows it is never split: a pool over the server's row limit is refused here.
        info = yield from self._model_flow(name)
        rows = _rows(inputs, info)
        if len(rows) == 0:
            raise InvalidInput("inputs: no rows to pick from", None, "inputs")
        if info.max_rows and len(rows) > info.max_rows:
            raise InvalidInput(f"inputs: {len(rows)} rows is over the server's limit of {info.max_rows} per request"
                               " (MCD_MAX_ROWS); a pool is picked from as a whole, so it is not split: pick from a"
                               " larger pool with `mcdropout acquire`", None, "inputs")
        body = {"inputs": rows.tolist(), "k": k, "method": method, "samples": samples, "seed": seed, **parameters}
        body = {key: value for key, value in body.items() if value is not None}
        answer = yield from self._call(_Request("POST", f"/v1/models/{name}/acquire", json=body))
        try:
            return picks_from(answer, len(rows))
        except ValueError as problem:
            raise _bad(f"model {name!r}: {problem}", answer) from None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """The backoff, or the server's Retry-After when longer: never past ``max_backoff``."""
        wait = max(self.backoff * 2**attempt, retry_after or 0.0)
        return min(self.max_backoff, wait)

    def _answer(self, response: httpx.Response, body: bytes) -> httpx.Response:
        """A streamed response with its body in, decoded: what the flows read."""
        headers = [(key, value) for key, value in response.headers.multi_items()
                   if key.lower() not in ("content-encoding", "content-length")]
        return httpx.Response(response.status_code, headers=headers, content=body, request=response.request)

    def _body(self, response: httpx.Response, step: _Request) -> _Body:
        return _Body(response.headers.get("content-encoding", ""), self.max_answer_bytes,
                     f"{step.method} {step.path}")


class Client(_Base):
    """Blocking client. Use as a context manager, or call :meth:`close`."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.25, max_backoff: float = 8.0,
                 max_answer_bytes: int | None = MAX_ANSWER_BYTES,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout, retries, backoff, max_backoff, max_answer_bytes)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=timeout,
                                  transport=transport)
        if transport is None:  # httpx's own transports, and those of the proxies it took from the environment
            for own in (self._http._transport, *self._http._mounts.values()):
                if isinstance(own, httpx.HTTPTransport):
                    _bounded(own)

    def models(self) -> list[ModelInfo]:
        return self._run(self._models_flow())

    def model(self, name: str) -> ModelInfo:
        self._models.pop(name, None)
        return self._run(self._model_flow(name))

    def predict(self, name: str, inputs: Any, *, samples: int | str | None = None, seed: int | None = None,
                interval: float | None = None, interval_method: str | None = None, set_level: float | None = None,
                set_method: str | None = None, max_risk: float | None = None, delta: float | None = None,
                abstain_score: str | None = None, max_std: float | None = None,
                max_interval_width: float | None = None, tolerance: float | None = None,
                return_samples: bool = False, id: str | None = None, adaptive: bool | None = None) -> Result:
        """MC dropout prediction for every row of ``inputs``; fields are numpy arrays.

        A calibrated bundle also takes ``interval_method``, ``set_level`` / ``set_method`` (adds
        ``prediction_set``, ``set_size``), ``max_risk`` / ``delta`` / ``abstain_score`` (adds ``abstain``);
        regression takes ``max_std`` / ``max_interval_width`` (adds ``abstain``) calibrated or not.
        ``tolerance`` goes with ``samples="auto"``; ``return_samples`` puts each row's draws in ``result.draws``.
        ``id``: the answer's id (default: the server's); ``result.answer_id`` and ``result.answer_row`` name each
        row for :meth:`report_outcomes` (inputs sent as several requests: ``<id>.1``, ``<id>.2``, ... after the first).
        ``adaptive``: the conformal interval or set at the level adapted from the outcomes reported so far
        (``result.adapted_level``; docs/adaptive.md).
        """
        calibration = {"id": id, "interval_method": interval_method, "set_level": set_level, "set_method": set_method,
                       "max_risk": max_risk, "delta": delta, "abstain_score": abstain_score, "max_std": max_std,
                       "max_interval_width": max_interval_width, "tolerance": tolerance,
                       "return_samples": return_samples or None, "adaptive": adaptive}
        return self._run(self._predict_flow(name, inputs, samples, seed, interval, calibration))

    def health(self) -> dict[str, bool]:
        """``{"live": ..., "ready": ...}`` from the server's health endpoints."""
        return self._run(self._health_flow())

    def acquire(self, name: str, inputs: Any, k: int, *, method: str = "batchbald", samples: int | None = None,
                seed: int | None = None, **parameters: Any) -> Picks:
        """The ``k`` rows of the pool ``inputs`` to label next, in order (``POST /v1/models/{name}/acquire``):
        ``method`` is one of the library's (:func:`mcdropout.acquire`), ``parameters`` its own (``candidates``,
        ``configurations``, ``beta``...). The pool goes as one request, at most the server's ``max_rows``."""
        return self._run(self._acquire_flow(name, inputs, k, method, samples, seed, parameters))

    def report_outcomes(self, name: str, outcomes: Result | list[dict[str, Any]], y: Any = None) -> dict[str, int]:
        """Report outcomes: a list of ``{"id", "row", "y"}``, or a predict result and its rows' outcomes ``y``.
        Sent in requests of :data:`OUTCOMES_PER_REQUEST`, each kept whole or not at all; an outcome already
        reported is left out (the first one wins), so a retry is harmless. ``{"accepted": n, "duplicates": m}``."""
        return self._run(self._outcomes_flow(name, outcomes, y))

    def quality(self, name: str) -> dict[str, Any]:
        """The model's live quality (``GET /v1/models/{name}/quality``)."""
        return self._run(self._call(_Request("GET", f"/v1/models/{name}/quality")))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, flow: Flow) -> Any:
        deadline = time.monotonic() + self._timeout
        answer = None
        while True:
            try:
                step = flow.send(answer)
            except StopIteration as stop:
                return stop.value
            answer = self._carry_out(step, deadline)

    def _carry_out(self, step: _Request | _Sleep, deadline: float) -> Any:
        left = _left(deadline, self._timeout, step)
        if isinstance(step, _Sleep):
            time.sleep(min(step.seconds, left))
            _left(deadline, self._timeout, step)
            return None
        bound = _DEADLINE.set(deadline)  # every socket operation of this request ends by the deadline
        try:
            with self._http.stream(step.method, step.path, json=step.json, timeout=left) as response:
                body = self._body(response, step)
                for chunk in response.iter_raw():  # a server dripping its answer is cut off at the deadline
                    body.feed(chunk)
                    _left(deadline, self._timeout, step)
                return self._answer(response, body.finish())
        except httpx.TimeoutException as error:
            if time.monotonic() >= deadline:
                raise TimedOut(f"{step.method} {step.path}: no complete answer within timeout={self._timeout} s")
            return error
        except httpx.TransportError as error:
            return error
        finally:
            _DEADLINE.reset(bound)


# The blocking client's deadline for the request under way in this thread (or context): httpx's timeouts
# are per socket operation, so a server sending a byte a second would hold a request forever without it.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("mcdropout_client_deadline", default=None)


def _within_deadline(timeout: float | None, error: type[Exception]) -> float | None:
    """A socket operation's timeout cut to what is left before the deadline; ``error`` once it has passed."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _within_deadline(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _within_deadline(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _within_deadline(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_tcp(host, port, _within_deadline(timeout, httpcore.ConnectTimeout),
                                                         local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(
            path, _within_deadline(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _bounded(transport: httpx.HTTPTransport) -> httpx.HTTPTransport:
    """httpx's own transport, its socket operations made to end by the call's deadline (see ``_DEADLINE``)."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if backend is None:  # an httpcore without this seam: fail loudly rather than lose the deadline quietly
        raise RuntimeError("mcdropout.client: this httpcore version does not let the client bound its reads;"
                           " pin httpcore>=1.0,<2")
    if not isinstance(backend, _DeadlineBackend):
        pool._network_backend = _DeadlineBackend(backend)
    return transport


class AsyncClient(_Base):
    """The same methods as :class:`Client`, awaitable. Use ``async with``, or await :meth:`aclose`."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 3, backoff: float = 0.25, max_backoff: float = 8.0,
                 max_answer_bytes: int | None = MAX_ANSWER_BYTES,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, timeout, retries, backoff, max_backoff, max_answer_bytes)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=timeout,
                                       transport=transport)

    async def models(self) -> list[ModelInfo]:
        return await self._run(self._models_flow())

    async def model(self, name: str) -> ModelInfo:
        self._models.pop(name, None)
        return await self._run(self._model_flow(name))

    async def predict(self, name: str, inputs: Any, *, samples: int | str | None = None, seed: int | None = None,
                      interval: float | None = None, interval_method: str | None = None,
                      set_level: float | None = None, set_method: str | None = None, max_risk: float | None = None,
                      delta: float | None = None, abstain_score: str | None = None, max_std: float | None = None,
                      max_interval_width: float | None = None, tolerance: float | None = None,
                      return_samples: bool = False, id: str | None = None,
                      adaptive: bool | None = None) -> Result:
        calibration = {"id": id, "interval_method": interval_method, "set_level": set_level, "set_method": set_method,
                       "max_risk": max_risk, "delta": delta, "abstain_score": abstain_score, "max_std": max_std,
                       "max_interval_width": max_interval_width, "tolerance": tolerance,
                       "return_samples": return_samples or None, "adaptive": adaptive}
        return await self._run(self._predict_flow(name, inputs, samples, seed, interval, calibration))

    async def health(self) -> dict[str, bool]:
        return await self._run(self._health_flow())

    async def acquire(self, name: str, inputs: Any, k: int, *, method: str = "batchbald",
                      samples: int | None = None, seed: int | None = None, **parameters: Any) -> Picks:
        return await self._run(self._acquire_flow(name, inputs, k, method, samples, seed, parameters))

    async def report_outcomes(self, name: str, outcomes: Result | list[dict[str, Any]], y: Any = None
                              ) -> dict[str, int]:
        return await self._run(self._outcomes_flow(name, outcomes, y))

    async def quality(self, name: str) -> dict[str, Any]:
        return await self._run(self._call(_Request("GET", f"/v1/models/{name}/quality")))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, flow: Flow) -> Any:
        deadline = time.monotonic() + self._timeout
        answer = None
        while True:
            try:
                step = flow.send(answer)
            except StopIteration as stop:
                return stop.value
            answer = await self._carry_out(step, deadline)

    async def _carry_out(self, step: _Request | _Sleep, deadline: float) -> Any:
        left = _left(deadline, self._timeout, step)
        if isinstance(step, _Sleep):
            await asyncio.sleep(min(step.seconds, left))
            _left(deadline, self._timeout, step)
            return None
        try:
            return await asyncio.wait_for(self._receive(step, left), left)
        except asyncio.TimeoutError:
            raise TimedOut(f"{step.method} {step.path}: no complete answer within timeout={self._timeout} s") from None
        except httpx.TransportError as error:
            return error

    async def _receive(self, step: _Request, left: float) -> httpx.Response:
        async with self._http.stream(step.method, step.path, json=step.json, timeout=left) as response:
            body = self._body(response, step)
            async for chunk in response.aiter_raw():
                body.feed(chunk)
            return self._answer(response, body.finish())


class _Body:
    """An answer's body as it comes in, decoded here (identity, gzip or deflate: what the client accepts) so
    that no more than ``limit`` + 1 decoded bytes are ever held: a gzip bomb stops at the cap, not one
    network read (up to ~64 MB decoded) past it."""

    def __init__(self, encoding: str, limit: int | None, what: str) -> None:
        self.limit, self.what, self.size, self.parts = limit, what, 0, []
        self.encoding = encoding.strip().lower()
        if self.encoding in ("", "identity"):
            self._decoder = None
        elif self.encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif self.encoding == "deflate":
            self._decoder = zlib.decompressobj()
        else:
            raise BadAnswer(f"{what}: the answer's content-encoding {encoding!r} is not one the client asked for"
                            f" ({ACCEPT_ENCODING})")
        self._fresh = True  # deflate is zlib-wrapped or raw: the first bytes say which

    def feed(self, raw: bytes) -> None:
        if self._decoder is None:
            self._add(raw)
            return
        data = raw
        while data:
            room = 0 if self.limit is None else self.limit - self.size + 1  # zlib: 0 is no limit
            try:
                out = self._decoder.decompress(data, room)
            except zlib.error as error:
                if self._fresh and self.encoding == "deflate":
                    self._decoder, self._fresh = zlib.decompressobj(-zlib.MAX_WBITS), False
                    continue
                raise BadAnswer(f"{self.what}: the answer's {self.encoding} body cannot be decoded ({error})",
                                None) from None
            self._fresh = False
            self._add(out)
            data = self._decoder.unconsumed_tail

    def finish(self) -> bytes:
        if self._decoder is not None:
            self._add(self._decoder.flush())
        return b"".join(self.parts)

    def _add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.limit is not None and self.size > self.limit:
            raise BadAnswer(f"{self.what}: the answer is over max_answer_bytes ({self.limit}), decoded")
        if chunk:
            self.parts.append(chunk)


ACCEPT_ENCODING = "gzip, deflate"  # decoded by _Body, under the size cap


def _left(deadline: float, timeout: float, step: _Request | _Sleep) -> float:
    """Seconds until the call's deadline; TimedOut once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        what = f"{step.method} {step.path}" if isinstance(step, _Request) else "waiting to retry"
        raise TimedOut(f"{what}: the call's timeout of {timeout} s passed")
    return left


def _excerpt(body: Any) -> str:
    text = body if isinstance(body, str) else repr(body)
    return text[:EXCERPT_CHARS]


def _bad(message: str, body: Any, status: int | None = 200) -> BadAnswer:
    return BadAnswer(message, status, _excerpt(body))


def _prediction(body: Any, info: ModelInfo, rows: int) -> Result:
    """A predict answer as a result, checked to be one, for ``rows`` rows, fitting the model's description."""
    name = info.name
    try:
        result = from_json(body)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        raise _bad(f"model {name!r}: the predict answer is not a prediction", body) from None
    got = len(result.samples_used)
    if got != rows:
        raise _bad(f"model {name!r}: the answer holds {got} row(s) for {rows} input row(s)", body)
    misfit = _misfit(result, info, rows)
    if misfit:
        raise _bad(f"model {name!r}: the answer does not fit the model: {misfit}", body)
    return result


def _misfit(result: Result, info: ModelInfo, rows: int) -> str | None:
    """How ``result`` differs from what ``info`` says the model answers (task, outputs, classes); None: it fits."""
    task = "classification" if isinstance(result, ClassificationResult) else "regression"
    if info.task in ("regression", "classification") and task != info.task:
        return f"a {task} answer for a {info.task} model"
    if task == "regression":
        width = len(info.outputs) if info.outputs else result.mean.shape[1] if result.mean.ndim == 2 else 1
        if info.outputs and list(result.outputs) != list(info.outputs):
            return f"outputs {list(result.outputs)!r}, the model's are {list(info.outputs)!r}"
    else:
        width = len(info.classes) if info.classes else result.probs.shape[1] if result.probs.ndim == 2 else 1
        if info.classes and list(result.classes) != list(info.classes):
            return f"classes {list(result.classes)!r}, the model's are {list(info.classes)!r}"
    for stat in statistics(task):
        value = getattr(result, stat.name, None)
        if value is None:
            continue
        expected = (rows,) if stat.shape == "row" else (rows, width)
        if np.shape(value) != expected:
            return f"{stat.name} has shape {tuple(np.shape(value))}, expected {expected}"
    if task == "classification" and rows and not ((result.label >= 0) & (result.label < width)).all():
        return f"a label outside 0..{width - 1}"
    return None


def _retryable(failure: ServiceError) -> bool:
    return isinstance(failure, (Unreachable, Overloaded))


def _outcome(response: httpx.Response, request: _Request) -> Any:
    """The JSON answer, or the typed error for it (returned, so the caller decides on retrying)."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        if response.status_code in request.ok:
            return _bad(f"{request.method} {request.path}: the answer is not JSON", response.text,
                        response.status_code)
        body = {"error": response.text[:EXCERPT_CHARS] or response.reason_phrase}
    if response.status_code in request.ok:
        return body
    message = body.get("error") or body.get("detail") or response.reason_phrase if isinstance(body, dict) \
        else str(body)
    status = response.status_code
    if status == 404:
        return NotFound(str(message), status)
    if status == 401:
        return Unauthorized(str(message), status)
    if status == 503:
        return Overloaded(str(message), status, _seconds(response.headers.get("Retry-After")))
    if 400 <= status < 500:
        field = body.get("field") if isinstance(body, dict) else None
        return InvalidInput(str(message)[:1000], status, field if isinstance(field, str) else None)
    return ServerError(f"HTTP {status}: {message}", status)


def _texts(inputs: Any) -> np.ndarray:
    values = [inputs] if isinstance(inputs, str) else list(inputs)
    bad = next((row for row, value in enumerate(values) if not isinstance(value, str)), None)
    if bad is not None:
        raise InvalidInput(f"inputs[{bad}]: expected a string (a text model), got {type(values[bad]).__name__}",
                           None, f"inputs[{bad}]")
    rows = np.empty(len(values), dtype=object)
    rows[:] = values
    return rows


def _outcome_entries(outcomes: Result | list[dict[str, Any]], y: Any) -> list[dict[str, Any]]:
    """``outcomes`` as the outcome route's entries, in plain JSON types."""
    if isinstance(outcomes, (RegressionResult, ClassificationResult)):
        if outcomes.answer_id is None:
            raise ValueError("this result carries no answer ids (it did not come from the service)")
        values = np.asarray(y, dtype=object)
        if len(values) != len(outcomes):
            raise ValueError(f"y has {len(values)} outcome(s) for {len(outcomes)} row(s)")
        return [{"id": str(i), "row": int(r), "y": _plain(v)}
                for i, r, v in zip(outcomes.answer_id, outcomes.answer_row, values)]
    if y is not None:
        raise ValueError("y goes with a predict result; a list of outcomes carries its own 'y'")
    return [{"id": str(entry["id"]), "row": int(entry["row"]), "y": _plain(entry["y"])} for entry in outcomes]


def _plain(value: Any) -> Any:
    """numpy numbers and arrays as Python's (JSON has no numpy types)."""
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value


def _seconds(value: str | None) -> float | None:
    """Retry-After in seconds (None: absent, or not a finite number of seconds)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


def _rows(inputs: Any, info: ModelInfo) -> np.ndarray:
    """Inputs as an array of rows; a DataFrame's columns are picked by the model's feature names; a text
    model's strings as an object array (the server checks them)."""
    if info.text is not None:
        return _texts(inputs)
    if hasattr(inputs, "columns") and hasattr(inputs, "to_numpy"):
        names = info.feature_names
        missing = [n for n in names or [] if n not in inputs.columns]
        if missing:
            raise InvalidInput(f"inputs: the DataFrame lacks feature column(s) {', '.join(map(repr, missing))} of"
                               f" model {info.name!r}", None, "inputs")
        inputs = inputs[names] if names else inputs
        inputs = inputs.to_numpy()
    try:
        rows = np.asarray(inputs, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise InvalidInput(f"inputs: not an array of numbers ({error})", None, "inputs") from None
    if rows.ndim and not np.isfinite(rows).all():  # JSON has no NaN: say which row instead of failing to encode
        row = int(np.flatnonzero(~np.isfinite(rows.reshape(len(rows), -1)).all(axis=1))[0])
        raise InvalidInput(f"inputs[{row}]: NaN and infinite values are not allowed", None, f"inputs[{row}]")
    return rows
