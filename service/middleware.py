"""Pure ASGI middleware: the request-body limit, the request counter (no per-request task overhead),
and the lane that takes inference requests past Starlette's routing and exception layers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Container
from typing import Any

import orjson
from fastapi import FastAPI, Request
from starlette.routing import BaseRoute, Match

from service.metrics import ServiceMetrics


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


class InferenceLane:
    """Serves the routes at ``paths`` (the inference routes) straight from their endpoints.

    Under FastAPI a request passes about ten layers before its endpoint runs:
    exception and telemetry middleware, an exit stack, the router trying routes
    in turn, the route's request/response wrapper. In-process they took some 70
    of the 150 us of event-loop time a one-row prediction cost, and under load
    the loop is what limits throughput. This lane sits inside the app's own middleware
    (the body limit and the request counter still see every request) and, for a
    POST that one of its routes matches, authorises, calls the endpoint with the
    bare request and answers errors with the app's own exception handlers, as
    FastAPI would. Anything else goes on to FastAPI unchanged; so do exceptions
    with no handler, to the app's handler of last resort.
    """

    def __init__(self, app, fastapi_app: FastAPI, paths: Collection[str],
                 authorise: Callable[[Request], Awaitable[None]]) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.paths = paths
        self.authorise = authorise
        self._routes: list[BaseRoute] | None = None  # the app's routes exist only after this is built

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if self._routes is None:
            self._routes = [route for route in self.fastapi_app.router.routes
                            if getattr(route, "path", None) in self.paths]
        for route in self._routes:
            match, child_scope = route.matches(scope)
            if match == Match.FULL:
                scope.update(child_scope)
                break
        else:
            return await self.app(scope, receive, send)
        request = Request(scope, receive, send)
        try:
            await self.authorise(request)
            response = await scope["endpoint"](request)
        except Exception as error:
            handler = self._handler(error)
            if handler is None:
                raise
            response = await handler(request, error)
        await response(scope, receive, send)

    def _handler(self, error: Exception):
        handlers = self.fastapi_app.exception_handlers
        for kind in type(error).__mro__:
            if kind is not Exception and kind in handlers:  # Exception's handler is the outermost layer's
                return handlers[kind]
        return None
