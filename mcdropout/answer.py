"""Predictions as plain numpy data: what the client returns and what batch scoring writes.

Built from a library prediction (:func:`from_prediction`: the service's answers
and local scoring), from the service's JSON answer (:func:`from_json`: the
client), joined from several (:func:`concatenate`), or cut to a range of rows
(:func:`take_rows`: one request's share of a merged run). Importing this module
imports numpy only, so the client stays light. :meth:`columns` gives the flat
per-row table (``mean``, ``std``, ``lower``, ``upper`` / ``label``,
``prob_<class>``, ``entropy``, ...) used by ``to_pandas`` and by
``mcdropout score``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Union

import numpy as np


@dataclass(frozen=True)
class Statistic:
    """One statistic of an answer, declared once: the result objects, the scoring columns, the v1 JSON
    body and its schema, and the v2 output tensors and metadata are all derived from these."""

    name: str
    task: str  # "regression" | "classification" | "both"
    shape: str  # "outputs": (rows, outputs); "classes": (rows, classes); "row": one value per row
    units: str
    meaning: str
    kind: str = "float"  # "float" | "int" | "str"
    within: str | None = None  # the v1 object that holds it ("interval"), else the body itself
    column: bool = True  # a column of the flat table (scoring output, to_pandas)
    tensor: bool = True  # a v2 output tensor

    @property
    def description(self) -> str:
        return f"{self.meaning} ({self.units})" if self.units else self.meaning


STATISTICS: tuple[Statistic, ...] = (
    Statistic("mean", "regression", "outputs", "target units", "predictive mean over the MC samples"),
    Statistic("std", "regression", "outputs", "target units", "predictive standard deviation: sqrt(variance)"),
    Statistic("lower", "regression", "outputs", "target units", "lower end of the central interval at `level`",
              within="interval"),
    Statistic("upper", "regression", "outputs", "target units", "upper end of the central interval at `level`",
              within="interval"),
    Statistic("variance", "regression", "outputs", "target units squared",
              "predictive variance: epistemic + aleatoric", column=False),
    Statistic("epistemic_variance", "regression", "outputs", "target units squared",
              "variance of the sampled means: the model's uncertainty"),
    Statistic("aleatoric_variance", "regression", "outputs", "target units squared",
              "noise variance: 1/tau, or the mean of a heteroscedastic head's variances"),
    Statistic("label", "classification", "row", "class index", "the class of highest mean probability", kind="int"),
    Statistic("class_name", "classification", "row", "", "the name of `label`", kind="str", tensor=False),
    Statistic("probs", "classification", "classes", "probability", "mean softmax probability of each class"),
    Statistic("entropy", "classification", "row", "nats", "predictive entropy of `probs`: total uncertainty"),
    Statistic("expected_entropy", "classification", "row", "nats",
              "mean entropy of the samples' probabilities: aleatoric uncertainty"),
    Statistic("mutual_information", "classification", "row", "nats",
              "entropy - expected_entropy (BALD): epistemic uncertainty"),
    Statistic("variation_ratio", "classification", "row", "fraction",
              "share of samples whose arg-max is not `label`: disagreement"),
    Statistic("samples_used", "both", "row", "samples", "MC samples this row got", kind="int"),
)


def statistics(task: str) -> tuple[Statistic, ...]:
    """The statistics of ``task``'s answer, in column order."""
    return tuple(stat for stat in STATISTICS if stat.task in (task, "both"))


def _read(body: dict[str, Any], stat: Statistic, rows: int) -> np.ndarray:
    """One statistic out of a v1 JSON body, as the result object holds it."""
    value = (body[stat.within] if stat.within else body)[stat.name]
    if stat.kind == "str":
        return np.asarray(value, dtype=object)
    array = np.asarray(value, dtype=np.int64 if stat.kind == "int" else np.float64)
    return array.reshape(rows, -1) if stat.shape != "row" else array.reshape(rows)


@dataclass
class RegressionResult:
    """Per row: ``mean``, ``std``, ``variance``, ``epistemic_variance``, ``aleatoric_variance``,
    ``lower`` and ``upper`` (the central ``level`` interval), each (rows, outputs)."""

    model: str
    version: str
    seed: int
    outputs: list[str]
    level: float
    samples_used: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    variance: np.ndarray
    epistemic_variance: np.ndarray
    aleatoric_variance: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RegressionResult:
        rows = len(body["samples_used"])
        return cls(model=body["model"], version=body["version"], seed=body["seed"], outputs=list(body["outputs"]),
                   level=body["interval"]["level"],
                   **{stat.name: _read(body, stat, rows) for stat in statistics("regression")})

    def columns(self) -> dict[str, np.ndarray]:
        single = len(self.outputs) == 1
        table: dict[str, np.ndarray] = {}
        for stat in statistics("regression"):
            values = getattr(self, stat.name)
            if not stat.column:
                continue
            if stat.shape != "outputs":
                table[stat.name] = values
                continue
            for index, output in enumerate(self.outputs):
                table[stat.name if single else f"{stat.name}_{output}"] = values[:, index]
        return table

    def to_pandas(self):
        return _frame(self.columns())

    def __len__(self) -> int:
        return len(self.samples_used)


@dataclass
class ClassificationResult:
    """Per row: ``probs`` (rows, classes), ``label`` and its ``class_name``, ``entropy``,
    ``expected_entropy``, ``mutual_information`` and ``variation_ratio``."""

    model: str
    version: str
    seed: int
    classes: list[str]
    samples_used: np.ndarray
    probs: np.ndarray
    label: np.ndarray
    class_name: np.ndarray
    entropy: np.ndarray
    expected_entropy: np.ndarray
    mutual_information: np.ndarray
    variation_ratio: np.ndarray

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ClassificationResult:
        rows = len(body["samples_used"])
        return cls(model=body["model"], version=body["version"], seed=body["seed"], classes=list(body["classes"]),
                   **{stat.name: _read(body, stat, rows) for stat in statistics("classification")})

    def columns(self) -> dict[str, np.ndarray]:
        table: dict[str, np.ndarray] = {}
        for stat in statistics("classification"):
            values = getattr(self, stat.name)
            if stat.shape == "classes":
                for index, name in enumerate(self.classes or [str(i) for i in range(values.shape[1])]):
                    table[f"prob_{name}"] = values[:, index]
            elif stat.column:
                table[stat.name] = values
        return table

    def to_pandas(self):
        return _frame(self.columns())

    def __len__(self) -> int:
        return len(self.samples_used)


Result = Union[RegressionResult, ClassificationResult]


def from_json(body: dict[str, Any]) -> Result:
    """The result object for a ``/v1/models/{name}/predict`` answer."""
    return ClassificationResult.from_json(body) if body.get("task") == "classification" \
        else RegressionResult.from_json(body)


def from_prediction(manifest: Any, prediction: Any, level: float) -> Result:
    """A library prediction (``Bundle.predict``, user units) as the plain result, with ``level``'s interval.

    Duck-typed on the manifest and the prediction, so that this module imports no torch. Outputs without
    names are called ``y0, y1, ...``; classes without names by their index.
    """
    rows = len(prediction.num_samples)

    def table(values) -> np.ndarray:
        return values.reshape(rows, -1).numpy().astype(np.float64, copy=False)

    def vector(values) -> np.ndarray:
        return values.numpy().astype(np.float64, copy=False)

    common = {"model": manifest.name, "version": manifest.version, "seed": prediction.seed,
              "samples_used": prediction.num_samples.numpy().astype(np.int64, copy=False)}
    if manifest.task == "regression":  # in numpy: cheaper than torch for the few rows of a request
        from mcdropout.stats._summary import normal_interval  # here: the client imports this module without torch

        means, epistemic, aleatoric = table(prediction.mean), table(prediction.epistemic), table(prediction.aleatoric)
        variance = epistemic + aleatoric
        std = np.sqrt(variance)
        lower, upper = normal_interval(means, std, level)
        return RegressionResult(
            **common, outputs=manifest.output_names or [f"y{i}" for i in range(means.shape[1])], level=level,
            mean=means, std=std, variance=variance, epistemic_variance=epistemic, aleatoric_variance=aleatoric,
            lower=lower, upper=upper,
        )
    probs = prediction.probs.numpy()
    classes = manifest.class_names or [str(i) for i in range(probs.shape[1])]
    labels = prediction.label.numpy().astype(np.int64, copy=False)
    return ClassificationResult(
        **common, classes=classes, probs=probs, label=labels,
        class_name=np.asarray([classes[i] for i in labels], dtype=object), entropy=vector(prediction.entropy),
        expected_entropy=vector(prediction.expected_entropy),
        mutual_information=vector(prediction.mutual_information), variation_ratio=vector(prediction.variation_ratio),
    )


def take_rows(result: Result, start: int, stop: int) -> Result:
    """Rows [start, stop) of a result (views, no copies): every array field has the rows first."""
    parts = {item.name: getattr(result, item.name) for item in fields(result)}
    return type(result)(**{name: value[start:stop] if isinstance(value, np.ndarray) else value
                           for name, value in parts.items()})


def concatenate(parts: list[Result]) -> Result:
    """Join results of consecutive row ranges, in order."""
    first = parts[0]
    if len(parts) == 1:
        return first
    joined = {}
    for item in fields(first):
        values = [getattr(part, item.name) for part in parts]
        joined[item.name] = np.concatenate(values) if isinstance(values[0], np.ndarray) else values[0]
    return type(first)(**joined)


def _frame(columns: dict[str, np.ndarray]):
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_pandas needs pandas: pip install pandas") from None
    return pd.DataFrame(columns)
