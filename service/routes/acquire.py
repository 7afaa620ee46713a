"""``POST /v1/models/{name}/acquire``: the rows of a pool to label next (:func:`mcdropout.acquire`).

The pool comes in the request (at most MCD_MAX_ROWS rows, decoded as a v1 predict body is); T and the seed
go through the data plane's checks, k, the method and its settings through the library's
(:func:`mcdropout.acquisition.check_request`), each refusal a 422 naming the field. The picks are
computed on the model's compute lane, the thread that runs its predictions, never on the event loop.
"""

from __future__ import annotations

import asyncio
import functools

from fastapi import FastAPI, Request
from fastapi.responses import Response

from mcdropout.acquisition import acquire, check_request
from mcdropout.bundle import Bundle
from mcdropout.errors import InputError
from service.codecs import acquire as codec
from service.http import FastJSON
from service.inputs import ApiError, InputSpec
from service.routes import Context
from service.routes.v1 import ERRORS, VERSION_PARAMETER
from service.state import ServiceState

_FIELDS = ("k", "method", "samples", "seed", *codec.SETTINGS, "inputs")


def install(app: FastAPI, context: Context) -> None:
    @app.post("/v1/models/{name}/acquire", dependencies=context.guarded, responses=ERRORS, tags=["v1"],
              openapi_extra={"parameters": [context.model_parameter(), VERSION_PARAMETER], "requestBody": {
                  "required": True, "content": {"application/json": {
                      "schema": codec.AcquireRequest.model_json_schema()}}}},
              summary="pick the k rows of a pool to label next: BatchBALD, BALD, stochastic batches")
    async def acquire_rows(request: Request) -> Response:
        raw = await request.body()
        plane = context.plane
        bundle = plane.bundle(request.path_params["name"], request.query_params.get("version"))
        body = await context.decoder.run(len(raw), codec.decode, raw, InputSpec.of(bundle.manifest),
                                         context.settings.max_rows)
        if body.parameters.get("samples") == "auto":
            raise ApiError(422, "samples: acquisition needs a fixed T (every row the same sub-networks), not"
                                " 'auto'", "samples")
        checked = plane.request(bundle, body.rows, body.parameters)
        _check(bundle, body)
        picked = await _on_lane(plane.state, bundle, functools.partial(
            acquire, bundle, body.rows, body.k, body.method, samples=checked.samples, seed=checked.seed,
            memory_budget=context.settings.memory_budget, **body.settings))
        return FastJSON(codec.encode(bundle.name, plane.state.version_of(bundle), bundle.manifest.version,
                                     checked.samples, picked))


def _check(bundle: Bundle, body: codec.AcquireBody) -> None:
    """k, the method and its settings, before any work: 422 naming the field."""
    configurations = body.settings.get("configurations")
    if isinstance(configurations, int) and configurations > codec.MAX_CONFIGURATIONS:
        raise ApiError(422, f"configurations: at most {codec.MAX_CONFIGURATIONS} per request, got"
                            f" {configurations}", "configurations")
    try:
        check_request(body.k, body.method, pool_rows=len(body.rows), **body.settings)
    except InputError as error:
        raise _named(error) from None
    if bundle.manifest.task != "classification":
        raise ApiError(422, f"method: {body.method!r} scores class probabilities; model {bundle.name!r} is a"
                            f" {bundle.manifest.task} model", "method")


async def _on_lane(state: ServiceState, bundle: Bundle, work: functools.partial):
    """``work`` on the model's compute lane, within MCD_REQUEST_TIMEOUT_S (504 past it)."""
    served = state.served_of(bundle)
    if served is None:
        raise ApiError(503, f"model {bundle.name!r} was replaced or unloaded while this request was read; retry",
                       None, {"Retry-After": str(state.settings.retry_after_s)})
    future = asyncio.get_running_loop().run_in_executor(served.batcher.executor, work)
    try:
        return await asyncio.wait_for(asyncio.shield(future), state.settings.request_timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(504, "deadline exceeded: the picks took longer than MCD_REQUEST_TIMEOUT_S; ask for a"
                            " smaller pool, k or T") from None
    except InputError as error:
        raise _named(error) from None


def _named(error: InputError) -> ApiError:
    """The library's refusal as a 422, naming the field its message starts with."""
    field = str(error).partition(":")[0]
    return ApiError(422, str(error), field if field in _FIELDS else None)
