"""Predictions as plain numpy data: what the client returns and what batch scoring writes.

Made by :meth:`mcdropout.bundle.Bundle.answer` (the calibrated answer that the
service, scoring and the playground give), from the service's JSON answer
(:func:`from_json`: the client), joined from several (:func:`concatenate`), or cut to a range of rows
(:func:`take_rows`: one request's share of a merged run). Importing this module
imports numpy only, so the client stays light. :meth:`columns` gives the flat
per-row table (``mean``, ``std``, ``lower``, ``upper`` / ``label``,
``prob_<class>``, ``entropy``, ...) used by ``to_pandas`` and by
``mcdropout score``.

The option vocabularies (:class:`Task`, :class:`IntervalMethod`, :class:`SetMethod`,
:class:`AbstainScore`) are declared once, in :mod:`mcdropout.vocabulary`, for the library, the CLI and the schemas.
A calibrated bundle's answers add, when a request asks (:class:`Options`, checked by
:func:`parse_options`): conformal intervals (``interval.method``), ``prediction_set`` and
``set_size`` at a ``set_level``, and ``abstain`` at a ``max_risk`` (classifiers) or from a
``max_std`` / ``max_interval_width`` (regression).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Union

import numpy as np

from mcdropout.errors import InputError
from mcdropout.vocabulary import (  # noqa: F401 (re-exported: the answer's option vocabularies)
    ABSTAIN_SCORES,
    INTERVAL_METHODS,
    SET_METHODS,
    TASKS,
    AbstainScore,
    IntervalMethod,
    SetMethod,
    Task,
)


@dataclass(frozen=True)
class Statistic:
    """One statistic of an answer, declared once: the result objects, the scoring columns, the v1 JSON
    body and its schema, and the v2 output tensors and metadata are all derived from these."""

    name: str
    task: str  # "regression" | "classification" | "both"
    shape: str  # "outputs": (rows, outputs); "classes": (rows, classes); "row": one value per row;
    # "set": a (rows, classes) membership mask, in v1 JSON each row's class indices (and ``<name>_names``)
    units: str
    meaning: str
    kind: str = "float"  # "float" | "int" | "str" | "bool"
    within: str | None = None  # the v1 object that holds it ("interval"), else the body itself
    column: bool = True  # a column of the flat table (scoring output, to_pandas)
    tensor: bool = True  # a v2 output tensor
    optional: bool = False  # only in answers whose request asks for it (None in the result otherwise)

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
    Statistic("prediction_set", "classification", "set", "class indices",
              "conformal prediction set at `set_level`: it holds the true class with probability >= set_level",
              kind="bool", optional=True),
    Statistic("set_size", "classification", "row", "classes", "number of classes in `prediction_set`", kind="int",
              optional=True),
    Statistic("abstain", "both", "row", "",
              "true: send the row to a human. Classifiers: uncertainty above the threshold whose accepted rows err"
              " at most `max_risk` (with probability 1 - delta); regression: std above `max_std` or interval wider"
              " than `max_interval_width` (no guarantee)", kind="bool", optional=True),
)

def check_level(level: Any, name: str = "interval") -> float:
    """``level`` as a float in (0, 1), else :class:`OptionError` naming ``name``."""
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0.0 < float(level) < 1.0:
        raise OptionError(name, f"must be a number in (0, 1), got {level!r}")
    return float(level)


@dataclass(frozen=True)
class Options:
    """What a request asks beyond the raw statistics; every protocol passes these same names."""

    interval_method: str | None = None  # None: conformal where the bundle is calibrated, else gaussian
    set_level: float | None = None
    set_method: str = "lac"
    max_risk: float | None = None
    delta: float | None = None  # None: the bundle's (0.1 by default)
    abstain_score: str = "one_minus_max_prob"
    max_std: float | None = None
    max_interval_width: float | None = None
    adaptive: bool = False  # the conformal level adapts online from reported outcomes (ACI; the server's controller)
    adapted_level: float | None = None  # the level the conformal interval / set is made at in place of the nominal
    # one: set by whoever holds the controller (mcdropout.stats.adaptive), never by a request

    @property
    def abstains(self) -> bool:
        return self.max_risk is not None or self.max_std is not None or self.max_interval_width is not None


OPTION_NAMES = tuple(item.name for item in fields(Options) if item.name != "adapted_level")  # a request's options


class OptionError(InputError):
    """A calibration option that cannot be honoured; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _fraction(given: dict[str, Any], name: str) -> float | None:
    value = given.get(name)
    return None if value is None else check_level(value, name)


def _choice(given: dict[str, Any], name: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    value = given.get(name)
    if value is None:
        return default
    value = value.value if isinstance(value, Enum) else value
    if not isinstance(value, str) or value not in allowed:
        raise OptionError(name, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def parse_options(given: dict[str, Any], manifest: Any, level: float = 0.95) -> Options | None:
    """The request's calibration options, checked against the bundle; None when none is asked and none applies.

    Refused (:class:`OptionError`, naming the field): a level or risk outside (0, 1), a set level or
    risk asked of a regression model or limits on std asked of a classifier, a guarantee asked of a bundle
    without that calibration, and a level too high for the bundle's calibration rows.
    """
    unknown = [name for name in given if name not in OPTION_NAMES and name != "adapted_level"]
    if unknown:
        raise OptionError(unknown[0], f"unknown option; expected one of {', '.join(OPTION_NAMES)}")
    calibration = getattr(manifest, "calibration", None)
    task = manifest.task
    method = _choice(given, "interval_method", INTERVAL_METHODS, None)
    options = Options(interval_method=method, set_level=_fraction(given, "set_level"),
                      set_method=_choice(given, "set_method", SET_METHODS, "lac"),
                      max_risk=_fraction(given, "max_risk"), delta=_fraction(given, "delta"),
                      abstain_score=_choice(given, "abstain_score", ABSTAIN_SCORES, "one_minus_max_prob"),
                      max_std=_positive(given, "max_std"), max_interval_width=_positive(given, "max_interval_width"),
                      adaptive=_flag(given, "adaptive"), adapted_level=_real(given, "adapted_level"))
    adapts = options.adaptive or options.adapted_level is not None
    uncalibrated = f"model {manifest.name!r} is not calibrated (run `mcdropout calibrate`)"
    if task == "regression":
        for name in ("set_level", "set_method", "max_risk", "delta", "abstain_score"):
            if given.get(name) is not None:
                raise OptionError(name, f"applies to classifiers; model {manifest.name!r} is a regression model")
        conformal = None if calibration is None else calibration.conformal
        if adapts and (conformal is None or method == "gaussian"):
            raise OptionError("adaptive", f"adapts a conformal interval; {uncalibrated}" if conformal is None
                              else "adapts a conformal interval, not interval_method 'gaussian'")
        if method == "conformal" and conformal is None:
            raise OptionError("interval_method", f"'conformal' needs a calibrated bundle; {uncalibrated}")
        if conformal is not None and method != "gaussian" and level > conformal.scores[0].max_level():
            raise OptionError("interval", f"level {level} is too high for the {conformal.n} calibration rows of"
                                     f" {manifest.name!r}: a conformal interval needs level <= n/(n+1) ="
                                     f" {conformal.scores[0].max_level():.6f} (or interval_method 'gaussian')")
        if options == Options() and conformal is None:
            return None
        return options
    for name in ("max_std", "max_interval_width", "interval_method"):
        if given.get(name) is not None:
            raise OptionError(name, f"applies to regression models; model {manifest.name!r} is a classifier:"
                                    " it has no intervals")
    if given.get("set_method") is not None and options.set_level is None:
        raise OptionError("set_method", "applies with set_level")
    if given.get("abstain_score") is not None and options.max_risk is None:
        raise OptionError("abstain_score", "applies with max_risk")
    if adapts and options.set_level is None:
        raise OptionError("adaptive", "adapts a classifier's prediction sets: it applies with set_level")
    if options.set_level is not None:
        sets = None if calibration is None else calibration.sets
        if sets is None:
            raise OptionError("set_level", f"prediction sets need a calibrated bundle; {uncalibrated}")
        top = sets.scores[options.set_method]
        if options.set_level > top.max_level():
            raise OptionError("set_level", f"{options.set_level} is too high for the {top.n} calibration rows:"
                                           f" it must be <= n/(n+1) = {top.max_level():.6f}")
    if options.max_risk is not None and (calibration is None or calibration.selective is None):
        raise OptionError("max_risk", f"abstention at a risk needs a calibrated bundle; {uncalibrated}")
    if options.max_risk is not None:
        selective = calibration.selective
        delta = selective.delta if options.delta is None else options.delta
        smallest = min_max_risk(selective.n, delta)
        if options.max_risk < smallest:
            raise OptionError("max_risk", f"{options.max_risk} is below the smallest risk the {selective.n}"
                                          f" calibration rows of {manifest.name!r} can certify at delta {delta}:"
                                          f" max_risk must be >= {smallest} (1 - delta^(1/n), rounded up); more"
                                          " calibration rows certify lower risks")
    if options.delta is not None and options.max_risk is None:
        raise OptionError("delta", "applies with max_risk")
    return None if options == Options() else options


def min_max_risk(rows: int, delta: float) -> float:
    """The smallest ``max_risk`` that ``rows`` calibration rows can certify with probability 1 - ``delta``:
    1 - delta^(1/n), the risk at which n accepted rows without one error pass a Clopper-Pearson bound
    (below it even a perfect calibration set abstains on every row). Rounded up at six significant digits,
    so that the value shown is one that certifies."""
    if rows < 1:
        return 1.0
    exact = -math.expm1(math.log(delta) / rows)
    scale = 10.0 ** (5 - math.floor(math.log10(exact)))
    return math.ceil(exact * scale * (1 + 1e-12)) / scale


def _positive(given: dict[str, Any], name: str) -> float | None:
    value = given.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value) > 0 \
            or value == float("inf"):
        raise OptionError(name, f"must be a positive number, got {value!r}")
    return float(value)


def _flag(given: dict[str, Any], name: str) -> bool:
    value = given.get(name)
    if value is not None and not isinstance(value, bool):
        raise OptionError(name, f"must be true or false, got {value!r}")
    return bool(value)


def _real(given: dict[str, Any], name: str) -> float | None:
    value = given.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value):
        raise OptionError(name, f"must be a finite number, got {value!r}")
    return float(value)


def statistics(task: str) -> tuple[Statistic, ...]:
    """The statistics of ``task``'s answer, in column order."""
    return tuple(stat for stat in STATISTICS if stat.task in (task, "both"))


def _read(body: dict[str, Any], stat: Statistic, rows: int, classes: int = 0) -> np.ndarray | None:
    """One statistic out of a v1 JSON body, as the result object holds it."""
    value = (body[stat.within] if stat.within else body).get(stat.name)
    if value is None and stat.optional:
        return None
    if stat.kind == "str":
        return np.asarray(value, dtype=object)
    if stat.shape == "set":  # each row's class indices, back to a membership mask
        mask = np.zeros((rows, classes), dtype=bool)
        for row, members in enumerate(value):
            mask[row, members] = True
        return mask
    array = np.asarray(value, dtype={"int": np.int64, "bool": np.bool_}.get(stat.kind, np.float64))
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
    abstain: np.ndarray | None = None
    interval_method: str = "gaussian"  # "conformal": mean +- q std with q from the bundle's calibration
    adapted_level: float | None = None  # the adapted conformal level the interval was made at (Options.adaptive)
    draws: np.ndarray | list[np.ndarray] | None = None  # return_samples: (rows, T, outputs); 'auto': per row
    answer_id: np.ndarray | None = None  # per row: the id of the service's answer that holds it (outcomes name it)
    answer_row: np.ndarray | None = None  # per row: its index in that answer

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> RegressionResult:
        rows = len(body["samples_used"])
        result = cls(model=body["model"], version=body["version"], seed=body["seed"], outputs=list(body["outputs"]),
                     level=body["interval"]["level"], interval_method=body["interval"].get("method", "gaussian"),
                     adapted_level=body["interval"].get("adapted_level"), draws=_draws(body.get("draws")),
                     **_ids(body, rows), **{stat.name: _read(body, stat, rows) for stat in statistics("regression")})
        if result.adapted_level is not None:  # JSON has no infinity: an unbounded end comes as null
            result.lower[np.isnan(result.lower)], result.upper[np.isnan(result.upper)] = -np.inf, np.inf
        return result

    def columns(self) -> dict[str, np.ndarray]:
        single = len(self.outputs) == 1
        table: dict[str, np.ndarray] = {}
        for stat in statistics("regression"):
            values = getattr(self, stat.name)
            if not stat.column or values is None:
                continue
            if stat.shape != "outputs":
                table[stat.name] = values
                continue
            for index, output in enumerate(self.outputs):
                table[stat.name if single else f"{stat.name}_{output}"] = values[:, index]
        return _with_ids(table, self)

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
    prediction_set: np.ndarray | None = None  # (rows, classes) membership at set_level
    set_size: np.ndarray | None = None
    abstain: np.ndarray | None = None
    set_level: float | None = None
    adapted_level: float | None = None  # the adapted conformal level the sets were made at (Options.adaptive)
    draws: np.ndarray | list[np.ndarray] | None = None  # return_samples: (rows, T, classes) probabilities
    answer_id: np.ndarray | None = None  # per row: the id of the service's answer that holds it (outcomes name it)
    answer_row: np.ndarray | None = None  # per row: its index in that answer

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ClassificationResult:
        rows = len(body["samples_used"])
        classes = list(body["classes"])
        return cls(model=body["model"], version=body["version"], seed=body["seed"], classes=classes,
                   set_level=body.get("set_level"), adapted_level=body.get("adapted_level"),
                   draws=_draws(body.get("draws")), **_ids(body, rows),
                   **{stat.name: _read(body, stat, rows, len(classes)) for stat in statistics("classification")})

    def set_members(self) -> list[list[int]] | None:
        """Each row's prediction set as class indices (None when none was asked)."""
        if self.prediction_set is None:
            return None
        return [np.flatnonzero(row).tolist() for row in self.prediction_set]

    def columns(self) -> dict[str, np.ndarray]:
        table: dict[str, np.ndarray] = {}
        names = None
        for stat in statistics("classification"):
            values = getattr(self, stat.name)
            if values is None:
                continue
            names = names or self.classes or [str(i) for i in range(values.shape[1])]
            if stat.shape == "classes":
                for index, name in enumerate(names):
                    table[f"prob_{name}"] = values[:, index]
            elif stat.shape == "set":
                for index, name in enumerate(names):
                    table[f"in_set_{name}"] = values[:, index]
            elif stat.column:
                table[stat.name] = values
        return _with_ids(table, self)

    def to_pandas(self):
        return _frame(self.columns())

    def __len__(self) -> int:
        return len(self.samples_used)


Result = Union[RegressionResult, ClassificationResult]


def from_json(body: dict[str, Any]) -> Result:
    """The result object for a ``/v1/models/{name}/predict`` answer."""
    return ClassificationResult.from_json(body) if body.get("task") == "classification" \
        else RegressionResult.from_json(body)


def _ids(body: dict[str, Any], rows: int) -> dict[str, Any]:
    """A v1 body's answer id as per-row ``answer_id`` and ``answer_row`` (none in answers without one)."""
    if not isinstance(body.get("id"), str):
        return {}
    return {"answer_id": np.full(rows, body["id"], dtype=object), "answer_row": np.arange(rows, dtype=np.int64)}


def _with_ids(table: dict[str, np.ndarray], result: Any) -> dict[str, np.ndarray]:
    """The flat table with the ``answer_id`` and ``answer_row`` columns last, where the result has them."""
    if result.answer_id is None:
        return table
    return {**table, "answer_id": result.answer_id, "answer_row": result.answer_row}


def _draws(value: Any) -> np.ndarray | list[np.ndarray] | None:
    """A v1 body's ``draws``: one array, or one per row where rows got different T (samples='auto')."""
    if value is None:
        return None
    if len({len(row) for row in value}) <= 1:
        return np.asarray(value, dtype=np.float64)
    return [np.asarray(row, dtype=np.float64) for row in value]


def take_rows(result: Result, start: int, stop: int) -> Result:
    """Rows [start, stop) of a result (views, no copies): every array field has the rows first."""
    parts = {item.name: getattr(result, item.name) for item in fields(result)}
    per_row = {name for name, value in parts.items()
               if isinstance(value, np.ndarray) or (name == "draws" and value is not None)}  # draws: a list with 'auto'
    return type(result)(**{name: value[start:stop] if name in per_row else value for name, value in parts.items()})


def concatenate(parts: list[Result]) -> Result:
    """Join results of consecutive row ranges, in order."""
    first = parts[0]
    if len(parts) == 1:
        return first
    joined = {}
    for item in fields(first):
        values = [getattr(part, item.name) for part in parts]
        present = [value is not None for value in values]
        per_row = item.name == "draws" or any(isinstance(value, np.ndarray) for value in values)
        if per_row and any(present) and not all(present):
            raise ValueError(f"cannot join results where only some parts have {item.name!r}")
        if item.name == "draws" and values[0] is not None:
            joined[item.name] = _join_draws(values)
        else:
            joined[item.name] = np.concatenate(values) if isinstance(values[0], np.ndarray) else values[0]
    return type(first)(**joined)


def _join_draws(values: list) -> np.ndarray | list[np.ndarray]:
    if all(isinstance(value, np.ndarray) for value in values) and len({v.shape[1:] for v in values}) == 1:
        return np.concatenate(values)
    return [row for value in values for row in value]


def _frame(columns: dict[str, np.ndarray]):
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("to_pandas needs pandas: pip install pandas") from None
    return pd.DataFrame(columns)
