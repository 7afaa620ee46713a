"""Outcomes in and live quality out: ``POST /v1/models/{name}/outcomes`` and ``GET /v1/models/{name}/quality``
(service/live/ does the work; docs/live-quality.md describes both)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

from service.inputs import ApiError
from service.routes import Context
from service.routes.v1 import ERRORS
from service.schemas import ErrorBody
from service.state import ServiceState

REFUSALS = {**ERRORS, 400: {"model": ErrorBody, "description": "the body is not JSON"},
            409: {"model": ErrorBody, "description": "the server keeps no answers (MCD_STORE=false)"}}


class OutcomesAccepted(BaseModel):
    model: str
    accepted: int = Field(description="outcomes kept")
    duplicates: int = Field(description="outcomes left out: their row had one already (the first one wins)")


class Quality(BaseModel):
    model: str
    task: str
    windows: dict[str, dict[str, Any]] = Field(description="'count' (the newest MCD_QUALITY_WINDOW_ROWS outcomes)"
                                               " and 'time' (those of the last MCD_QUALITY_WINDOW_S seconds):"
                                               " each window's size and figures (docs/live-quality.md)")
    adaptive: list[dict[str, Any]] = Field(default_factory=list, description="the adaptive conformal levels in use"
                                           " (requests with adaptive: true; docs/adaptive.md)")

OUTCOMES_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["id", "row", "y"], "additionalProperties": False, "properties": {
            "id": {"type": "string", "description": "the answer's id (its `id` field)"},
            "row": {"type": "integer", "minimum": 0, "description": "the row's index in that answer"},
            "y": {"description": "the outcome: a number, a list of one number per output, a class index or a"
                                 " class name"}}}}}}}


def install(app: FastAPI, context: Context) -> None:
    state, guarded = context.plane.state, context.guarded

    @app.post("/v1/models/{name}/outcomes", dependencies=guarded, responses=REFUSALS, response_model=OutcomesAccepted,
              openapi_extra={"parameters": [context.model_parameter()], "requestBody": OUTCOMES_BODY},
              tags=["v1"], summary="report outcomes of answered rows: they feed the model's live quality")
    async def report_outcomes(request: Request) -> dict:
        raw = await request.body()
        name = request.path_params["name"]
        manifest = _served(state, name).manifest
        return await state.live.report(name, manifest.task, manifest.class_names, raw)

    @app.get("/v1/models/{name}/quality", dependencies=guarded, responses=REFUSALS, response_model=Quality, tags=["v1"],
             summary="live quality over the count and time windows of reported outcomes")
    async def quality(name: str = context.model_name()) -> dict:
        manifest = _served(state, name).manifest
        return {**await state.live.quality(name, manifest.task), "adaptive": context.plane.adaptive.state(name)}


def _served(state: ServiceState, name: str):
    """The model's served bundle; 409 when the server keeps no answers (MCD_STORE off)."""
    bundle = state.bundle(name)
    if not state.live.enabled:
        raise ApiError(409, "this server keeps no answers (MCD_STORE=false): it cannot score outcomes")
    return bundle
