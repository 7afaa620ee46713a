"""What every HTTP route shares: the JSON response class, the API-key dependency, the client watcher and
the error answers (``{"error": ..., "field": ...}``; v2 routes leave out ``field``, as the OIP error has none)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.dataplane import valid_key
from service.inputs import ApiError, validation_problem

log = logging.getLogger("mcdropout.service")
MAX_ERROR_CHARS = 1000  # an error text never echoes a large input back whole


class FastJSON(JSONResponse):
    """JSON through orjson, which writes numpy arrays directly."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def key_guard(keys: list[str]) -> list[Any]:
    """The routes' dependencies: the API-key check when keys are set, else none at all (FastAPI's
    dependency resolution costs a tenth of a small request's time on the event loop)."""
    if not keys:
        return []

    async def authorised(request: Request) -> None:  # async: FastAPI would run a plain def in a worker thread
        given = request.headers.getlist("authorization")
        if len(given) > 1:  # which one counts would be the reader's choice: refused, as over gRPC
            raise ApiError(401, "more than one Authorization header: send one", None, {"WWW-Authenticate": "Bearer"})
        if not valid_key(given[0] if given else "", keys):
            raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'", None,
                           {"WWW-Authenticate": "Bearer"})

    return [Depends(authorised)]


@asynccontextmanager
async def watching(request: Request):
    """A task that ends when the client disconnects (ASGI's http.disconnect, once the body is read), so
    that a request whose client went away is dropped before its work runs."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        yield watcher
    finally:
        watcher.cancel()


def error_response(request: Request, status: int, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> Response:
    if len(message) > MAX_ERROR_CHARS:
        message = f"{message[:MAX_ERROR_CHARS]}... ({len(message)} characters)"
    content: dict[str, Any] = {"error": message}
    if field is not None and not request.url.path.startswith("/v2"):
        content["field"] = field
    return FastJSON(content, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return error_response(request, error.status, error.message, error.field, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        problem = validation_problem(list(error.errors()))
        return error_response(request, problem.status, problem.message, problem.field)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect) -> Response:
        # the client left while its body was being read: nobody reads this; counted as 499, not logged as an error
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        return error_response(request, error.status_code, str(error.detail), None, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        reference = uuid.uuid4().hex[:12]
        log.error("unhandled error %s on %s %s", reference, request.method, request.url.path, exc_info=error)
        return error_response(request, 500, f"internal error {reference}; the server log has it")
