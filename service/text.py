"""Text rows of a text model's requests: strings checked by the codecs, token ids made by the data plane.

v1 sends ``{"inputs": ["some text", ...]}``; the Open Inference Protocol sends a ``BYTES`` tensor of shape
``[rows]`` (or ``[rows, 1]``), as JSON strings or, with the binary extension and over gRPC, as the
protocol's serialisation: each element a 4-byte little-endian length and its UTF-8 bytes. Every error names
the row and what is wrong: not a string, not UTF-8, empty, more rows than MCD_MAX_ROWS, more tokens than
MCD_MAX_TOKENS or the model's length. What runs in the decode worker (service/decoding.py) imports no torch.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

import numpy as np

from service.inputs import ApiError, invalid, shown

if TYPE_CHECKING:
    from mcdropout.bundle import Bundle

DATATYPE = "BYTES"


def text_rows(values: Any, max_rows: int, field: str = "inputs") -> np.ndarray:
    """v1's rows of a text model: a non-empty list of non-empty strings (an object array); 422 names the row."""
    if not isinstance(values, list):
        raise invalid(f"expected a list of strings (this model takes text), got {type(values).__name__}", field)
    if not values:
        raise invalid("is empty: send at least one string", field)
    if len(values) > max_rows:
        raise invalid(f"{len(values)} rows is over the limit of {max_rows} per request (MCD_MAX_ROWS); split them",
                      field)
    for row, value in enumerate(values):
        _check_text(value, f"{field}[{row}]", invalid)
    return _array(values)


def bytes_tensor(shape: list[int], datatype: str, data: list | None, binary: bytes | None, name: str,
                 max_rows: int) -> np.ndarray:
    """The rows of an OIP ``BYTES`` input tensor (JSON ``data``, or ``binary`` in the protocol's serialisation);
    400 names the input and the element."""
    where = f"input {name!r}"
    if datatype != DATATYPE:
        raise _error(f"{where}: this model takes text: datatype {DATATYPE} (strings), got {datatype!r}")
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1) or shape[0] < 1:
        raise _error(f"{where}: shape {shape} does not match [rows] or [rows, 1] (one string per row)")
    rows = shape[0]
    if rows > max_rows:
        raise _error(f"{where}: {rows} rows is over the limit of {max_rows} per request (MCD_MAX_ROWS); split them")
    if binary is not None:
        values: list[Any] = deserialize(binary, rows, where)
    elif data is not None:
        values = [item for value in data for item in (value if isinstance(value, list) and len(shape) == 2
                                                       else [value])]
        if len(values) != rows:
            raise _error(f"{where}: {len(values)} strings for shape {shape} ({rows} expected)")
    else:
        raise _error(f"{where} has neither data nor binary_data_size")
    texts = []
    for row, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as problem:
                raise _error(f"{where}[{row}]: not UTF-8 text (byte {problem.start})") from None
        texts.append(_check_text(value, f"{where}[{row}]", lambda message, at: _error(f"{at}: {message}")))
    return _array(texts)


def deserialize(raw: bytes, count: int, where: str) -> list[bytes]:
    """``count`` elements of the OIP's BYTES serialisation (a 4-byte little-endian length, then the bytes)."""
    values, offset = [], 0
    for row in range(count):
        if offset + 4 > len(raw):
            raise _error(f"{where}: the tensor data ends before element {row} of {count} (each element is a 4-byte"
                         " little-endian length, then its bytes)")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise _error(f"{where}[{row}]: its length {length} runs past the tensor data")
        values.append(bytes(raw[offset:offset + length]))
        offset += length
    if offset != len(raw):
        raise _error(f"{where}: {len(raw) - offset} byte(s) of tensor data past its {count} element(s)")
    return values


def serialize(values: list[bytes]) -> bytes:
    """The OIP's BYTES serialisation of ``values`` (gRPC's ``bytes_contents`` as raw tensor data)."""
    return b"".join(struct.pack("<I", len(value)) + value for value in values)


def token_ids(bundle: Bundle, rows: np.ndarray, max_tokens: int, field: str) -> np.ndarray:
    """The rows' token ids (rows, the model's length); 422 names the row past MCD_MAX_TOKENS or the model's
    length."""
    from mcdropout.bundle import TextError

    if bundle.text is None:
        raise ApiError(422, f"{field}: model {bundle.name!r} takes numbers, not text", field)
    try:
        return bundle.text.encode(list(rows), max_tokens=max_tokens, max_tokens_name="MCD_MAX_TOKENS")
    except TextError as error:
        at = f"{field}[{error.row}]"
        raise ApiError(422, f"{at}: {error.problem}", at) from None


def _check_text(value: Any, where: str, fail) -> str:
    if not isinstance(value, str):
        raise fail(f"expected a string (this model takes text), got {shown(value)}", where)
    if not value.strip():
        raise fail("is empty (or only white space); send some text", where)
    return value


def _array(values: list[str]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _error(message: str) -> ApiError:
    return ApiError(400, message)
