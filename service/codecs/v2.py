"""The Open Inference Protocol (KServe v2) with the binary tensor data extension.

A request is a JSON header, optionally followed by raw tensor bytes; the
``Inference-Header-Content-Length`` header gives the JSON's length. Inputs with
``parameters.binary_data_size`` take their data from those bytes in order.
Outputs are returned as JSON ``data``, or as raw bytes after the JSON header
when the request asks for ``binary_data`` (per output) or
``binary_data_output`` (all outputs; tritonclient's default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from pydantic import ValidationError

from mcdropout.answer import RegressionResult, Result, statistics
from service.inputs import ApiError, InputSpec, Inputs, finite_rows, has_non_number, shown
from service import text
from service.schemas import V2InferRequest

if TYPE_CHECKING:  # for types only: decode runs in the decode worker, without torch
    from mcdropout.bundle import Manifest
    from service.request import InferAnswer

HEADER = "inference-header-content-length"
INPUT_NAME = "input"
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
}
# The answer's statistics as output tensors; a classifier's probabilities first, as v2 clients index them.
OUTPUTS = {task: tuple(sorted((stat for stat in statistics(task) if stat.tensor), key=lambda stat: stat.shape != "classes"))
           for task in ("regression", "classification")}
# The optional outputs, and the parameters that make an answer hold them.
_ASKED_BY = {"abstain": "max_risk (classifiers), max_std or max_interval_width (regression)",
             "prediction_set": "set_level", "set_size": "set_level"}


def error(message: str, status: int = 400) -> ApiError:
    return ApiError(status, message)


def output_specs(manifest: Manifest) -> list[dict[str, Any]]:
    """The output tensors a model's infer answers with: name, datatype, shape (-1 = rows).

    Optional ones (prediction sets, abstention) are listed where the bundle can give them; an answer
    holds them only when its request's parameters ask.
    """
    widths = {"outputs": len(manifest.output_names or []) or -1, "classes": len(manifest.class_names or []) or -1,
              "set": len(manifest.class_names or []) or -1}
    return [{"name": stat.name, "datatype": {"int": "INT64", "bool": "BOOL"}.get(stat.kind, "FP64"),
             "shape": [-1] if stat.shape == "row" else [-1, widths[stat.shape]]}
            for stat in OUTPUTS[manifest.task] if not stat.optional or _can_give(manifest, stat.name)]


def _can_give(manifest: Manifest, name: str) -> bool:
    calibration = manifest.calibration
    if manifest.task == "regression":
        return name == "abstain"  # from max_std / max_interval_width, calibrated or not
    if calibration is None:
        return False
    return calibration.selective is not None if name == "abstain" else calibration.sets is not None


def model_metadata(manifest: Manifest, versions: list[str] | None = None) -> dict[str, Any]:
    """``versions``: the repository versions served (default: the manifest's own version)."""
    return {
        "name": manifest.name,
        "versions": versions or [manifest.version],
        "platform": "mcdropout_pytorch",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *manifest.input_shape]} if manifest.text is None
                   else {"name": INPUT_NAME, "datatype": text.DATATYPE, "shape": [-1]}],
        "outputs": output_specs(manifest),
        "parameters": {"task": manifest.task, "default_samples": manifest.samples,
                       "max_samples": manifest.max_samples,
                       "calibration": None if manifest.calibration is None else manifest.calibration.summary()},
    }


def parse_request(body: bytes, header_length: str | None) -> tuple[V2InferRequest, bytes]:
    if header_length is not None:
        if not (header_length.isascii() and header_length.isdigit()):  # int() also takes "1_09", " 109", "+109"
            raise error(f"Inference-Header-Content-Length must be an integer (digits only), got {header_length!r}")
        length = int(header_length)
        if not 0 < length <= len(body):
            raise error(f"Inference-Header-Content-Length {length} does not fit a body of {len(body)} bytes")
        header, binary = body[:length], body[length:]
    else:
        header, binary = body, b""
    try:
        return V2InferRequest.model_validate_json(header), binary
    except ValidationError as problem:
        first = problem.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "request"
        raise error(f"invalid inference request: {where}: {first['msg']}") from None


def input_array(request: V2InferRequest, binary: bytes, manifest: Inputs, max_rows: int) -> np.ndarray:
    if len(request.inputs) != 1:
        raise error(f"model {manifest.name!r} takes one input tensor named {INPUT_NAME!r}, got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != INPUT_NAME:
        raise error(f"unknown input {tensor.name!r}; model {manifest.name!r} takes {INPUT_NAME!r}")
    if getattr(manifest, "text", None):
        size = (tensor.parameters or {}).get("binary_data_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary)):
            raise error(f"input {INPUT_NAME!r}: binary_data_size {size!r} does not fit {len(binary)} bytes of data")
        return text.bytes_tensor(tensor.shape, tensor.datatype, tensor.data, None if size is None else binary[:size],
                                 INPUT_NAME, max_rows)
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None or tensor.datatype == "BOOL":
        raise error(f"input {INPUT_NAME!r}: datatype {tensor.datatype!r} is not numeric; use FP32, FP64 or an INT type")
    expected = [*manifest.input_shape]
    flat = len(expected) > 1 and tensor.shape[1:] == [math.prod(expected)]  # an image model's rows, flattened
    if (not flat and (len(tensor.shape) != len(expected) + 1 or tensor.shape[1:] != expected)) or tensor.shape[0] < 1:
        also = f" (or [rows, {math.prod(expected)}] flat)" if len(expected) > 1 else ""
        raise error(f"input {INPUT_NAME!r}: shape {tensor.shape} does not match [rows, {', '.join(map(str, expected))}]"
                    + also)
    rows = tensor.shape[0]
    if rows > max_rows:
        raise error(f"input {INPUT_NAME!r}: {rows} rows is over the limit of {max_rows} per request; split them")
    count = math.prod(tensor.shape)
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size != count * dtype.itemsize or size > len(binary):
            raise error(f"input {INPUT_NAME!r}: binary_data_size {size!r} does not match {count} x {tensor.datatype}"
                        f" with {len(binary)} bytes of tensor data")
        array = np.frombuffer(binary[:size], dtype=dtype)
    elif tensor.data is not None:
        array = _json_data(tensor.data, dtype, tensor.datatype, count)
        if array.size != count:
            raise error(f"input {INPUT_NAME!r}: {array.size} values for shape {tensor.shape} ({count} expected)")
    else:
        raise error(f"input {INPUT_NAME!r} has neither data nor binary_data_size")
    finite = finite_rows(array.astype(np.float64).reshape(rows, -1))
    if not finite.all():
        raise error(f"input {INPUT_NAME!r}: NaN, infinity or a number beyond float32's range (±3.4e38) in row(s)"
                    f" {', '.join(map(str, np.flatnonzero(~finite)[:10]))}")
    return array.astype(np.float32).reshape(rows, *expected)


def _json_data(data: list, dtype: np.dtype, datatype: str, count: int) -> np.ndarray:
    """JSON tensor data as ``datatype``: numbers only (no strings or booleans), each within the type's range."""
    wanted = f"input {INPUT_NAME!r}: data must be {count} numbers of datatype {datatype}"
    if has_non_number(data):
        raise error(f"{wanted} (strings and booleans are not numbers)")
    try:
        wide = np.asarray(data, dtype=np.float64 if dtype.kind == "f" else object).reshape(-1)
    except OverflowError:
        raise error(f"input {INPUT_NAME!r}: a number beyond {datatype}'s range") from None
    except (ValueError, TypeError):
        raise error(wanted) from None
    if dtype.kind == "f":
        return wide.astype(dtype) if dtype.itemsize >= 4 else _in_range(wide, np.finfo(dtype), datatype, dtype)
    if any(type(value) is not int for value in wide):
        raise error(f"{wanted} (whole numbers)")
    return _in_range(wide, np.iinfo(dtype), datatype, dtype)


def _in_range(values: np.ndarray, limits, datatype: str, dtype: np.dtype) -> np.ndarray:
    low, high = limits.min, limits.max
    outside = [value for value in values if not low <= value <= high]
    if outside:
        raise error(f"input {INPUT_NAME!r}: {shown(outside[0])} is outside {datatype}'s range [{low}, {high}]"
                    f" ({len(outside)} value(s))")
    return values.astype(dtype)


def index_request(body: bytes) -> bool:
    """The repository index request's ``ready`` flag (an empty body: false)."""
    if not body.strip():
        return False
    try:
        given = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise error("the repository index request is not valid JSON") from None
    if not isinstance(given, dict) or not isinstance(given.get("ready", False), bool):
        raise error("the repository index request is {\"ready\": true|false}")
    return given.get("ready", False)


def parameters_of(request: V2InferRequest) -> dict[str, Any]:
    """The request's parameters for the data plane: all but the encoding's own (``binary_data_output``)."""
    return {name: value for name, value in (request.parameters or {}).items() if name != "binary_data_output"}


def response(request: V2InferRequest, answer: InferAnswer) -> tuple[bytes, dict[str, str]]:
    """The infer answer's body and headers."""
    outputs, chunks = [], []
    for name, array, binary in selected_outputs(request, answer.manifest, answer.result):
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype_of(array)}
        if binary:
            raw = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1)
        outputs.append(entry)
    header = orjson.dumps({
        "model_name": answer.manifest.name,
        "model_version": str(answer.model_version),
        "id": answer.request.id,
        "parameters": echoed(answer),
        "outputs": outputs,
    }, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {"content-type": "application/octet-stream",
                                       "Inference-Header-Content-Length": str(len(header))}


def echoed(answer: InferAnswer) -> dict[str, Any]:
    """The response's parameters: what answered the request (T, seed, level) and how its interval was made."""
    request, result = answer.request, answer.result
    params: dict[str, Any] = {"samples": request.samples, "seed": request.seed, "interval": request.level,
                              "id": request.id}
    if request.tolerance is not None:
        params["tolerance"] = request.tolerance
    if isinstance(result, RegressionResult):
        params["interval_method"] = result.interval_method
    elif result.set_level is not None:
        params["set_level"] = result.set_level
    if result.adapted_level is not None:
        params["adapted_level"] = result.adapted_level
    return params


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of an output array (the answers hold int64, bool and float64 arrays)."""
    return {np.dtype(np.int64): "INT64", np.dtype(np.bool_): "BOOL"}.get(array.dtype, "FP64")


@dataclass(frozen=True)
class V2Body:
    """A v2 infer body: the input tensor as an array, the request without the tensor's JSON data."""

    request: V2InferRequest
    rows: np.ndarray


def decode(raw: bytes, header_length: str | None, spec: InputSpec, max_rows: int) -> V2Body:
    """Parse and validate a v2 infer body, binary tensor data included (runs in the decode worker too)."""
    request, binary = parse_request(raw, header_length)
    rows = input_array(request, binary, spec, max_rows)
    for tensor in request.inputs:
        tensor.data = None  # in ``rows`` now; not sent back value by value
    return V2Body(request, rows)


def check_outputs(request: V2InferRequest, manifest: Manifest, rows: int, width: int, limit: int) -> None:
    """Refuse, before any work: an output asked for twice (400), a binary flag that is not true or false (400),
    and an answer of more than ``limit`` values (MCD_MAX_RETURNED_VALUES; 422). ``width``: values per row of
    an output whose width the manifest does not name."""
    _binary_flag((request.parameters or {}).get("binary_data_output"), "parameters.binary_data_output")
    asked = [o.name for o in request.outputs or []]
    for o in request.outputs or []:
        _binary_flag((o.parameters or {}).get("binary_data"), f"outputs[{shown(o.name)}].parameters.binary_data")
    twice = sorted({name for name in asked if asked.count(name) > 1})
    if twice:
        raise error(f"outputs: {', '.join(map(repr, twice))} asked for more than once; each output is answered once")
    specs = {spec["name"]: spec["shape"] for spec in output_specs(manifest)}
    per_row = sum(1 if len(shape) == 1 else (shape[1] if shape[1] > 0 else width)
                  for name, shape in specs.items() if not asked or name in asked)
    if rows * per_row > limit:
        raise ApiError(422, f"outputs: {rows} row(s) x {per_row} value(s) per row = {rows * per_row:,} values is over"
                       f" the limit of {limit:,} (MCD_MAX_RETURNED_VALUES); ask for fewer rows or outputs", "outputs")


def _binary_flag(value: Any, field: str) -> None:
    if value is not None and not isinstance(value, bool):
        raise error(f"{field} must be true or false; got {shown(value)}")


def selected_outputs(request: V2InferRequest, manifest: Manifest, result: Result
                     ) -> list[tuple[str, np.ndarray, bool]]:
    """The output tensors a request asks for (default: all), each with whether it wants them as raw bytes."""
    tensors = _tensors(result)
    names = [spec["name"] for spec in output_specs(manifest) if spec["name"] in tensors]
    all_binary = (request.parameters or {}).get("binary_data_output", False) is True
    if request.outputs:
        offered = {spec["name"] for spec in output_specs(manifest)}
        not_asked = [o.name for o in request.outputs if o.name in offered and o.name not in tensors]
        if not_asked:
            raise error(f"output {not_asked[0]!r} of model {manifest.name!r} comes only with the parameters that"
                        f" ask for it: {_ASKED_BY[not_asked[0]]}")
        unknown = [o.name for o in request.outputs if o.name not in tensors]
        if unknown:
            raise error(f"unknown output(s) {', '.join(map(repr, unknown))}; model {manifest.name!r} has"
                        f" {', '.join(names)}")
        selected = [(o.name, (o.parameters or {}).get("binary_data", all_binary) is True) for o in request.outputs]
    else:
        selected = [(name, all_binary) for name in names]
    return [(name, tensors[name], binary) for name, binary in selected]


def _tensors(result: Result) -> dict[str, np.ndarray]:
    task = "regression" if isinstance(result, RegressionResult) else "classification"
    return {stat.name: getattr(result, stat.name) for stat in OUTPUTS[task] if getattr(result, stat.name) is not None}
