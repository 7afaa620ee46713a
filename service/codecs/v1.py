"""The native JSON API (v1): a predict body to rows and parameters, an answer to the JSON body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from mcdropout.answer import RegressionResult, statistics
from service.inputs import ApiError, InputSpec, instances_array, rows_array, validation_problem
from service.schemas import PARAMETERS, PredictRequest
from service.text import text_rows

if TYPE_CHECKING:  # for types only: decode runs in the decode worker, without torch
    import numpy as np

    from service.request import InferAnswer


@dataclass(frozen=True)
class V1Body:
    """A v1 predict body: its rows as an array, and its parameters by name (absent ones left out)."""

    rows: np.ndarray
    parameters: dict[str, Any]
    answer_id: Any = None  # the client's id of the answer (checked by the data plane)


def decode(raw: bytes, spec: InputSpec, max_rows: int) -> V1Body:
    """Parse a v1 predict body and validate its rows (ApiError names the field at fault); the parameters
    are checked by the data plane."""
    try:
        body = PredictRequest.model_validate_json(raw)
    except ValidationError as problem:
        raise validation_problem(problem.errors(include_url=False, include_context=True),
                                 allowed=tuple(PredictRequest.model_fields)) from None
    if (body.inputs is None) == (body.instances is None):
        raise ApiError(422, "give exactly one of 'inputs' (lists of values) or 'instances' ({feature: value})",
                       "inputs")
    if spec.text and body.instances is not None:
        raise ApiError(422, f"model {spec.name!r} takes text: send 'inputs', a list of strings", "instances")
    if body.inputs is not None and spec.text:
        rows = text_rows(body.inputs, max_rows)
    elif body.inputs is not None:
        rows = rows_array(body.inputs, spec, max_rows)
    else:
        rows = instances_array(body.instances, spec, max_rows)
    given = {name: getattr(body, name) for name in PARAMETERS if getattr(body, name) is not None}
    return V1Body(rows, given, body.id)


def encode(answer: InferAnswer) -> dict[str, Any]:
    """The v1 JSON body of ``answer``: the echo of the request, then the statistics mcdropout.answer declares."""
    request, result, manifest = answer.request, answer.result, answer.manifest
    body: dict[str, Any] = {"model": manifest.name, "version": manifest.version, "model_version": answer.model_version,
                            "task": manifest.task, "samples": request.samples, "samples_used": result.samples_used,
                            "seed": request.seed, "id": request.id}
    if request.tolerance is not None:
        body["tolerance"] = request.tolerance
    if isinstance(result, RegressionResult):
        body.update(outputs=result.outputs, interval={"level": result.level, "method": result.interval_method})
        if result.adapted_level is not None:
            body["interval"]["adapted_level"] = result.adapted_level
    else:
        body.update(classes=manifest.class_names or [])
        if result.set_level is not None:
            body["set_level"] = result.set_level
        if result.adapted_level is not None:
            body["adapted_level"] = result.adapted_level
    for stat in statistics(manifest.task):
        value = getattr(result, stat.name)
        if value is None:
            continue
        if stat.shape == "set":
            members = result.set_members()
            body[stat.name] = members
            body[f"{stat.name}_names"] = [[body["classes"][i] for i in row] for row in members]
            continue
        (body[stat.within] if stat.within else body)[stat.name] = value.tolist() if stat.kind == "str" else value
    if result.draws is not None:
        body["draws"] = result.draws
    return body
