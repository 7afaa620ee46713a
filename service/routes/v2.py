"""The Open Inference Protocol (KServe v2) over HTTP: server and model metadata, health, and infer
(JSON and the binary tensor data extension)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import Response

import mcdropout
from service.codecs import v2
from service.http import FastJSON, watching
from service.inputs import InputSpec
from service.repository import parse_version
from service.routes import VERSIONED, Context
from service.schemas import V2Error, V2InferRequest, V2InferResponse, V2Live, V2ModelMetadata, V2ModelReady, \
    V2Ready, V2ServerMetadata
from service.state import ServiceState

ERRORS = {status: {"model": V2Error} for status in (400, 401, 404, 413, 422, 503, 504)}
# The infer body's nested models go to the document's components, where its references point
# (left inside the body's schema, ReDoc and other resolvers fail on them).
INFER_SCHEMA = V2InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")
INFER_COMPONENTS = INFER_SCHEMA.pop("$defs", {})


def install(app: FastAPI, context: Context) -> None:
    state, guarded = context.plane.state, context.guarded
    _health(app, state)

    @app.get("/v2/models/{name}", response_model=V2ModelMetadata, dependencies=guarded,
             responses=ERRORS, tags=["v2"], summary="model metadata: input and output tensors")
    async def model_metadata(name: str = context.model_name()) -> dict:
        return metadata(state, name, None)

    @app.get("/v2/models/{name}/versions/{version}", response_model=V2ModelMetadata, dependencies=guarded,
             responses=ERRORS, tags=["v2"], summary="one version's metadata: input and output tensors")
    async def version_metadata(name: str = context.model_name(), version: str = PathParam(description=VERSIONED)
                               ) -> dict:
        return metadata(state, name, version)

    @app.get("/v2/models/{name}/ready", response_model=V2ModelReady, dependencies=guarded,
             responses={503: {"model": V2ModelReady}, **ERRORS}, tags=["v2"], summary="model readiness")
    async def model_ready(name: str = context.model_name()) -> Response:
        return ready(state, name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready", response_model=V2ModelReady, dependencies=guarded,
             responses={503: {"model": V2ModelReady}, **ERRORS}, tags=["v2"], summary="one version's readiness")
    async def version_ready(name: str = context.model_name(), version: str = PathParam(description=VERSIONED)
                            ) -> Response:
        return ready(state, name, version)

    async def infer(request: Request) -> Response:
        body = await request.body()
        plane = context.plane
        # The model is looked up after the body is read; a version swapped while a large body is decoded
        # is answered 503 (retry) by ServiceState.predict.
        bundle = plane.bundle(request.path_params["name"], checked_version(request.path_params.get("version")))
        decoded = await context.decoder.run(len(body), v2.decode, body, request.headers.get(v2.HEADER),
                                            InputSpec.of(bundle.manifest), context.settings.max_rows)
        plane.check_outputs(bundle, decoded.request, len(decoded.rows))
        asked = plane.request(bundle, decoded.rows, v2.parameters_of(decoded.request), prefix="parameters.",
                              draws=False, rows_field=f"input {v2.INPUT_NAME!r}", answer_id=decoded.request.id)
        async with watching(request) as gone:
            answer = await plane.infer(asked, gone)
        content, headers = v2.response(decoded.request, answer)
        return Response(content, headers=headers)

    body = {"required": True, "content": {"application/json": {"schema": INFER_SCHEMA}}}
    version = {"name": "version", "in": "path", "required": True, "description": VERSIONED,
               "schema": {"type": "string"}}
    for path, parameters, summary in (
            ("/v2/models/{name}/infer", [context.model_parameter()],
             "inference; parameters carry samples, seed, interval and the calibration options; binary tensor data"
             " supported"),
            ("/v2/models/{name}/versions/{version}/infer", [context.model_parameter(), version],
             "inference by one version")):
        app.add_api_route(path, infer, methods=["POST"], dependencies=guarded, tags=["v2"], summary=summary,
                          responses={200: {"model": V2InferResponse}, **ERRORS},
                          openapi_extra={"parameters": parameters, "requestBody": body})


def _health(app: FastAPI, state: ServiceState) -> None:
    @app.get("/v2", response_model=V2ServerMetadata, tags=["v2"], summary="server metadata")
    async def server_metadata() -> dict:
        return {"name": "mcdropout", "version": mcdropout.__version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", response_model=V2Live, tags=["v2"], summary="the process is up")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready", response_model=V2Ready, responses={503: {"model": V2Ready}}, tags=["v2"],
             summary="at least one model is loaded and being served")
    async def server_ready() -> Response:
        is_ready = bool(state.batchers)
        return FastJSON({"ready": is_ready}, status_code=200 if is_ready else 503)


def checked_version(version: str | None) -> str | None:
    """A version path parameter: 400 when it is not a version number (the OIP's status for a bad request)."""
    try:
        parse_version(version)
    except ValueError as error:
        raise v2.error(str(error)) from None
    return version


def metadata(state: ServiceState, name: str, version: str | None) -> dict[str, Any]:
    bundle = state.bundle(name, checked_version(version))
    return v2.model_metadata(bundle.manifest, [str(number) for number in sorted(state.served.get(name, {}))])


def ready(state: ServiceState, name: str, version: str | None) -> Response:
    if not state.is_ready(name, checked_version(version)):
        return FastJSON({"name": name, "ready": False}, status_code=503)
    return FastJSON({"name": name, "ready": True})
