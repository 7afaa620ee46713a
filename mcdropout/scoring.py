"""Batch scoring of a table of rows: ``mcdropout score MODEL INPUT OUTPUT``.

The input is read in chunks (:mod:`mcdropout.tables`), so memory stays flat
however many rows it has. Each chunk is predicted by an engine, the bundle in
this process (``local``), a server (``remote``, through :mod:`mcdropout.client`)
or an actor pool on Ray Data (``ray``, :mod:`mcdropout.ray_scoring`), and its
rows are written with their statistics as one part file.

Nothing is lost: parts and a progress record live in ``OUTPUT.partial/``; each
part is written under a temporary name and renamed, then the record is updated,
so after Ctrl-C or kill -9 ``--resume`` continues from the last recorded chunk
with no row missing or twice. When every chunk is done the parts are joined into
a temporary file beside OUTPUT, renamed to OUTPUT, and the folder removed. A
bad input file is an error naming the problem, and leaves no output.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mcdropout import tables
from mcdropout.progress import Progress
from mcdropout.results import Result, from_prediction

OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
ENGINES = ("local", "remote", "ray")
ROW_COLUMN = "row"


class ScoringError(ValueError):
    """Scoring cannot start or go on; the message says why and what to do."""


@dataclass(frozen=True)
class Job:
    """What is scored and how: recorded with the partial output, so a resume can check it is the same job."""

    model: str
    input: str
    output: str
    engine: str = "local"
    samples: int | None = None
    seed: int = 0
    interval: float = 0.95
    id_column: str | None = None
    chunk_rows: int = 10_000
    url: str | None = None
    input_size: int = 0
    input_mtime_ns: int = 0


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

    def predict(self, x: np.ndarray) -> Result: ...


class LocalEngine:
    """The bundle loaded in this process (CUDA when present)."""

    def __init__(self, bundle: str | Path, *, samples: int | None, seed: int, interval: float,
                 device: str = "auto") -> None:
        from mcdropout.bundle import load_bundle

        self.bundle = load_bundle(bundle, device=device)
        self.feature_names = self.bundle.manifest.feature_names
        self.input_shape = self.bundle.manifest.input_shape
        self.samples, self.seed, self.interval = samples, seed, interval

    def predict(self, x: np.ndarray) -> Result:
        prediction = self.bundle.predict(x.reshape(len(x), *self.input_shape), samples=self.samples, seed=self.seed)
        return from_prediction(self.bundle.manifest, prediction, self.interval)


class RemoteEngine:
    """A model served by ``mcdropout serve`` at ``url``."""

    def __init__(self, name: str, url: str, *, samples: int | None, seed: int, interval: float,
                 api_key: str | None = None) -> None:
        from mcdropout.client import Client, ServiceError

        self.client = Client(url, api_key=api_key)
        try:
            info = self.client.model(name)
        except ServiceError as error:
            raise ScoringError(f"model {name!r} at {url}: {error}") from None
        self.feature_names, self.input_shape = info.feature_names, info.input_shape or []
        self.name, self.samples, self.seed, self.interval = name, samples, seed, interval

    def predict(self, x: np.ndarray) -> Result:
        from mcdropout.client import ServiceError

        try:
            return self.client.predict(self.name, x.reshape(len(x), *self.input_shape), samples=self.samples,
                                       seed=self.seed, interval=self.interval)
        except ServiceError as error:
            raise ScoringError(f"{self.client.base_url}: {error}; the chunks done so far are kept: run again with"
                               " --resume") from None


def feature_columns(engine_features: list[str] | None, input_shape: list[int], schema: pa.Schema,
                    id_column: str | None, path: str | Path) -> list[str]:
    """The input's columns to feed the model: matched by feature name, or by position where the file has no
    header (NPY, whitespace text) or the model no feature names."""
    if engine_features and tables.table_format(path) not in tables.HEADERLESS:
        return list(engine_features)
    columns = [name for name in schema.names if name != id_column]
    width = math.prod(input_shape)
    if len(columns) != width:
        raise tables.TableError(f"{path}: the model takes {width} input values per row (shape {input_shape}),"
                                f" matched by position; the file has {len(columns)} columns besides the id")
    return columns


def score(job: Job, *, engine: Engine | None = None, resume: bool = False, quiet: bool = False,
          api_key: str | None = None, ray_address: str | None = None, workers: int = 2) -> Summary:
    """Score ``job.input`` into ``job.output``; see the module docstring for the guarantees."""
    started = time.perf_counter()
    output = Path(job.output)
    out_format = _output_format(output)
    tables.table_format(job.input)
    source = Path(job.input)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    if job.chunk_rows < 1:
        raise ScoringError(f"--chunk-rows must be >= 1, got {job.chunk_rows}")
    stat = source.stat()
    job = Job(**{**asdict(job), "input_size": stat.st_size, "input_mtime_ns": stat.st_mtime_ns})
    if job.engine != "ray":
        engine = engine or _engine(job, api_key)
    partial = _Partial(output, job, resume)
    try:
        if job.engine == "ray":
            from mcdropout.ray_scoring import ray_chunks

            chunks = ray_chunks(job, partial.rows_done, address=ray_address, workers=workers, quiet=quiet)
        else:
            chunks = _local_chunks(job, engine, partial.rows_done)
        total = _row_count(source)
        with Progress(max(total - partial.rows_done, 0), f"scoring {source.name}", "rows", quiet=quiet) as progress:
            for table in chunks:
                partial.add(table)
                progress.update(table.num_rows)
        partial.finish(out_format)
    except tables.TableError:
        partial.discard()
        raise
    return Summary(output, partial.rows_done, round(time.perf_counter() - started, 3), partial.resumed_from)


def _engine(job: Job, api_key: str | None) -> Engine:
    if job.engine == "local":
        return LocalEngine(job.model, samples=job.samples, seed=job.seed, interval=job.interval)
    if job.engine == "remote":
        if not job.url:
            raise ScoringError("--engine remote needs --url (the server, e.g. http://127.0.0.1:8000)")
        return RemoteEngine(job.model, job.url, samples=job.samples, seed=job.seed, interval=job.interval,
                            api_key=api_key)
    raise ScoringError(f"unknown engine {job.engine!r}; expected one of {', '.join(ENGINES)}")


def checked_chunks(job: Job, feature_names: list[str] | None, input_shape: list[int],
                   skip: int) -> Iterator[tuple[list[str], np.ndarray, str, pa.Array]]:
    """The input from row ``skip`` on, a chunk at a time: the feature columns, their checked values
    (rows, features), and the name and values of the id column (the row number without ``--id-column``)."""
    columns = None
    first = skip
    for batch in tables.iter_chunks(job.input, job.chunk_rows, skip_rows=skip, float_columns=feature_names or ()):
        if columns is None:
            columns = feature_columns(feature_names, input_shape, batch.schema, job.id_column, job.input)
        x = tables.numeric(batch, columns, path=job.input, first_row=first)
        if job.id_column is None:
            yield columns, x, ROW_COLUMN, pa.array(np.arange(first, first + batch.num_rows, dtype=np.int64))
        elif job.id_column in batch.schema.names:
            yield columns, x, job.id_column, batch.column(batch.schema.names.index(job.id_column))
        else:
            raise tables.TableError(f"{job.input}: no id column {job.id_column!r}; the file has"
                                    f" {', '.join(map(repr, batch.schema.names))}")
        first += batch.num_rows


def _local_chunks(job: Job, engine: Engine, skip: int) -> Iterator[pa.Table]:
    for _, x, id_name, ids in checked_chunks(job, engine.feature_names, engine.input_shape, skip):
        yield rows_table(id_name, ids, engine.predict(x))


def rows_table(id_name: str, ids: pa.Array, result: Result) -> pa.Table:
    """The output rows of one chunk: the id column, then the statistics."""
    return pa.table({id_name: ids, **{key: pa.array(value) for key, value in result.columns().items()}})


def partial_folder(output: str | Path) -> Path:
    """Where the parts and the progress record of a run writing ``output`` live until it is complete."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


def _row_count(path: Path) -> int:
    """Rows in the input: from metadata where the format has it, else by counting lines."""
    counted = tables.count_rows(path)
    if counted is not None:
        return counted
    lines = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            lines += block.count(b"\n")
    return max(lines - (tables.table_format(path) == "csv"), 0)


def _output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ScoringError(f"{path}: output must be .parquet or .csv, got {suffix or 'no extension'!r}")
    return OUTPUT_FORMATS[suffix]


class _Partial:
    """``OUTPUT.partial/``: ``job.json``, ``part-NNNNNN.parquet`` per chunk, ``progress.json`` (chunks, rows)."""

    def __init__(self, output: Path, job: Job, resume: bool) -> None:
        self.output = output
        self.folder = partial_folder(output)
        self.job = job
        self.chunks = self.rows_done = 0
        if self.folder.exists():
            if not resume:
                raise ScoringError(f"{self.folder} holds an interrupted run: pass --resume to continue it, or"
                                   " delete the folder to start over")
            self._load()
        else:
            self.folder.mkdir(parents=True)
            _write_json(self.folder / "job.json", asdict(job))
            self._save_progress()
        self.resumed_from = self.rows_done

    def _load(self) -> None:
        try:
            recorded = json.loads((self.folder / "job.json").read_text())
            progress = json.loads((self.folder / "progress.json").read_text())
        except (OSError, ValueError) as error:
            raise ScoringError(f"{self.folder}: cannot resume, its record is unreadable ({error}); delete the"
                               " folder to start over") from None
        differs = [key for key, value in asdict(self.job).items() if recorded.get(key) != value]
        if differs:
            raise ScoringError(f"{self.folder}: cannot resume, the interrupted run had a different"
                               f" {', '.join(differs)}; delete the folder to start over")
        self.chunks, self.rows_done = progress["chunks"], progress["rows"]

    def add(self, table: pa.Table) -> None:
        part = self.folder / f"part-{self.chunks:06d}.parquet"
        staging = part.with_suffix(".tmp")
        pq.write_table(table, staging)
        os.replace(staging, part)
        self.chunks += 1
        self.rows_done += table.num_rows
        self._save_progress()

    def _save_progress(self) -> None:
        _write_json(self.folder / "progress.json", {"chunks": self.chunks, "rows": self.rows_done})

    @property
    def _staging(self) -> Path:
        """The joined output before its rename into place."""
        return self.output.with_name(f".{self.output.name}.tmp")

    def finish(self, out_format: str) -> None:
        parts = [self.folder / f"part-{i:06d}.parquet" for i in range(self.chunks)]
        staging = self._staging
        writer = None
        try:
            for part in parts:
                table = pq.read_table(part)
                if writer is None:
                    writer = pq.ParquetWriter(staging, table.schema) if out_format == "parquet" \
                        else pa_csv.CSVWriter(staging, table.schema)
                writer.write_table(table)
            if writer is None:
                raise tables.TableError(f"{self.job.input}: the file holds no rows to score")
        finally:
            if writer is not None:
                writer.close()
        os.replace(staging, self.output)
        shutil.rmtree(self.folder)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._staging.unlink(missing_ok=True)


def _write_json(path: Path, data: dict) -> None:
    staging = path.with_suffix(".tmp")
    staging.write_text(json.dumps(data))
    os.replace(staging, path)
