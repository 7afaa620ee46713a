"""The app's routes, one module per surface: v1 (native JSON), v2 (Open Inference Protocol over HTTP),
repository (the OIP repository extension), operations (metrics), and gRPC (``service.routes.grpc``).
Each handler decodes with its protocol's codec, calls the data plane, and encodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import Path as PathParam

from service.dataplane import DataPlane
from service.decoding import Decoder

DESCRIBED = "a model in MCD_MODELS_DIR"
VERSIONED = "a version of the model: its folder models/<name>/<version>/ (a flat bundle folder is 1)"


@dataclass
class Context:
    """What the route modules share: the data plane, the body decoder, the API-key dependencies, and the
    model names found at start-up (documented as the path parameter's values; empty with API keys)."""

    plane: DataPlane
    decoder: Decoder
    guarded: list[Any]
    names: list[str] = field(default_factory=list)

    @property
    def settings(self):
        return self.plane.settings

    def model_name(self) -> Any:
        """The ``name`` path parameter of the routes FastAPI resolves."""
        return PathParam(description=DESCRIBED, json_schema_extra={"enum": self.names} if self.names else None)

    def model_parameter(self) -> dict[str, Any]:
        """The ``name`` path parameter documented for the inference routes, which take the bare request
        (no parameter resolution through pydantic on every request)."""
        return {"name": "name", "in": "path", "required": True, "description": DESCRIBED,
                "schema": {"type": "string", **({"enum": self.names} if self.names else {})}}
