"""The OIP model repository extension: the index, load (or reload from the folder) and unload."""

from __future__ import annotations

from fastapi import FastAPI, Request

from service.codecs import v2
from service.inputs import ApiError
from service.routes import Context
from service.routes.v2 import ERRORS
from service.schemas import V2RepositoryEntry
from service.workers import publish


def install(app: FastAPI, context: Context) -> None:
    state, guarded = context.plane.state, context.guarded

    @app.post("/v2/repository/index", response_model=list[V2RepositoryEntry], dependencies=guarded,
              responses=ERRORS, tags=["v2 repository"], summary="every model version in the folder, and its state")
    async def repository_index(request: Request) -> list:
        ready = v2.index_request(await request.body())
        return [entry for entry in state.index() if not ready or entry["state"] == "READY"]

    @app.post("/v2/repository/models/{name}/load", dependencies=guarded, responses=ERRORS,
              tags=["v2 repository"], summary="load (or reload from the folder) every version of a model")
    async def repository_load(request: Request, name: str = context.model_name()) -> dict:
        await state.reload(name)
        await publish(request, "load", name)  # answered once every worker process has it
        if name in state.failures:
            raise ApiError(400, f"model {name!r} failed to load: {state.failures[name]}")
        return {}

    @app.post("/v2/repository/models/{name}/unload", dependencies=guarded, responses=ERRORS,
              tags=["v2 repository"], summary="stop serving a model (requests in flight finish)")
    async def repository_unload(request: Request, name: str = context.model_name()) -> dict:
        await state.unload(name)
        await publish(request, "unload", name)
        return {}
