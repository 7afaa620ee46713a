"""What a scoring run is (:class:`Job`), its errors, and the chunks of checked input rows every engine reads."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from mcdropout import tables
from mcdropout.answer import OPTION_NAMES, Result

OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
ENGINES = ("local", "remote", "ray")
ROW_COLUMN = "row"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_SHOWN_ROWS = 10


file_blake2b = tables.file_blake2b  # the one hash of files: scoring parts, inputs and training tables


@dataclass(frozen=True)
class Job:
    """What is scored and how: recorded with the partial output, so a resume can check it is the same job."""

    model: str
    input: str
    output: str
    engine: str = "local"
    samples: int | str | None = None  # T, or "auto"
    seed: int = 0
    interval: float = 0.95
    id_column: str | None = None
    chunk_rows: int = 10_000
    url: str | None = None
    input_size: int = 0
    input_blake2b: str = ""  # of the input's bytes: a resume scores the same rows, however the file was touched
    interval_method: str | None = None  # calibration options (mcdropout.answer.Options), None: the bundle's default
    set_level: float | None = None
    set_method: str | None = None
    max_risk: float | None = None
    delta: float | None = None
    abstain_score: str | None = None
    max_std: float | None = None
    max_interval_width: float | None = None
    tolerance: float | None = None  # with samples "auto"

    def options(self) -> dict[str, object]:
        """The calibration options asked, by their answer names (mcdropout.answer.Options), and the tolerance
        of samples "auto"."""
        asked = {name: getattr(self, name, None) for name in (*OPTION_NAMES, "tolerance")}  # adaptive: a server's
        return {name: value for name, value in asked.items() if value is not None}

@dataclass
class Summary:
    output: Path
    rows: int
    seconds: float
    resumed_from: int

    @property
    def rows_per_second(self) -> float:
        """Rows scored by this run (not those done before a resume) per second."""
        return (self.rows - self.resumed_from) / self.seconds if self.seconds > 0 else math.inf

class Engine(Protocol):
    feature_names: list[str] | None
    input_shape: list[int]
    text: bool  # rows are strings (a text model): one column of the table

    def predict(self, x: np.ndarray) -> Result: ...

def checked_chunks(job: Job, feature_names: list[str] | None, input_shape: list[int],
                   skip: int, text: bool = False) -> Iterator[tuple[list[str], np.ndarray, str, pa.Array]]:
    """The input from row ``skip`` on, a chunk at a time: the feature columns, their checked values
    (rows, features; a text model's strings, rows), and the name and values of the id column (the row
    number without ``--id-column``)."""
    columns = None
    first = skip
    for batch in tables.iter_chunks(job.input, job.chunk_rows, skip_rows=skip, float_columns=feature_names or ()):
        if columns is None and text:
            columns = [tables.text_column(batch.schema, job.id_column, job.input)]
        elif columns is None:
            columns = tables.feature_columns(feature_names, input_shape, batch.schema, job.id_column, job.input)
        if text:
            x = tables.texts(batch, columns[0], path=job.input, first_row=first)
        else:
            x = tables.numeric(batch, columns, path=job.input, first_row=first)
            _check_float32(x, job.input, first)
        if job.id_column is None:
            yield columns, x, ROW_COLUMN, pa.array(np.arange(first, first + batch.num_rows, dtype=np.int64))
        elif job.id_column in batch.schema.names:
            yield columns, x, job.id_column, batch.column(batch.schema.names.index(job.id_column))
        else:
            raise tables.TableError(f"{job.input}: no id column {job.id_column!r}; the file has"
                                    f" {', '.join(map(repr, batch.schema.names))}")
        first += batch.num_rows

def _check_float32(x: np.ndarray, path: str, first: int) -> None:
    """Models compute in float32: a value past its range (3.4e38) would become infinite there."""
    bad = np.flatnonzero((np.abs(x) > _FLOAT32_MAX).any(axis=1))
    if len(bad):
        raise tables.TableError(f"{path}: {len(bad)} row(s) with values beyond float32's range (+-3.4e38),"
                                f" rows numbered from 0: {rows_text(bad + first)}")


def rows_text(rows: np.ndarray) -> str:
    """Row numbers for an error message, the first ten of them."""
    return ", ".join(str(r) for r in rows[:_SHOWN_ROWS]) + (", ..." if len(rows) > _SHOWN_ROWS else "")


def rows_table(id_name: str, ids: pa.Array, result: Result) -> pa.Table:
    """The output rows of one chunk: the id column, the statistics, then the id of the service's answer that holds
    each row and its index there (``answer_id``, ``answer_row``: what ``mcdropout outcomes`` reports; empty where
    a local engine answered, since no server keeps those answers)."""
    columns = {key: pa.array(value) for key, value in result.columns().items()}
    if "answer_id" not in columns:
        columns.update(answer_id=pa.nulls(len(result), pa.string()), answer_row=pa.nulls(len(result), pa.int64()))
    return pa.table({id_name: ids, **columns})

def partial_folder(output: str | Path) -> Path:
    """Where the parts and the progress record of a run writing ``output`` live until it is complete."""
    output = Path(output)
    return output.with_name(output.name + ".partial")
