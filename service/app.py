"""The FastAPI app: ``uvicorn service.app:app`` (or ``mcdropout serve``) serves every bundle in MCD_MODELS_DIR.

``create_app`` only assembles: the service state and its data plane (service/dataplane.py), the route
modules (service/routes/), the playground and the API docs, the middleware, and gRPC when asked for.
"""

from __future__ import annotations

import gc
import inspect
import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from pydantic import ValidationError

import mcdropout
from service import docs, ui
from service.codecs import v2
from service.dataplane import DataPlane
from service.decoding import Decoder
from service.http import FastJSON, install_error_handlers, key_guard
from service.middleware import BodyLimit, CrossOriginGuard, HeadAsGet, ReadDeadline, RequestCounter
from service.routes import Context, operations, repository
from service.routes import outcomes as outcome_routes
from service.routes import v1 as v1_routes
from service.routes import v2 as v2_routes
from service.settings import Settings
from service.state import ServiceState

# Bodies up to this size are parsed on the event loop (a few ms); larger ones in the decode worker.
INLINE_BODY_BYTES = 65_536


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    _default_logging()
    state = ServiceState(settings)
    plane = DataPlane(state)
    decoder = Decoder(INLINE_BODY_BYTES, settings.decode_worker_idle_s)
    app = FastAPI(
        **_telemetry_option(settings.otel), title="mcdropout", version=mcdropout.__version__,
        description="Monte Carlo dropout predictions with uncertainty: native JSON API (v1) and the Open"
        " Inference Protocol (v2).",
        lifespan=_lifespan(plane, decoder), default_response_class=FastJSON,
        docs_url=None, redoc_url=None,  # /docs and /redoc come from service.docs, with assets served here (no CDN)
    )
    app.state.service = state
    install_error_handlers(app)
    guarded = key_guard(settings.api_keys)
    # With API keys the document stays open, so it does not list the models (a key-holder's GET /v1/models does).
    context = Context(plane, decoder, guarded, [] if settings.api_keys else state.model_names())
    for routes in (v1_routes, v2_routes, repository, operations):
        routes.install(app, context)
    outcome_routes.install(app, context)  # outcomes in, live quality out (service/live/)
    ui.install(app, guarded)
    docs.install(app)
    _middleware(app, state, settings)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


def _lifespan(plane: DataPlane, decoder: Decoder):
    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Each model is loaded on its own compute lane, the thread that then runs it (the load runs it
        # once), so that one OpenMP team per lane ever runs torch: with a second team from a loading
        # thread, a one-row digits call took 1.5-2.5 ms on 2 cores instead of 0.7-1.1 ms.
        await plane.state.open()
        grpc_server = None
        if plane.settings.grpc_port:
            from service.routes import grpc  # only when asked for: grpcio and tritonclient's stubs

            grpc_server = await grpc.start(plane)
        # What start-up created (modules, models, the app) lives as long as the process; frozen, it is
        # left out of every garbage collection. Unfrozen, the collector's full passes over it took
        # about 30% of the server's CPU under load (perf, 64 clients).
        gc.freeze()
        yield
        if grpc_server is not None:
            await grpc_server.stop(grace=10)  # calls in flight finish
        await plane.state.close()
        decoder.close()

    return lifespan


def _middleware(app: FastAPI, state: ServiceState, settings: Settings) -> None:
    # Each add_middleware wraps what was added before: the counter runs inside the body limit, and counts the
    # cross-origin guard's refusals.
    app.add_middleware(CrossOriginGuard, origins=settings.cors_origins)
    app.add_middleware(RequestCounter, metrics=state.metrics, known=state.models)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(ReadDeadline, seconds=settings.request_read_timeout_s)
    app.add_middleware(HeadAsGet)
    if settings.cors_origins:  # outermost, so that a browser's preflight is answered before any limit
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Retry-After", v2.HEADER])


def _openapi(app: FastAPI):
    """The OpenAPI document with the v2 infer body's nested schemas among its components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = FastAPI.openapi(app).setdefault("components", {}).setdefault("schemas", {})
            for name, schema in v2_routes.INFER_COMPONENTS.items():
                schemas.setdefault(name, schema)
        return app.openapi_schema

    return openapi


def _default_logging() -> None:
    """The service's info lines (one per model at start-up, reloads) on stderr, as uvicorn prints its own,
    unless the process configured logging itself."""
    package = logging.getLogger("mcdropout")
    if package.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    package.addHandler(handler)
    package.setLevel(logging.INFO)


def _telemetry_option(enabled: bool) -> dict[str, Any]:
    """FastAPI's ``telemetry`` argument, for the FastAPI releases that have native OpenTelemetry."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": enabled, "metrics": enabled, "logs": enabled}}


def _settings_or_exit() -> Settings:
    """The MCD_* settings; a bad one stops the server before it serves, with one line per problem."""
    try:
        return Settings()
    except ValidationError as problem:
        lines = [f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg']}" for error in problem.errors()]
        raise SystemExit("mcdropout serve: bad settings: " + "; ".join(lines)) from None


app = create_app(_settings_or_exit())
