"""Turning request bodies into validated arrays, with errors that name the field and the problem."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:  # imported for types only: the decode worker (service/decoding.py) runs without torch
    from mcdropout.bundle import Manifest


class ApiError(Exception):
    """An HTTP error answer: status, message, and the request field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers

    def __reduce__(self) -> tuple:  # raised in the decode worker, re-raised here
        return ApiError, (self.status, self.message, self.field, self.headers)


@dataclass(frozen=True)
class InputSpec:
    """What decoding a request needs to know of a model: a Manifest's input fields, without torch."""

    name: str
    input_shape: tuple[int, ...]
    feature_names: tuple[str, ...] | None
    samples: int  # the model's default T
    max_samples: int
    text: bool = False  # rows are strings (service/text.py), tokenised by the data plane

    @classmethod
    def of(cls, manifest: Manifest) -> InputSpec:
        names = manifest.feature_names
        return cls(manifest.name, tuple(manifest.input_shape), None if names is None else tuple(names),
                   manifest.samples, manifest.max_samples, manifest.text is not None)


Inputs = Union["Manifest", InputSpec]


def validation_problem(errors: list[dict[str, Any]], allowed: Sequence[str] = ()) -> ApiError:
    """The answer to a body that failed pydantic's validation: 400 for bad JSON, else 422 naming the field."""
    first = errors[0]
    location = [str(part) for part in first["loc"] if part != "body"]
    field = ".".join(location) or "body"
    message = first["msg"]
    if first["type"] == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', message)}")
    if first["type"] == "extra_forbidden":
        message = f"unknown field; expected one of {', '.join(allowed)}" if allowed else "unknown field"
    return ApiError(422, f"{field}: {message}", field)


def invalid(message: str, field: str | None) -> ApiError:
    return ApiError(422, f"{field}: {message}" if field else message, field)


def rows_array(rows: Any, manifest: Inputs, max_rows: int, field: str = "inputs") -> np.ndarray:
    """A list of rows -> float32 array (rows, *input_shape)."""
    if not isinstance(rows, list):
        raise invalid(f"expected a list of rows, got {type(rows).__name__}", field)
    if not rows:
        raise invalid("is empty: send at least one row", field)
    _check_row_count(len(rows), max_rows, field)
    shape = tuple(manifest.input_shape)
    try:
        array = np.asarray(rows, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise _locate(rows, shape, field) from None
    if array.dtype != object and len(shape) > 1 and array.shape[1:] == (math.prod(shape),):
        array = array.reshape(len(array), *shape)  # flat rows of an image model: as many values as its shape
    if array.dtype == object or tuple(array.shape[1:]) != shape or has_non_number(rows):
        raise _locate(rows, shape, field)
    _check_finite(array, field)
    return array.astype(np.float32)


def instances_array(instances: list[dict[str, Any]], manifest: Inputs, max_rows: int) -> np.ndarray:
    """Tabular rows as {feature: value} -> float32 array in the manifest's feature order."""
    field = "instances"
    names = manifest.feature_names
    if not names:
        raise invalid(f"model {manifest.name!r} has no feature names; send 'inputs' as lists of values", field)
    if not instances:
        raise invalid("is empty: send at least one row", field)
    _check_row_count(len(instances), max_rows, field)
    known = set(names)
    array = np.empty((len(instances), len(names)), dtype=np.float64)
    for i, row in enumerate(instances):
        missing = [n for n in names if n not in row]
        if missing:
            raise invalid(f"missing feature(s) {', '.join(map(repr, missing))}", f"{field}[{i}]")
        unknown = [k for k in row if k not in known]
        if unknown:
            raise invalid(f"unknown feature(s) {', '.join(map(repr, unknown))}; expected {', '.join(names)}",
                          f"{field}[{i}]")
        for j, name in enumerate(names):
            array[i, j] = _number(row[name], f"{field}[{i}].{name}")
    _check_finite(array, field)
    return array.astype(np.float32)


def has_non_number(values: list) -> bool:
    """JSON true/false and numeric strings would pass as numbers through numpy; find them by type (cheap)."""
    for value in values:
        kind = type(value)
        if kind is bool or kind is str:
            return True
        if kind is list and has_non_number(value):
            return True
    return False


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: error texts never echo a large input back."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _check_row_count(count: int, max_rows: int, field: str) -> None:
    if count > max_rows:
        raise invalid(f"{count} rows is over the limit of {max_rows} per request (MCD_MAX_ROWS); split them",
                      field)


FLOAT32_MAX = float(np.finfo(np.float32).max)


def finite_rows(array: np.ndarray) -> np.ndarray:
    """Per row: every value finite and within float32's range, which the models compute in."""
    values = array.reshape(len(array), -1)
    return (np.isfinite(values) & (np.abs(values) <= FLOAT32_MAX)).all(axis=1)


def _check_finite(array: np.ndarray, field: str) -> None:
    finite = finite_rows(array)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        rows = ", ".join(str(i) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
        raise invalid(f"NaN, infinity or a number beyond float32's range (±3.4e38) in row(s) {rows}",
                      f"{field}[{bad[0]}]")


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(f"expected a number, got {shown(value)}", field)
    if abs(value) > FLOAT32_MAX or not math.isfinite(value):  # abs first: math.isfinite(10**400) overflows
        raise invalid("NaN, infinity or a number beyond float32's range (±3.4e38)", field)
    return float(value)


def _locate(rows: list, shape: tuple[int, ...], field: str) -> ApiError:
    """Find the first element that is not a number or not where the shape wants it."""

    def walk(value: Any, dims: Sequence[int], where: str) -> ApiError | None:
        if not dims:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return invalid(f"expected a number, got {shown(value)}", where)
            if abs(value) > FLOAT32_MAX:
                return invalid("a number beyond float32's range (±3.4e38)", where)
            return None
        if not isinstance(value, list):
            return invalid(f"expected a list of {dims[0]} values, got {shown(value)}", where)
        if len(value) != dims[0]:
            return invalid(f"expected {dims[0]} value{'s' if dims[0] != 1 else ''}, got {len(value)}", where)
        for k, item in enumerate(value):
            error = walk(item, dims[1:], f"{where}[{k}]")
            if error:
                return error
        return None

    size = math.prod(shape)
    for i, row in enumerate(rows):
        flat = len(shape) > 1 and isinstance(row, list) and not any(isinstance(item, list) for item in row)
        if flat and len(row) != size:
            return invalid(f"expected {size} values (a flat row for input shape {list(shape)}) or nested lists"
                           f" of shape {list(shape)}, got {len(row)} values", f"{field}[{i}]")
        error = walk(row, (size,) if flat else shape, f"{field}[{i}]")
        if error:
            return error
    return invalid(f"each row must have shape {list(shape)}", field)
