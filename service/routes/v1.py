"""The native JSON API: model listing, model information, and predict."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from mcdropout.bundle import Bundle
from service.codecs import v1
from service.http import FastJSON, watching
from service.inputs import InputSpec
from service.routes import Context
from service.schemas import ClassificationResponse, ErrorBody, ModelInfo, ModelList, PredictRequest, \
    RegressionResponse
from service.state import ServiceState

ERRORS = {status: {"model": ErrorBody} for status in (401, 404, 413, 422, 503, 504)}
VERSION_PARAMETER = {"name": "version", "in": "query", "required": False,
                     "description": "a version of the model (1, 2, ...); default: the highest loaded",
                     "schema": {"type": "string"}}


def install(app: FastAPI, context: Context) -> None:
    state, guarded = context.plane.state, context.guarded

    @app.get("/v1/models", response_model=ModelList, dependencies=guarded, responses=ERRORS,
             tags=["v1"], summary="every model, loaded or failed")
    async def list_models() -> dict:
        return {"models": [info(state, name) for name in sorted({*state.models, *state.failures})]}

    @app.get("/v1/models/{name}", response_model=ModelInfo, dependencies=guarded, responses=ERRORS,
             tags=["v1"], summary="one model: inputs, outputs, defaults, training record and metrics")
    async def get_model(name: str = context.model_name(), version: str | None = None) -> dict:
        if version is not None or (name not in state.models and name not in state.failures):
            return info(state, name, state.bundle(name, version))
        return info(state, name)

    @app.post("/v1/models/{name}/predict", dependencies=guarded,
              responses={200: {"model": RegressionResponse | ClassificationResponse}, **ERRORS},
              openapi_extra={"parameters": [context.model_parameter(), VERSION_PARAMETER], "requestBody": {
                  "required": True, "content": {"application/json": {"schema": PredictRequest.model_json_schema()}}}},
              tags=["v1"], summary="MC dropout prediction: mean, variance, interval / probabilities, entropy,"
              " mutual information")
    async def predict(request: Request) -> Response:
        # The body is validated straight from bytes by pydantic's JSON parser, not through FastAPI's
        # body parameter (json.loads, then validation): less of the event loop's time per request.
        raw = await request.body()
        plane = context.plane
        bundle = plane.bundle(request.path_params["name"], request.query_params.get("version"))
        body = await context.decoder.run(len(raw), v1.decode, raw, InputSpec.of(bundle.manifest),
                                         context.settings.max_rows)
        infer = plane.request(bundle, body.rows, body.parameters, answer_id=body.answer_id)
        async with watching(request) as gone:
            answer = await plane.infer(infer, gone)
        return FastJSON(v1.encode(answer))


def info(state: ServiceState, name: str, bundle: Bundle | None = None) -> dict[str, Any]:
    """``GET /v1/models/{name}``: a failed model's reason, or a served version's description."""
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
