"""Request and response bodies of the native JSON API (v1) and the Open Inference Protocol (v2)."""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, create_model

from mcdropout.answer import STATISTICS, Statistic, statistics
from mcdropout.vocabulary import AbstainScore, IntervalMethod, SetMethod



def _numbers(depth: int) -> dict[str, Any]:
    """JSON Schema of a list of numbers, or of lists nested ``depth`` deep at most (image rows): what a
    row or a tensor's data may hold. JSON's true/false and numeric strings are not numbers."""
    values: dict[str, Any] = {"type": "number"}
    for _ in range(depth - 1):
        values = {"anyOf": [{"type": "number"}, {"type": "array", "items": values}]}
    return {"type": "array", "items": values}


# The documented body; the app validates rows itself, so that its errors name the row and the value.
_TEXTS = {"type": "array", "items": {"type": "string", "minLength": 1}}  # a text model's rows
_ROWS = {"anyOf": [{"type": "array", "items": _numbers(3)}, _TEXTS, {"type": "null"}]}
_INSTANCES = {"anyOf": [{"type": "array", "items": {"type": "object", "additionalProperties": {"type": "number"}}},
                        {"type": "null"}]}


def _param(description: str, schema: dict[str, Any]) -> Any:
    """A parameter the data plane checks (service/dataplane.py), the same way for every protocol; the schema
    documents it (a null is the default)."""
    return Field(None, description=description, json_schema_extra={"anyOf": [schema, {"type": "null"}]})


def _choice(vocabulary: type[Enum]) -> dict[str, Any]:
    return {"type": "string", "enum": [item.value for item in vocabulary]}


_FRACTION = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
_POSITIVE = {"type": "number", "exclusiveMinimum": 0}

# The request parameters and the calibration options (mcdropout.answer.Options), by name: the v1 body's
# fields, and the v2 / gRPC ``parameters`` of the same names.
PARAMETERS: dict[str, Any] = {
    "samples": _param("MC samples T (default: the model's), or 'auto': sample until the MC error is small",
                      {"anyOf": [{"type": "integer", "minimum": 2}, {"const": "auto"}]}),
    "seed": _param("picks the T sub-networks; default: the server's MCD_DEFAULT_SEED",
                   {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}),
    "interval": _param("level of the central predictive interval (default 0.95)", _FRACTION),
    "tolerance": _param("with samples 'auto': stop a row once its MC standard error is below this (relative to"
                        " the predictive std for regression, absolute on class probabilities); default 0.01",
                        _FRACTION),
    "return_samples": _param("also return every sampled output per row (v1 only)", {"type": "boolean"}),
    "interval_method": _param("regression: 'conformal' (the bundle's calibrated quantile, coverage >= interval"
                              " for exchangeable rows) or 'gaussian' (the raw MC normal interval); default:"
                              " conformal when calibrated", _choice(IntervalMethod)),
    "set_level": _param("classifiers: conformal prediction_set at this level (a calibrated bundle)", _FRACTION),
    "set_method": _param("prediction set score (default 'lac')", _choice(SetMethod)),
    "max_risk": _param("classifiers: abstain where the accepted rows' error could exceed this (a calibrated"
                       " bundle; at least the model's calibration.min_max_risk)", _FRACTION),
    "delta": _param("with max_risk: 1 - confidence of the guarantee (default: the bundle's, 0.1)", _FRACTION),
    "abstain_score": _param("with max_risk: the uncertainty thresholded (default 'one_minus_max_prob')",
                            _choice(AbstainScore)),
    "max_std": _param("regression: abstain where any output's std exceeds this", _POSITIVE),
    "max_interval_width": _param("regression: abstain where an interval is wider than this", _POSITIVE),
    "adaptive": _param("conformal interval (regression) or prediction set (with set_level) at a level adapted"
                       " online from the outcomes reported for this model (ACI); the answer says the level used"
                       " (adapted_level)", {"type": "boolean"}),
}

PredictRequest = create_model(
    "PredictRequest", __config__=ConfigDict(extra="forbid"),
    inputs=(Optional[list[Any]], Field(None, description="rows, each of the model's input shape (flat or nested)",
                                       json_schema_extra=_ROWS)),
    instances=(Optional[list[dict[str, Any]]], Field(None, description="tabular rows as {feature: value}",
                                                     json_schema_extra=_INSTANCES)),
    **{name: (Any, field) for name, field in PARAMETERS.items()},
    id=(Any, Field(None, description="the answer's id, for reporting its outcomes later (1 to 128 characters of"
                   " A-Z a-z 0-9 . _ : -); default: a new one", json_schema_extra={"type": "string"})),
)


def _annotation(stat: Statistic) -> Any:
    scalar = {"float": float, "int": int, "str": str, "bool": bool}[stat.kind]
    if stat.shape == "set":
        return list[list[int]]
    return list[scalar] if stat.shape == "row" else list[list[scalar]]


def _fields(task: str, within: str | None) -> dict[str, Any]:
    """The answer's statistics of ``task`` held by ``within`` (None: the body), as pydantic fields."""
    found: dict[str, Any] = {}
    for stat in statistics(task):
        if stat.within != within or stat.name == "samples_used":
            continue
        if stat.optional:
            found[stat.name] = (Optional[_annotation(stat)], Field(None, description=stat.description))
        else:
            found[stat.name] = (_annotation(stat), Field(description=stat.description))
        if stat.shape == "set":
            found[f"{stat.name}_names"] = (Optional[list[list[str]]], Field(None, description=f"`{stat.name}` as"
                                                                           " class names"))
    return found


class PredictionBase(BaseModel):
    model: str
    version: str = Field(description="the bundle's own version (its manifest's)")
    model_version: int = Field(1, description="the repository version that answered: models/<name>/<version>/")
    task: str
    samples: Union[int, Literal["auto"]] = Field(description="the T asked for")
    samples_used: list[int] = Field(description=next(s for s in STATISTICS if s.name == "samples_used").description)
    seed: int
    id: str = Field(description="the answer's id: report outcomes for its rows to /v1/models/{name}/outcomes")
    tolerance: Optional[float] = Field(None, description="with samples 'auto': the tolerance asked for")


# Derived from mcdropout.answer's declarations: a new statistic there is a new field here.
Interval = create_model("Interval", level=(float, Field(description="the interval's level")),
                        method=(Literal["conformal", "gaussian"], Field(
                            "gaussian", description="'conformal': mean +- q std with the bundle's calibrated q;"
                            " 'gaussian': the normal interval of the MC mean and variance")),
                        adapted_level=(Optional[float], Field(None, description="with adaptive: the level the"
                                                              " conformal interval was made at (ACI); null ends"
                                                              " are unbounded")),
                        **_fields("regression", "interval"))
RegressionResponse = create_model(
    "RegressionResponse", __base__=PredictionBase, outputs=(list[str], ...), interval=(Interval, ...),
    draws=(Optional[list[list[list[float]]]], Field(None, description="(rows, T, outputs) with return_samples;"
                                                    " with samples='auto' each row's own T")),
    **_fields("regression", None),
)
ClassificationResponse = create_model(
    "ClassificationResponse", __base__=PredictionBase, classes=(list[str], ...),
    draws=(Optional[list[list[list[float]]]], Field(None, description="(rows, T, classes) probabilities")),
    set_level=(Optional[float], Field(None, description="the level of `prediction_set`")),
    adapted_level=(Optional[float], Field(None, description="with adaptive: the level `prediction_set` was made at")),
    **_fields("classification", None),
)


class VersionState(BaseModel):
    version: int
    status: Literal["ready", "failed"]
    error: str | None = Field(None, description="why it failed; for a ready version, why its new files did not load")


class ModelInfo(BaseModel):
    name: str
    status: Literal["ready", "failed"]
    error: str | None = None
    version: str | None = None
    model_version: int | None = Field(None, description="the repository version described (default: the highest)")
    versions: list[VersionState] = Field(default_factory=list, description="every version in the folder")
    task: str | None = None
    description: str | None = None
    input_shape: list[int] | None = None
    feature_names: list[str] | None = None
    outputs: list[str] | None = None
    classes: list[str] | None = None
    default_samples: int | None = None
    max_samples: int | None = None
    max_rows: int | None = None
    text: dict[str, Any] | None = Field(None, description="a text model: rows are strings of at most max_tokens"
                                        " tokens; null: rows of numbers")
    dropout: float | None = None
    tau: float | None = None
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = Field(None, description="the fitted calibration (methods, rows, source,"
                                               " values, when); null: uncalibrated, the raw MC numbers")


class ModelList(BaseModel):
    models: list[ModelInfo]


class ErrorBody(BaseModel):
    error: str
    field: str | None = None


# -- Open Inference Protocol (v2) -----------------------------------------------------------


class TensorSpec(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: dict[str, Any] = {}


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2Live(BaseModel):
    live: bool


class V2InferInput(BaseModel):
    name: str
    shape: list[StrictInt]  # whole numbers only: not true, 10.0 or "10"
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = Field(None, description="the values, flat or nested by the shape (or none, with"
                                   " parameters.binary_data_size)",
                                   json_schema_extra={"anyOf": [_numbers(4), _TEXTS, {"type": "null"}]})


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="samples, seed, interval, tolerance, the"
                                              " calibration options (as in v1's body), binary_data_output")
    inputs: list[V2InferInput]
    outputs: list[V2RequestedOutput] | None = None


class V2InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2InferOutput]


class V2RepositoryEntry(BaseModel):
    name: str
    version: str | None = None
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = ""


class V2Error(BaseModel):
    error: str
