"""Reading tables of rows: CSV, Parquet, JSON Lines, NPY and whitespace-separated text.

:func:`read_table` reads a whole file (training); :func:`iter_chunks` streams
one in chunks of rows so memory stays flat however large it is (scoring).
:func:`numeric` turns named columns into a float64 matrix, and its errors name
what is wrong: missing columns, non-numeric columns, rows holding NaN or inf.
Whitespace-separated text and NPY files have no header: their columns are named
by position, ``"0"``, ``"1"``, ... :func:`feature_columns` picks the columns a
model reads; :func:`file_blake2b` fingerprints a file (a bundle records its
training table's, a scoring run its input's).
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from mcdropout.errors import InputError, TableError

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl",
           ".npy": "npy", ".txt": "text", ".data": "text", ".dat": "text"}
HEADERLESS = {"npy", "text"}  # formats whose columns are named by position
_SHOWN_ROWS = 10  # row numbers listed in an error, at most


def table_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise TableError(f"{path}: unknown file type {suffix or '(none)'!r}; expected one of {', '.join(FORMATS)}")
    return FORMATS[suffix]


def check_last_line(path: str | Path) -> None:
    """Refuse a CSV or whitespace-text file whose last byte is not a newline: its last line may have been
    cut mid-value (an interrupted copy or write), and a cut number still parses."""
    if table_format(path) not in ("csv", "text"):
        return
    with open(path, "rb") as handle:
        if handle.seek(0, 2) == 0:
            return
        handle.seek(-1, 2)
        if handle.read(1) != b"\n":
            raise TableError(f"{path}: the last line does not end in a newline, so it may be cut short; if it is"
                             " complete, add a newline at the end of the file")


def file_blake2b(path: str | Path) -> str:
    """Hex BLAKE2b (128-bit) of a file's bytes, read 16 MB at a time."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def feature_columns(feature_names: Sequence[str] | None, input_shape: Sequence[int], schema: pa.Schema,
                    id_column: str | None, path: str | Path) -> list[str]:
    """The table's columns to feed a model: matched by feature name, or by position where the file has no
    header (NPY, whitespace text) or the model no feature names (every column but ``id_column``)."""
    if feature_names and table_format(path) not in HEADERLESS:
        return list(feature_names)
    columns = [name for name in schema.names if name != id_column]
    width = math.prod(input_shape)
    if len(columns) != width:
        raise TableError(f"{path}: the model takes {width} input values per row (shape {list(input_shape)}),"
                         f" matched by position; the file has {len(columns)} columns besides the id")
    return columns


TEXT_COLUMN = "text"  # a text model's column, where the table has others besides the id


def text_column(schema: pa.Schema, id_column: str | None, path: str | Path) -> str:
    """The column of strings a text model reads: the one column besides ``id_column``, else ``text``."""
    columns = [name for name in schema.names if name != id_column]
    if len(columns) == 1:
        return columns[0]
    if TEXT_COLUMN in columns:
        return TEXT_COLUMN
    raise TableError(f"{path}: a text model reads one column of strings: the only column besides the id, or one"
                     f" named {TEXT_COLUMN!r}; the file has {', '.join(map(repr, schema.names))}")


def texts(batch: pa.RecordBatch | pa.Table, column: str, *, path: str | Path, first_row: int = 0) -> np.ndarray:
    """Column ``column`` as an object array of non-blank strings; ``first_row`` numbers the rows in errors."""
    values = batch.column(batch.schema.names.index(column))
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
            or pa.types.is_null(values.type)):
        raise TableError(f"{path}: text column {column!r} does not hold strings (type {values.type})")
    rows = np.empty(batch.num_rows, dtype=object)
    rows[:] = values.to_pylist()
    blank = np.asarray([value is None or not value.strip() for value in rows], dtype=bool)
    if blank.any():
        bad = np.flatnonzero(blank) + first_row
        shown = ", ".join(str(r) for r in bad[:_SHOWN_ROWS]) + (", ..." if len(bad) > _SHOWN_ROWS else "")
        raise TableError(f"{path}: {len(bad)} row(s) with missing or empty text in column {column!r} (rows numbered"
                         f" from 0: {shown})")
    return rows


def read_table(path: str | Path) -> pa.Table:
    """The whole file as an Arrow table."""
    batches = list(iter_chunks(path, 1 << 16))
    if not batches:
        raise TableError(f"{path}: the file holds no rows")
    return pa.Table.from_batches(batches)


def count_rows(path: str | Path) -> int | None:
    """Rows in the file where that is cheap to know (Parquet metadata, NPY header), else None."""
    kind = table_format(path)
    if kind == "parquet":
        return _parquet(path).metadata.num_rows
    if kind == "npy":
        return int(_npy(path).shape[0])
    return None


def iter_chunks(path: str | Path, chunk_rows: int, *, skip_rows: int = 0,
                float_columns: Sequence[str] = ()) -> Iterator[pa.RecordBatch]:
    """Record batches of ``chunk_rows`` rows (the last may be shorter), after skipping ``skip_rows`` rows.

    ``float_columns`` are read as float64 where the format infers types per block (CSV).
    """
    if chunk_rows < 1:
        raise InputError(f"chunk_rows must be >= 1, got {chunk_rows}")
    kind = table_format(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file")
    batches = {"csv": _csv_batches, "parquet": _parquet_batches, "jsonl": _jsonl_batches, "npy": _npy_batches,
               "text": _text_batches}[kind](path, chunk_rows, float_columns)
    try:
        yield from _rechunk(batches, chunk_rows, skip_rows)
    except pa.ArrowInvalid as error:
        raise TableError(f"{path}: {_one_line(error)}") from None
    except OSError as error:  # pyarrow's IOError: a damaged file (the file itself was found above)
        raise TableError(f"{path}: not a readable {kind} file ({_one_line(error)})") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def is_numeric_type(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def numeric(batch: pa.RecordBatch | pa.Table, columns: Sequence[str], *, path: str | Path, first_row: int = 0,
            what: str = "feature") -> np.ndarray:
    """Columns ``columns`` as a (rows, columns) float64 array; ``first_row`` numbers the rows in errors."""
    names = batch.schema.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise TableError(f"{path}: missing {what} column(s) {', '.join(map(repr, missing))}; the file has"
                         f" {', '.join(map(repr, names))}")
    arrays = []
    for name in columns:
        column = batch.column(names.index(name))
        if not (is_numeric_type(column.type) or pa.types.is_null(column.type)):
            raise TableError(f"{path}: {what} column {name!r} is not numeric (type {column.type})")
        arrays.append(column.to_numpy(zero_copy_only=False).astype(np.float64))
    values = np.stack(arrays, axis=1) if arrays else np.zeros((batch.num_rows, 0))
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad) + first_row
        shown = ", ".join(str(r) for r in rows[:_SHOWN_ROWS]) + (", ..." if len(rows) > _SHOWN_ROWS else "")
        raise TableError(f"{path}: {len(rows)} row(s) among rows {first_row}-{first_row + len(values) - 1} with"
                         f" missing, NaN or infinite {what} values (rows numbered from 0: {shown})")
    return values


def _rechunk(batches: Iterator[pa.RecordBatch], size: int, skip: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``size`` rows (the last may be shorter); slices are views, only chunks are copied."""
    pending: pa.Table | None = None
    for batch in batches:
        if skip:
            dropped = min(skip, batch.num_rows)
            batch, skip = batch.slice(dropped), skip - dropped
        table = pa.Table.from_batches([batch])
        table = table if pending is None else pa.concat_tables([pending, table], promote_options="default")
        offset = 0
        while table.num_rows - offset >= size:
            yield table.slice(offset, size).combine_chunks().to_batches()[0]
            offset += size
        # The remainder (under a chunk) is copied, not sliced: a slice, even an empty one, keeps the whole
        # batch it came from alive, and each next batch would chain to it, holding every batch read so far.
        pending = table.slice(offset).combine_chunks() if offset < table.num_rows else None
    if pending is not None and pending.num_rows:
        yield pending.combine_chunks().to_batches()[0]


def _csv_batches(path, chunk_rows: int, float_columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    # Columns read as numbers are read as float64 throughout: otherwise a column whose first
    # block held only integers fails on a later decimal.
    convert = pa_csv.ConvertOptions(column_types={name: pa.float64() for name in float_columns})
    try:
        yield from pa_csv.open_csv(path, convert_options=convert, read_options=pa_csv.ReadOptions(block_size=1 << 22))
    except pa.ArrowInvalid as error:
        with open(path, newline="") as handle:
            names = next(csv.reader(handle), [])
        found = re.search(r"column #(\d+)", str(error))
        if found is None or int(found[1]) >= len(names):
            raise
        column = int(found[1])
        value = re.search(r"invalid value '(.*)'$", str(error))
        row = None if value is None else _first_row_holding(path, column, value[1])
        where = "" if row is None else f" at row {row} (numbered from 0)"
        raise TableError(f"{path}: column {names[column]!r} is not numeric{where} ({error})") from None


def _first_row_holding(path, column: int, value: str) -> int | None:
    """The first data row of a CSV whose field ``column`` is ``value`` (pyarrow's conversion errors name
    the value, not the row); read again on the error path only."""
    with open(path, newline="") as handle:
        rows = csv.reader(handle)
        next(rows, None)
        for number, fields in enumerate(rows):
            if column < len(fields) and fields[column] == value:
                return number
    return None


def _parquet(path) -> pq.ParquetFile:
    try:
        # pre_buffer (pyarrow's default) keeps the buffered ranges of every row group read so far:
        # memory would grow with the file.
        return pq.ParquetFile(path, pre_buffer=False)
    except (pa.ArrowInvalid, OSError) as error:
        raise TableError(f"{path}: not a readable Parquet file ({_one_line(error)})") from None


def _parquet_batches(path, chunk_rows: int, float_columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    yield from _parquet(path).iter_batches(batch_size=chunk_rows)


def _jsonl_batches(path, chunk_rows: int, float_columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    yield from pa_json.open_json(path, read_options=pa_json.ReadOptions(block_size=1 << 22))


def _npy(path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise TableError(f"{path}: not a readable NPY file ({error})") from None
    if array.ndim != 2:
        raise TableError(f"{path}: expected a 2-D array (rows, columns), got shape {array.shape}")
    return array


def _npy_batches(path, chunk_rows: int, float_columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    array = _npy(path)
    yield from _array_batches(array, chunk_rows)


def _text_batches(path, chunk_rows: int, float_columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise TableError(f"{path}: not a whitespace-separated table of numbers ({error})") from None
    yield from _array_batches(values, chunk_rows)


def _array_batches(values: np.ndarray, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """A 2-D array (possibly memory-mapped) as float64 batches with columns named by position."""
    names = [str(i) for i in range(values.shape[1])]
    for start in range(0, len(values), chunk_rows):
        block = np.asarray(values[start:start + chunk_rows], dtype=np.float64)
        yield pa.RecordBatch.from_arrays([pa.array(block[:, i]) for i in range(block.shape[1])], names=names)
