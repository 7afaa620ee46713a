"""The FastAPI app: ``uvicorn service.app:app`` (or ``mcdropout serve``) serves every bundle in MCD_MODELS_DIR."""

from __future__ import annotations

import asyncio
import gc
import hmac
import inspect
import logging
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import mcdropout
from mcdropout.bundle import Bundle, Manifest
from mcdropout.answer import OPTION_NAMES, OptionError, RegressionResult, parse_options, statistics
from service import docs, ui, v2
from service.batcher import Answer
from service.decoding import Decoder, decode_v1, decode_v2
from service.inputs import ApiError, InputSpec, validation_problem
from service.middleware import BodyLimit, HeadAsGet, ReadDeadline, RequestCounter
from service.repository import parse_version
from service.schemas import (
    ClassificationResponse,
    ErrorBody,
    ModelInfo,
    ModelList,
    PredictRequest,
    RegressionResponse,
    V2Error,
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2RepositoryEntry,
    V2ServerMetadata,
)
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("mcdropout.service")


class FastJSON(JSONResponse):
    """JSON through orjson, which writes numpy arrays directly."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


# Bodies up to this size are parsed on the event loop (a few ms); larger ones in the decode worker.
INLINE_BODY_BYTES = 65_536


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    _default_logging()
    state = ServiceState(settings)
    decoder = Decoder(INLINE_BODY_BYTES, settings.decode_worker_idle_s)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # Each model is loaded on its own compute lane, the thread that then runs it (the load runs it
        # once), so that one OpenMP team per lane ever runs torch: with a second team from a loading
        # thread, a one-row digits call took 1.5-2.5 ms on 2 cores instead of 0.7-1.1 ms.
        await state.open()
        grpc_server = None
        if settings.grpc_port:
            from service import oip_grpc  # only when asked for: grpcio and tritonclient's stubs

            grpc_server = await oip_grpc.start(state)
        # What start-up created (modules, models, the app) lives as long as the process; frozen, it is
        # left out of every garbage collection. Unfrozen, the collector's full passes over it took
        # about 30% of the server's CPU under load (perf, 64 clients).
        gc.freeze()
        yield
        if grpc_server is not None:
            await grpc_server.stop(grace=10)  # calls in flight finish
        await state.close()
        decoder.close()

    app = FastAPI(
        **_telemetry_option(settings.otel),
        title="mcdropout",
        version=mcdropout.__version__,
        description="Monte Carlo dropout predictions with uncertainty: native JSON API (v1) and the Open"
        " Inference Protocol (v2).",
        lifespan=lifespan,
        default_response_class=FastJSON,
        docs_url=None,  # /docs and /redoc come from service.docs, with assets served here (no CDN)
        redoc_url=None,
    )
    app.state.service = state
    _error_handlers(app)

    async def authorised(request: Request) -> None:  # async: FastAPI would run a plain def in a worker thread
        if not settings.api_keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        valid = scheme.lower() == "bearer" and any(
            hmac.compare_digest(token.encode(), key.encode()) for key in settings.api_keys
        )
        if not valid:
            raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'", None,
                           {"WWW-Authenticate": "Bearer"})

    # Without keys there is nothing to check: no dependency at all, since FastAPI's dependency
    # resolution costs a tenth of a small request's time on the event loop.
    guarded = [Depends(authorised)] if settings.api_keys else []
    ui.install(app, guarded)
    docs.install(app)

    # Each add_middleware wraps what was added before: the counter runs inside the body limit.
    app.add_middleware(RequestCounter, metrics=state.metrics, known=state.models)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(ReadDeadline, seconds=settings.request_read_timeout_s)
    app.add_middleware(HeadAsGet)
    if settings.cors_origins:  # outermost, so that a browser's preflight is answered before any limit
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Retry-After", v2.HEADER])

    # The path parameter documents the models found at start-up; unknown names still get a 404.
    # With API keys the document stays open, so it does not list the models (a key-holder's GET /v1/models does).
    names = [] if settings.api_keys else state.model_names()
    known = {"enum": names} if names else {}
    described = "a model in MCD_MODELS_DIR"
    versioned = "a version of the model: its folder models/<name>/<version>/ (a flat bundle folder is 1)"

    def model_name() -> Any:
        return PathParam(description=described, json_schema_extra=known or None)

    # The two inference routes take the bare request and document their path parameter here,
    # which spares the event loop FastAPI's parameter resolution (the name validated through
    # pydantic) on every request.
    model_parameter = {"name": "name", "in": "path", "required": True, "description": described,
                       "schema": {"type": "string", **known}}

    version_parameter = {"name": "version", "in": "query", "required": False,
                         "description": "a version of the model (1, 2, ...); default: the highest loaded",
                         "schema": {"type": "string"}}

    errors = {status: {"model": ErrorBody} for status in (401, 404, 413, 422, 503, 504)}
    # The infer body's nested models go to the document's components, where its references point
    # (left inside the body's schema, ReDoc and other resolvers fail on them).
    infer_schema = V2InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    infer_components = infer_schema.pop("$defs", {})
    v2_errors = {status: {"model": V2Error} for status in (400, 401, 404, 413, 422, 503, 504)}

    # -- native API ---------------------------------------------------------------------------

    @app.get("/v1/models", response_model=ModelList, dependencies=guarded, responses=errors,
             tags=["v1"], summary="every model, loaded or failed")
    async def list_models() -> dict:
        return {"models": [_info(state, name) for name in sorted({*state.models, *state.failures})]}

    @app.get("/v1/models/{name}", response_model=ModelInfo, dependencies=guarded, responses=errors,
             tags=["v1"], summary="one model: inputs, outputs, defaults, training record and metrics")
    async def get_model(name: str = model_name(), version: str | None = None) -> dict:
        if version is not None or (name not in state.models and name not in state.failures):
            return _info(state, name, state.bundle(name, version))
        return _info(state, name)

    @app.post(
        "/v1/models/{name}/predict",
        dependencies=guarded,
        responses={200: {"model": RegressionResponse | ClassificationResponse}, **errors},
        openapi_extra={"parameters": [model_parameter, version_parameter], "requestBody": {"required": True, "content": {
            "application/json": {"schema": PredictRequest.model_json_schema()}
        }}},
        tags=["v1"],
        summary="MC dropout prediction: mean, variance, interval / probabilities, entropy, mutual information",
    )
    async def predict(request: Request) -> Response:
        # The body is validated straight from bytes by pydantic's JSON parser, not through FastAPI's
        # body parameter (json.loads, then validation): less of the event loop's time per request.
        raw = await request.body()
        bundle = state.bundle(request.path_params["name"], request.query_params.get("version"))
        manifest = bundle.manifest
        decoded = await decoder.run(len(raw), decode_v1, raw, InputSpec.of(manifest), settings.max_rows,
                                    settings.max_samples)
        body, samples = decoded.request, decoded.samples
        seed = settings.default_seed if body.seed is None else body.seed
        asked = {name: getattr(body, name) for name in OPTION_NAMES if getattr(body, name) is not None}
        try:
            options = parse_options(asked, manifest, body.interval)
        except OptionError as error:
            raise ApiError(422, str(error), error.field) from None
        async with _watching(request) as gone:
            answer = await state.predict(bundle, decoded.rows, samples, seed, body.interval, body.return_samples,
                                         options, gone)
        return FastJSON(_v1_body(manifest, answer, samples, seed, state.version_of(bundle)))

    # -- Open Inference Protocol --------------------------------------------------------------

    @app.get("/v2", response_model=V2ServerMetadata, tags=["v2"], summary="server metadata")
    async def server_metadata() -> dict:
        return {"name": "mcdropout", "version": mcdropout.__version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", response_model=V2Live, tags=["v2"], summary="the process is up")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", response_model=V2Ready, responses={503: {"model": V2Ready}}, tags=["v2"],
             summary="at least one model is loaded and being served")
    async def ready() -> Response:
        is_ready = bool(state.batchers)
        return FastJSON({"ready": is_ready}, status_code=200 if is_ready else 503)

    @app.get("/v2/models/{name}", response_model=V2ModelMetadata, dependencies=guarded,
             responses=v2_errors, tags=["v2"], summary="model metadata: input and output tensors")
    async def model_metadata(name: str = model_name()) -> dict:
        return _v2_metadata(state, name, None)

    @app.get("/v2/models/{name}/versions/{version}", response_model=V2ModelMetadata, dependencies=guarded,
             responses=v2_errors, tags=["v2"], summary="one version's metadata: input and output tensors")
    async def version_metadata(name: str = model_name(), version: str = PathParam(description=versioned)) -> dict:
        return _v2_metadata(state, name, version)

    @app.get("/v2/models/{name}/ready", response_model=V2ModelReady, dependencies=guarded,
             responses={503: {"model": V2ModelReady}, **v2_errors}, tags=["v2"], summary="model readiness")
    async def model_ready(name: str = model_name()) -> Response:
        return _v2_ready(state, name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", response_model=V2ModelReady, dependencies=guarded,
             responses={503: {"model": V2ModelReady}, **v2_errors}, tags=["v2"], summary="one version's readiness")
    async def version_ready(name: str = model_name(), version: str = PathParam(description=versioned)) -> Response:
        return _v2_ready(state, name, version)

    @app.post(
        "/v2/models/{name}/infer",
        dependencies=guarded,
        responses={200: {"model": V2InferResponse}, **v2_errors},
        openapi_extra={"parameters": [model_parameter], "requestBody": {"required": True, "content": {
            "application/json": {"schema": infer_schema}
        }}},
        tags=["v2"],
        summary="inference; parameters carry samples, seed and interval; binary tensor data supported",
    )
    async def infer(request: Request) -> Response:
        return await _v2_infer(state, decoder, request)

    app.add_api_route(
        "/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"], dependencies=guarded,
        responses={200: {"model": V2InferResponse}, **v2_errors}, tags=["v2"], summary="inference by one version",
        openapi_extra={"parameters": [model_parameter, {"name": "version", "in": "path", "required": True,
                                                         "description": versioned, "schema": {"type": "string"}}],
                       "requestBody": {"required": True, "content": {"application/json": {
                           "schema": infer_schema}}}},
    )

    # -- repository extension (OIP) -----------------------------------------------------------

    @app.post("/v2/repository/index", response_model=list[V2RepositoryEntry], dependencies=guarded,
              responses=v2_errors, tags=["v2 repository"], summary="every model version in the folder, and its state")
    async def repository_index(request: Request) -> list:
        ready = v2.index_request(await request.body())
        return [entry for entry in state.index() if not ready or entry["state"] == "READY"]

    @app.post("/v2/repository/models/{name}/load", dependencies=guarded, responses=v2_errors,
              tags=["v2 repository"], summary="load (or reload from the folder) every version of a model")
    async def repository_load(name: str = model_name()) -> dict:
        await state.reload(name)
        if name in state.failures:
            raise ApiError(400, f"model {name!r} failed to load: {state.failures[name]}")
        return {}

    @app.post("/v2/repository/models/{name}/unload", dependencies=guarded, responses=v2_errors,
              tags=["v2 repository"], summary="stop serving a model (requests in flight finish)")
    async def repository_unload(name: str = model_name()) -> dict:
        await state.unload(name)
        return {}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = FastAPI.openapi(app).setdefault("components", {}).setdefault("schemas", {})
            for name, schema in infer_components.items():
                schemas.setdefault(name, schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


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


def _info(state: ServiceState, name: str, bundle: Bundle | None = None) -> dict:
    if bundle is None and name in state.failures:
        return {"name": name, "status": "failed", "error": state.failures[name], "versions": state.versions(name)}
    bundle = bundle or state.models[name]
    manifest = bundle.manifest
    return {
        "name": name, "status": "ready", "version": manifest.version, "model_version": state.version_of(bundle),
        "versions": state.versions(name), "task": manifest.task,
        "description": manifest.description, "input_shape": manifest.input_shape,
        "feature_names": manifest.feature_names, "outputs": manifest.output_names, "classes": manifest.class_names,
        "default_samples": manifest.samples, "max_samples": min(manifest.max_samples, state.settings.max_samples),
        "max_rows": state.settings.max_rows, "dropout": manifest.dropout, "tau": manifest.tau,
        "training": manifest.training, "metrics": manifest.metrics,
        "calibration": None if manifest.calibration is None else manifest.calibration.summary(),
    }


def _v2_version(version: str | None) -> str | None:
    try:
        parse_version(version)
    except ValueError as error:
        raise v2.error(str(error)) from None
    return version


def _v2_metadata(state: ServiceState, name: str, version: str | None) -> dict:
    bundle = state.bundle(name, _v2_version(version))
    return v2.model_metadata(bundle.manifest, [str(number) for number in sorted(state.served.get(name, {}))])


def _v2_ready(state: ServiceState, name: str, version: str | None) -> Response:
    if not state.is_ready(name, _v2_version(version)):
        return FastJSON({"name": name, "ready": False}, status_code=503)
    return FastJSON({"name": name, "ready": True})


async def _v2_infer(state: ServiceState, decoder: Decoder, request: Request) -> Response:
    settings = state.settings
    body = await request.body()
    # The model is looked up after the body is read; a version swapped while a large body is decoded
    # is answered 503 (retry) by ServiceState.predict.
    bundle = state.bundle(request.path_params["name"], _v2_version(request.path_params.get("version")))
    decoded = await decoder.run(len(body), decode_v2, body, request.headers.get(v2.HEADER),
                                InputSpec.of(bundle.manifest), settings.max_rows)
    infer_request = decoded.request
    params = v2.parameters(infer_request, bundle.manifest, settings.default_seed, settings.max_samples)
    async with _watching(request) as gone:
        answer = await state.predict(bundle, decoded.rows, params["samples"], params["seed"], params["interval"],
                                     False, params["options"], gone)
    content, headers = v2.response(infer_request, bundle.manifest, answer.result, params,
                                   str(state.version_of(bundle)))
    return Response(content, headers=headers)


@asynccontextmanager
async def _watching(request: Request):
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


def _v1_body(manifest: Manifest, answer: Answer, samples: int | str, seed: int, model_version: int = 1) -> dict:
    result = answer.result
    body: dict[str, Any] = {"model": manifest.name, "version": manifest.version, "model_version": model_version,
                            "task": manifest.task,
                            "samples": samples, "samples_used": result.samples_used, "seed": seed}
    if isinstance(result, RegressionResult):
        body.update(outputs=result.outputs, interval={"level": result.level, "method": result.interval_method})
    else:
        body.update(classes=manifest.class_names or [])
        if result.set_level is not None:
            body["set_level"] = result.set_level
    for stat in statistics(manifest.task):  # the answer's statistics, as mcdropout.answer declares them
        value = getattr(result, stat.name)
        if value is None:
            continue
        if stat.shape == "set":
            members = result.set_members()
            classes = body["classes"]
            body[stat.name] = members
            body[f"{stat.name}_names"] = [[classes[i] for i in row] for row in members]
            continue
        (body[stat.within] if stat.within else body)[stat.name] = value.tolist() if stat.kind == "str" else value
    if answer.draws is not None:
        body["draws"] = answer.draws
    return body


def _is_v2(request: Request) -> bool:
    return request.url.path.startswith("/v2")


MAX_ERROR_CHARS = 1000  # an error text never echoes a large input back whole


def _error_response(request: Request, status: int, message: str, field: str | None = None,
                    headers: dict[str, str] | None = None) -> Response:
    if len(message) > MAX_ERROR_CHARS:
        message = f"{message[:MAX_ERROR_CHARS]}... ({len(message)} characters)"
    content: dict[str, Any] = {"error": message}
    if field is not None and not _is_v2(request):
        content["field"] = field
    return FastJSON(content, status_code=status, headers=headers)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> Response:
        return _error_response(request, error.status, error.message, error.field, error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> Response:
        problem = validation_problem(list(error.errors()))
        return _error_response(request, problem.status, problem.message, problem.field)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect) -> Response:
        # the client left while its body was being read: nobody reads this; counted as 499, not logged as an error
        return Response(status_code=499)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        return _error_response(request, error.status_code, str(error.detail), None, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_response(request, 500, f"internal error: {type(error).__name__}; see the server log")


def _settings_or_exit() -> Settings:
    """The MCD_* settings; a bad one stops the server before it serves, with one line per problem."""
    try:
        return Settings()
    except ValidationError as problem:
        lines = [f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg']}" for error in problem.errors()]
        raise SystemExit("mcdropout serve: bad settings: " + "; ".join(lines)) from None


app = create_app(_settings_or_exit())
