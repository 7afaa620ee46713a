"""Pure ASGI middleware: HEAD as GET, the body's read deadline, the request-body limit and the request counter
(no per-request task overhead)."""

from __future__ import annotations

import asyncio
from collections.abc import Container
from typing import Any

import orjson

from service.metrics import ServiceMetrics


class HeadAsGet:
    """Answer HEAD on every GET route: run it as GET and send the headers without the body."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def headers_only(message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


class _TooLarge(Exception):
    pass


class BodyLimit:
    """Answer 413 to bodies over ``limit`` bytes, by Content-Length or as they stream in."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(scope, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        if await _refused(self.app, scope, counting_receive, send, _TooLarge):
            await self._reject(scope, send)

    async def _reject(self, scope, send) -> None:
        await _answer(send, 413, f"request body over the limit of {self.limit} bytes (MCD_MAX_BODY_BYTES)")


class _TooSlow(Exception):
    pass


class ReadDeadline:
    """Give a client ``seconds`` from its request's head to the last byte of its body; past it, answer 408
    and close the connection, so a client that trickles (or stalls) its body does not hold it open."""

    def __init__(self, app, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        reading = True

        async def timed_receive():
            nonlocal reading
            if not reading:  # after the body: waiting for a disconnect is not timed
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _TooSlow from None
            reading = message["type"] == "http.request" and message.get("more_body", False)
            return message

        if await _refused(self.app, scope, timed_receive, send, _TooSlow):
            await _answer(send, 408, f"the request body did not arrive within {self.seconds:g} s"
                                     " (MCD_REQUEST_READ_TIMEOUT_S)", close=True)


async def _refused(app, scope, receive, send, refusal: type[Exception]) -> bool:
    """Run ``app``; True when ``receive`` raised ``refusal`` before the app started its answer (the caller
    answers instead), False when the app answered, or had started to when the refusal came."""
    started = False

    async def tracking_send(message):
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, tracking_send)
    except refusal:
        return not started
    return False


def _has_body(scope) -> bool:
    """Whether the request announces a body (Content-Length above 0, or chunked)."""
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            return value not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


async def _answer(send, status: int, message: str, close: bool = False) -> None:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestCounter:
    """Counts answered requests by route template, model and status."""

    def __init__(self, app, metrics: ServiceMetrics, known: Container[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.known = known
        self._counters: dict[tuple[str, str, str], Any] = {}  # labelled children: labels() locks and hashes
        metrics.on_forget(self._forget)

    def _forget(self, model: str) -> None:
        """A model's series were dropped: so are the cached children that would bring them back."""
        for labels in [labels for labels in self._counters if labels[1] == model]:
            del self._counters[labels]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 500

        async def capture(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            name = (scope.get("path_params") or {}).get("name", "")
            model = name if name in self.known else ""  # unknown names would make labels unbounded
            labels = (getattr(route, "path", "unmatched"), model, str(status))
            counter = self._counters.get(labels)
            if counter is None:
                counter = self._counters[labels] = self.metrics.requests.labels(*labels)
            counter.inc()


STATE_CHANGING = (b"POST", b"PUT", b"PATCH", b"DELETE")


class CrossOriginGuard:
    """Refuse what a foreign web page could make a browser send without asking (a "simple" request has no
    preflight): a state-changing request (every POST: predict, infer, repository index/load/unload) whose
    ``Origin`` is neither the server's own nor one of MCD_CORS_ORIGINS is a 403, and one whose body is
    anything but JSON (or raw bytes, on the v2 infer routes' binary tensor extension) is a 415. A request
    without Content-Type (tritonclient sends none) is let through: browsers always send ``Origin`` with a
    cross-origin POST."""

    def __init__(self, app, origins: list[str]) -> None:
        self.app = app
        self.any_origin = "*" in origins
        self.origins = {origin.rstrip("/").lower() for origin in origins}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"].encode() not in STATE_CHANGING:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        origin = headers.get(b"origin")
        if origin is not None and not self._allowed(origin.decode("latin-1"), headers.get(b"host", b"")):
            return await _answer(send, 403, f"cross-origin request from {_short(origin)} refused: this route changes"
                                 " state; allowed origins are this server's own"
                                 + (f" and {', '.join(sorted(self.origins))}" if self.origins else "")
                                 + " (MCD_CORS_ORIGINS)")
        kind = headers.get(b"content-type")
        if kind is not None:
            media = kind.split(b";")[0].strip().lower()
            accepted = [b"application/json"]
            if scope["path"].startswith("/v2/models/") and scope["path"].endswith("/infer"):
                accepted.append(b"application/octet-stream")  # a binary tensor body
            if media not in accepted:
                return await _answer(send, 415, f"Content-Type {_short(kind)} is not accepted here: send"
                                     f" {' or '.join(a.decode() for a in accepted)}")
        return await self.app(scope, receive, send)

    def _allowed(self, origin: str, host: bytes) -> bool:
        origin = origin.rstrip("/").lower()
        if self.any_origin or origin in self.origins:
            return True
        scheme, _, netloc = origin.partition("://")
        return scheme in ("http", "https") and bool(host) and netloc == host.decode("latin-1").lower()


def _short(value: bytes, limit: int = 80) -> str:
    text = value.decode("latin-1")
    return repr(text if len(text) <= limit else text[:limit] + "...")
