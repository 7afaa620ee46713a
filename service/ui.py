"""The browser playground at ``/ui``: static pages shipped in the package, plus two routes of their own.

The pages talk to the v1 JSON API like any client; their own routes give what the API does not expose:
each model's example input (the manifest's, else the training means), and the percentiles of its served
uncertainty over its held-out rows (:mod:`service.scales`), the scales the page draws an answer against.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.params import Depends
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from mcdropout.bundle import Manifest
from service.scales import Scales

STATIC = Path(__file__).resolve().parent / "ui" / "static"
_SEQUENCE_FREQUENCY = 0.4  # radians per step: a wave of the kind the shipped sequence model saw
_TEXT_EXAMPLE = "a short sentence to classify"


def install(app: FastAPI, guarded: list[Depends]) -> None:
    """Serve the playground at /ui; the example route sits behind the API keys like the v1 routes."""

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/ui/example/{name}", dependencies=guarded, include_in_schema=False,
             summary="an example input row for the playground: the manifest's, else built from its training means")
    async def example(request: Request, name: str) -> dict:
        bundle = request.app.state.service.bundle(name)
        return {"name": name, **example_input(bundle.manifest)}

    scales = Scales()

    @app.get("/ui/scales/{name}", dependencies=guarded, include_in_schema=False,
             summary="the percentiles of the model's served uncertainty over its held-out rows")
    async def uncertainty_scales(request: Request, name: str) -> dict:
        state = request.app.state.service
        bundle = state.bundle(name)
        return {"name": name, **await scales.of(bundle, state.batchers[name].executor, state.settings.default_seed,
                                                state.settings.allowed_data_dirs)}

    app.mount("/ui/", StaticFiles(directory=STATIC, html=True), name="ui")


def example_input(manifest: Manifest) -> dict[str, Any]:
    """One row for the model page to predict on opening; ``inputs`` is None where the page draws one (images)."""
    recorded = (manifest.training or {}).get("example")
    if manifest.text is not None:  # a text model: a string, and text unlike its training rows where recorded
        outside = (manifest.training or {}).get("outside_examples") or []
        return {"inputs": recorded if isinstance(recorded, str) else _TEXT_EXAMPLE,
                "source": "the bundle's example" if isinstance(recorded, str) else "a sentence of the page's",
                "outside": [text for text in outside if isinstance(text, str)]}
    if recorded is not None:
        return {"inputs": recorded, "source": "the bundle's example"}
    shape = manifest.input_shape
    if len(shape) == 3:
        return {"inputs": None, "source": "a digit drawn by the page"}
    means = manifest.input_standardisation.mean if manifest.input_standardisation else [0.0]
    if len(shape) == 1:
        row = [float(means[i % len(means)]) for i in range(shape[0])]
        return {"inputs": row, "source": "the training means"}
    steps, width = shape[0], math.prod(shape[1:])
    row = [[round(math.sin(_SEQUENCE_FREQUENCY * t), 4)] * width for t in range(steps)]
    return {"inputs": row, "source": f"a sine wave, sin({_SEQUENCE_FREQUENCY} t)"}
