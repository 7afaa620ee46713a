"""The acquire body (``POST /v1/models/{name}/acquire``): a pool of rows, k, a method and its settings.

Decoded like a v1 predict body (the same rows, the same errors naming the field), on the event loop or
in the decode worker for a large pool: nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from pydantic import ConfigDict, Field, ValidationError, create_model

from service.inputs import ApiError, InputSpec, instances_array, rows_array, validation_problem
from service.schemas import PARAMETERS

if TYPE_CHECKING:
    import numpy as np

# The library's methods (mcdropout.acquisition.METHODS), for the documented body; the route checks them.
METHODS = ("batchbald", "bald", "power", "softmax", "softrank", "entropy", "margin", "random")
MAX_CONFIGURATIONS = 10_000  # BatchBALD's sampled configurations per request: its work grows with them

AcquireRequest = create_model(
    "AcquireRequest", __config__=ConfigDict(extra="forbid"),
    inputs=(Optional[list[Any]], Field(None, description="the pool: rows, each of the model's input shape")),
    instances=(Optional[list[dict[str, Any]]], Field(None, description="the pool as tabular rows {feature: value}")),
    k=(Any, Field(description="rows to pick, from 1 to the pool's size",
                  json_schema_extra={"type": "integer", "minimum": 1})),
    method=(Any, Field("batchbald", description="how to pick", json_schema_extra={"enum": list(METHODS)})),
    samples=(Any, Field(None, description="MC samples T (default: the model's); a fixed number, not 'auto'",
                        json_schema_extra={"anyOf": [{"type": "integer", "minimum": 2}, {"type": "null"}]})),
    seed=(Any, PARAMETERS["seed"]),
    beta=(Any, Field(None, description="power, softmax, softrank: the coldness beta (default 1)",
                     json_schema_extra={"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "null"}]})),
    candidates=(Any, Field(None, description="batchbald: search only this many rows of highest BALD (default:"
                           " every row)", json_schema_extra={"anyOf": [{"type": "integer"}, {"type": "null"}]})),
    configurations=(Any, Field(None, description="batchbald: label configurations sampled once the exact joint"
                               f" does not fit (default 1000, at most {MAX_CONFIGURATIONS})",
                               json_schema_extra={"anyOf": [{"type": "integer", "minimum": 1,
                                                             "maximum": MAX_CONFIGURATIONS}, {"type": "null"}]})),
)
SETTINGS = ("beta", "candidates", "configurations")


@dataclass(frozen=True)
class AcquireBody:
    rows: np.ndarray
    k: Any
    method: Any
    parameters: dict[str, Any]  # samples and seed, as the data plane checks them
    settings: dict[str, Any]  # the method's own, given ones only


def decode(raw: bytes, spec: InputSpec, max_rows: int) -> AcquireBody:
    """Parse an acquire body and validate its rows; k, the method and the settings are checked by the route."""
    try:
        body = AcquireRequest.model_validate_json(raw)
    except ValidationError as problem:
        raise validation_problem(problem.errors(include_url=False, include_context=True),
                                 allowed=tuple(AcquireRequest.model_fields)) from None
    if (body.inputs is None) == (body.instances is None):
        raise ApiError(422, "give exactly one of 'inputs' (lists of values) or 'instances' ({feature: value})",
                       "inputs")
    if body.inputs is not None:
        rows = rows_array(body.inputs, spec, max_rows)
    else:
        rows = instances_array(body.instances, spec, max_rows)
    parameters = {name: getattr(body, name) for name in ("samples", "seed") if getattr(body, name) is not None}
    settings = {name: getattr(body, name) for name in SETTINGS if getattr(body, name) is not None}
    return AcquireBody(rows, body.k, body.method, parameters, settings)


def encode(name: str, model_version: int, version: str, samples: int, picked: Any) -> dict[str, Any]:
    """The answer: the picks in order with each step's score, every pool row's BALD, and the run's settings."""
    return {"model": name, "version": version, "model_version": model_version, "method": picked.method,
            "samples": samples, "seed": picked.seed, "k": len(picked.indices), "indices": picked.indices.tolist(),
            "scores": picked.scores.tolist(),
            "standard_errors": None if picked.standard_errors is None else picked.standard_errors.tolist(),
            "bald": picked.bald.tolist(), "parameters": picked.parameters, "exact_steps": picked.exact_steps}
