"""Batch scoring of a table of rows: ``mcdropout score MODEL INPUT OUTPUT``.

The input is read in chunks (:mod:`mcdropout.tables`), so memory stays flat
however many rows it has. Each chunk is predicted by an engine, the bundle in
this process (``local``), a server (``remote``, through :mod:`mcdropout.client`)
or an actor pool on Ray Data (``ray``, :mod:`mcdropout.scoring._ray`), and its
rows are written with their statistics as one part file.

Nothing is lost: parts and a progress record live in ``OUTPUT.partial/``; each
part is written under a temporary name and renamed, then the record is updated,
so after Ctrl-C or kill -9 ``--resume`` continues from the last recorded chunk
with no row missing or twice. One run at a time holds the folder's lock; a second
run on the same output is refused (exit 2) naming the holder's pid. When every chunk is done the parts are joined into
a temporary file beside OUTPUT, renamed to OUTPUT, and the folder removed. A
bad input file is an error naming the problem, and leaves no output.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa

from mcdropout import tables
from mcdropout.progress import Progress
from mcdropout.bundle import NonFiniteError
from mcdropout.errors import InputError, ScoringError
from mcdropout.scoring._engines import LocalEngine, RemoteEngine, RemoteInputError
from mcdropout.scoring._job import (
    ENGINES,
    OUTPUT_FORMATS,
    Engine,
    Job,
    Summary,
    checked_chunks,
    file_blake2b,
    rows_table,
    rows_text,
)
from mcdropout.scoring._partial import Partial


def score(job: Job, *, engine: Engine | None = None, resume: bool = False, overwrite: bool = False,
          quiet: bool = False, api_key: str | None = None, ray_address: str | None = None,
          workers: int = 2, trust_code: bool = False) -> Summary:
    """Score ``job.input`` into ``job.output``; see the module docstring for the guarantees.

    ``trust_code``: a local bundle's own ``model.py`` may run (``--trust-bundle-code``); refused otherwise.

    File-system failures (a read-only folder, a full disk, an unreadable file) are a
    :class:`ScoringError` naming the path, as are inputs that cannot be read as tables.
    """
    try:
        return _score(job, engine=engine, resume=resume, overwrite=overwrite, quiet=quiet, api_key=api_key,
                      ray_address=ray_address, workers=workers, trust_code=trust_code)
    except (OSError, pa.ArrowException) as error:
        if isinstance(error, (ValueError, FileNotFoundError)):
            raise
        raise ScoringError(_io_message(error, job.output)) from None


def _score(job: Job, *, engine: Engine | None, resume: bool, overwrite: bool, quiet: bool, api_key: str | None,
           ray_address: str | None, workers: int, trust_code: bool) -> Summary:
    started = time.perf_counter()
    output = Path(job.output)
    out_format = _output_format(output)
    tables.table_format(job.input)
    source = Path(job.input)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    if job.chunk_rows < 1:
        raise ScoringError(f"--chunk-rows must be >= 1, got {job.chunk_rows}")
    _check_output(source, output, overwrite)
    tables.check_last_line(source)
    job = Job(**{**asdict(job), "input_size": source.stat().st_size, "input_blake2b": file_blake2b(source)})
    if job.engine != "ray":
        engine = engine or _engine(job, api_key, trust_code)
    partial = Partial(output, job, resume)
    try:
        if job.engine == "ray":
            from mcdropout.scoring._ray import ray_chunks

            chunks = ray_chunks(job, partial.rows_done, address=ray_address, workers=workers, quiet=quiet,
                                trust_code=trust_code)
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
    except BaseException:
        if partial.chunks == 0:  # nothing to resume from: leave nothing behind
            partial.discard()
        raise
    finally:
        partial.close()  # the lock on OUTPUT.partial/: another run may take it now
    return Summary(output, partial.rows_done, round(time.perf_counter() - started, 3), partial.resumed_from)


def _check_output(source: Path, output: Path, overwrite: bool) -> None:
    """Never the input (by path, hard link or symlink), never a folder, an existing file only with --overwrite."""
    if output.exists():
        same = os.path.samefile(source, output)
    else:
        same = os.path.realpath(source) == os.path.realpath(output)
    if same:
        raise ScoringError(f"{output}: is the input file {source} (same file); give another output path")
    if output.is_dir():
        raise ScoringError(f"{output}: is a folder; give the path of a .parquet or .csv file")
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise ScoringError(f"{output}: exists; pass --overwrite to replace it")


def _io_message(error: BaseException, output: str) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = error.filename or output
        return f"{where}: {error.strerror}" + (f" ({error.filename2})" if error.filename2 else "")
    return f"{output}: {' '.join(str(error).split())}"


def _engine(job: Job, api_key: str | None, trust_code: bool) -> Engine:
    if job.engine == "local":
        return LocalEngine(job.model, samples=job.samples, seed=job.seed, interval=job.interval,
                           options=job.options(), trust_code=trust_code)
    if job.engine == "remote":
        if not job.url:
            raise ScoringError("--engine remote needs --url (the server, e.g. http://127.0.0.1:8000)")
        return RemoteEngine(job.model, job.url, samples=job.samples, seed=job.seed, interval=job.interval,
                            api_key=api_key, options=job.options())
    raise ScoringError(f"unknown engine {job.engine!r}; expected one of {', '.join(ENGINES)}")

def _local_chunks(job: Job, engine: Engine, skip: int) -> Iterator[pa.Table]:
    first = skip
    for _, x, id_name, ids in checked_chunks(job, engine.feature_names, engine.input_shape, skip, engine.text):
        try:
            result = engine.predict(x)
        except NonFiniteError as error:
            raise tables.TableError(f"{job.input}: model {error.model!r} gives non-finite statistics (values"
                                    f" too large for the network) for {len(error.rows)} row(s), rows numbered"
                                    f" from 0: {rows_text(error.rows + first)}") from None
        except RemoteInputError as error:
            raise tables.TableError(f"{job.input}: {error.counted_from(first)}") from None
        except InputError as error:
            raise tables.TableError(f"{job.input}: rows {first}-{first + len(x) - 1} (numbered from 0, the row"
                                    f" numbers below count from {first}): {error}") from None
        yield rows_table(id_name, ids, result)
        first += len(x)

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
