"""Pure ASGI middleware: HEAD as GET, the request-body limit and the request counter (no per-request task overhead)."""

from __future__ import annotations

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
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, send)

    async def _reject(self, scope, send) -> None:
        body = orjson.dumps({"error": f"request body over the limit of {self.limit} bytes (MCD_MAX_BODY_BYTES)"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class RequestCounter:
    """Counts answered requests by route template, model and status."""

    def __init__(self, app, metrics: ServiceMetrics, known: Container[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.known = known
        self._counters: dict[tuple[str, str, str], Any] = {}  # labelled children: labels() locks and hashes

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
