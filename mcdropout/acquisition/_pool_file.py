"""What ``mcdropout acquire`` works on, for every engine: the run's record (:class:`AcquireJob`), the pool
file's rows a chunk at a time (:class:`Pool`), and the picks written as they are made (:class:`Recorder`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mcdropout import tables
from mcdropout.acquisition._acquire import DEFAULT_CONFIGURATIONS
from mcdropout.errors import InputError, TableError
from mcdropout.progress import Progress
from mcdropout.scoring import Job, Partial, checked_chunks

ROW_COLUMN = "row"


@dataclass(frozen=True)
class AcquireJob:
    """What is picked and how: recorded with the partial output, so that a resume checks it is the same run."""

    model: str  # a bundle folder; with engine "remote" the served model's name
    input: str
    output: str
    k: int
    method: str = "batchbald"
    engine: str = "local"
    samples: int | None = None  # T; None: the bundle's
    seed: int = 0
    id_column: str | None = None
    chunk_rows: int = 10_000
    beta: float = 1.0
    candidates: int | None = None
    configurations: int = DEFAULT_CONFIGURATIONS
    memory_budget: str = "256MB"
    url: str | None = None
    input_size: int = 0
    input_blake2b: str = ""  # of the input's bytes: a resume picks from the same rows

    def parameters(self) -> dict[str, Any]:
        """The method's own settings, by the library's names (:func:`mcdropout.acquisition.acquire_probabilities`)."""
        if self.method == "batchbald":
            return {"candidates": self.candidates, "configurations": self.configurations}
        return {"beta": self.beta} if self.method in ("power", "softmax", "softrank") else {}


def check_task(task: str, method: str) -> None:
    """Every method scores class probabilities: a regression model is refused, naming ``method``."""
    if task != "classification":
        raise InputError(f"method: {method!r} scores class probabilities; the model is a {task} model, and"
                         " acquisition for regression is not supported")


class Pool:
    """The rows of a pool file, a chunk at a time, checked against the model; the ids of the rows read."""

    def __init__(self, job: AcquireJob, manifest: Any) -> None:
        self.job, self.manifest = job, manifest
        self._ids: list[pa.Array] | pa.ChunkedArray = []
        self.id_name = job.id_column or ROW_COLUMN

    def chunks(self) -> Iterator[np.ndarray]:
        """Input arrays (rows, *input_shape), float32, in row order; the ids kept as they pass."""
        self._ids = []
        shape = list(self.manifest.input_shape) if self.manifest is not None else None
        whole = _whole_inputs(self.job, shape)
        if whole is not None:
            for start in range(0, len(whole), self.job.chunk_rows):
                block = np.array(whole[start:start + self.job.chunk_rows], dtype=np.float32)  # a copy of the map
                self._ids.append(pa.array(np.arange(start, start + len(block), dtype=np.int64)))
                yield block
            return
        reading = Job(model=self.job.model, input=self.job.input, output=self.job.output,
                      id_column=self.job.id_column, chunk_rows=self.job.chunk_rows)
        names = None if self.manifest is None else self.manifest.feature_names
        for _, x, _, ids in checked_chunks(reading, names, shape or [], 0):
            self._ids.append(ids)
            yield x.astype(np.float32).reshape(len(x), *(shape or [x.shape[1]]))

    @property
    def ids(self) -> pa.ChunkedArray:
        """The ids (or row numbers) of the rows read so far."""
        if not isinstance(self._ids, pa.ChunkedArray):
            self._ids = pa.chunked_array(self._ids) if self._ids else pa.chunked_array([], type=pa.int64())
        return self._ids


def _whole_inputs(job: AcquireJob, shape: list[int] | None) -> np.ndarray | None:
    """An NPY array of whole inputs (rows, *input_shape), memory-mapped; None for a table of rows."""
    if tables.table_format(job.input) != "npy":
        return None
    try:
        array = np.load(job.input, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise TableError(f"{job.input}: not a readable NPY file ({error})") from None
    if array.ndim <= 2:
        return None
    if shape is not None and list(array.shape[1:]) != shape:
        raise TableError(f"{job.input}: an array of shape {array.shape} holds inputs of shape"
                         f" {list(array.shape[1:])}; the model takes {shape}")
    if job.id_column is not None:
        raise TableError(f"{job.input}: an NPY array has no id column ({job.id_column!r}); its rows are numbered")
    if not np.issubdtype(array.dtype, np.number):
        raise TableError(f"{job.input}: not an array of numbers (dtype {array.dtype})")
    return array


class Recorder:
    """Writes each pick to the partial output as it is made; knows the picks an interrupted run made."""

    def __init__(self, partial: Partial, job: AcquireJob, quiet: bool) -> None:
        self.partial, self.job, self.quiet = partial, job, quiet
        self.done = self._recorded()
        self.pool: Pool | None = None  # the ids of the picked rows; read before any pick is made
        self._picks: Progress | None = None

    def _recorded(self) -> list[int]:
        import pyarrow.parquet as pq

        rows: list[int] = []
        for part in self.partial.parts:
            rows += pq.read_table(self.partial.folder / part["file"], columns=[ROW_COLUMN])[ROW_COLUMN].to_pylist()
        return rows

    def counted(self, pool: Pool) -> Iterator[np.ndarray]:
        """The pool's chunks, counted on a progress line."""
        self.pool = pool
        name = Path(self.job.input).name
        with Progress(_row_count(Path(self.job.input)), f"reading {name}", "rows", quiet=self.quiet) as progress:
            for chunk in pool.chunks():
                yield chunk
                progress.update(len(chunk))

    def candidate(self, step: int, candidate: Any) -> None:
        """The library's ``on_pick``."""
        self.pick(step, candidate.row, candidate.score, candidate.standard_error)

    def pick(self, step: int, row: int, score: float, standard_error: float) -> None:
        """Record pick ``step`` as one part (a replayed pick of the interrupted run is recorded already)."""
        if step < len(self.done):
            return
        if self._picks is None:
            self._picks = Progress(self.job.k - len(self.done), "picking", "picks", quiet=self.quiet)
        columns: dict[str, Any] = {"step": [step], ROW_COLUMN: [row]}
        if self.job.id_column is not None:
            assert self.pool is not None
            columns[self.job.id_column] = self.pool.ids.take([row])
        columns.update(score=[float(score)], standard_error=[float(standard_error)])
        self.partial.add(pa.table(columns))
        self._picks.update(1)

    def all_at_once(self, rows: np.ndarray, scores: np.ndarray, errors: np.ndarray | None) -> None:
        errors = np.zeros(len(rows)) if errors is None else errors
        for step, (row, score, error) in enumerate(zip(rows, scores, errors)):
            self.pick(step, int(row), float(score), float(error))

    def close(self) -> None:
        if self._picks is not None:
            self._picks.close()


def _row_count(path: Path) -> int:
    """Rows in the pool: from metadata where the format has it, else by counting lines."""
    counted = tables.count_rows(path) if tables.table_format(path) != "npy" else None
    if counted is not None:
        return counted
    if tables.table_format(path) == "npy":
        return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    lines = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            lines += block.count(b"\n")
    return max(lines - (tables.table_format(path) == "csv"), 0)
