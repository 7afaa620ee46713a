"""Request and response bodies of the native JSON API (v1) and the Open Inference Protocol (v2)."""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

Seed = Field(None, ge=0, le=2**63 - 1, description="picks the T sub-networks; default: the server's MCD_DEFAULT_SEED")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Any] | None = Field(None, description="rows, each of the model's input shape")
    instances: list[dict[str, Any]] | None = Field(None, description="tabular rows as {feature: value}")
    samples: Any = Field(  # validated by the app, so the error can name the limits
        None, description="MC samples T (default: the model's), or 'auto': sample until the MC error is small",
        json_schema_extra={"anyOf": [{"type": "integer", "minimum": 2}, {"const": "auto"}, {"type": "null"}]},
    )
    seed: int | None = Seed
    interval: float = Field(0.95, gt=0, lt=1, description="level of the central predictive interval")
    return_samples: bool = Field(False, description="also return every sampled output per row")


class Interval(BaseModel):
    level: float
    lower: list[list[float]]
    upper: list[list[float]]


class PredictionBase(BaseModel):
    model: str
    version: str
    task: str
    samples: Union[int, Literal["auto"]] = Field(description="the T asked for")
    samples_used: list[int] = Field(description="MC samples each row got")
    seed: int


class RegressionResponse(PredictionBase):
    outputs: list[str]
    mean: list[list[float]]
    std: list[list[float]]
    variance: list[list[float]]
    epistemic_variance: list[list[float]]
    aleatoric_variance: list[list[float]]
    interval: Interval
    draws: list[list[list[float]]] | None = Field(None, description="(rows, T, outputs) with return_samples")


class ClassificationResponse(PredictionBase):
    classes: list[str]
    probs: list[list[float]]
    label: list[int]
    class_name: list[str]
    entropy: list[float]
    expected_entropy: list[float]
    mutual_information: list[float]
    variation_ratio: list[float]
    draws: list[list[list[float]]] | None = Field(None, description="(rows, T, classes) probabilities")


class ModelInfo(BaseModel):
    name: str
    status: Literal["ready", "failed"]
    error: str | None = None
    version: str | None = None
    task: str | None = None
    description: str | None = None
    input_shape: list[int] | None = None
    feature_names: list[str] | None = None
    outputs: list[str] | None = None
    classes: list[str] | None = None
    default_samples: int | None = None
    max_samples: int | None = None
    max_rows: int | None = None
    dropout: float | None = None
    tau: float | None = None
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


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
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="samples, seed, interval, binary_data_output")
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


class V2Error(BaseModel):
    error: str
