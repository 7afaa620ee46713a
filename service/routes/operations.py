"""Operations: Prometheus metrics, and the state of each worker process."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from service.routes import Context
from service.workers import states


def install(app: FastAPI, context: Context) -> None:
    metrics = context.plane.state.metrics
    # its series name every model, which /openapi.json hides behind keys: guarded too, unless opened
    guarded = [] if context.settings.open_metrics else context.guarded

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", dependencies=guarded,
             responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/workers", tags=["operations"], dependencies=context.guarded,
             summary="each worker process (`mcdropout serve --workers N`): its pid, the repository changes it has"
             " applied (a generation) and the model versions it serves")
    async def workers(request: Request) -> list[dict]:
        return states(request)
