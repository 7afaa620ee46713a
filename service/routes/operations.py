"""Operations: Prometheus metrics."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import Response

from service.routes import Context


def install(app: FastAPI, context: Context) -> None:
    metrics = context.plane.state.metrics

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {}}}})
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")
