"""``mcdropout acquire BUNDLE POOL_FILE --k K --out PICKS``: the rows of a pool file to label next, to a file.

The pool is read in chunks (every format ``mcdropout score`` reads: CSV, Parquet, JSON Lines, NPY,
whitespace text; and an NPY array of whole inputs, ``(rows, *input_shape)``, for image models) and
picked from by one of three engines: the bundle in this process (``local``: :func:`mcdropout.acquire`),
a served model (``remote``: ``POST /v1/models/{name}/acquire`` through the client, a pool within the
server's row limit), or Ray Data (``ray``: the pool sharded over workers, :mod:`._ray`).

The output (.csv or .parquet) has a row a pick, in order: ``step`` (from 0), ``row`` (the pool row,
numbered from 0), the ``--id-column`` if given, ``score`` (the step's score: BatchBALD's a(A) once the row
is added, or the row's own score) and ``standard_error`` (BatchBALD's sampling error; 0 while exact).

It is resumable as ``mcdropout score`` is (:class:`mcdropout.scoring.Partial`): each BatchBALD pick is
recorded in ``OUTPUT.partial/`` as it is made, under a lock that keeps a second run out; after an
interruption ``--resume`` replays the recorded picks (the same seed gives the same per-sample
probabilities, so the pass over the pool is made again and agrees) and goes on from the next step. The
one-pass methods record their k picks at once. The output appears only when every pick is in.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from mcdropout import tables
from mcdropout.acquisition._acquire import check_request
from mcdropout.acquisition._pool_file import AcquireJob, Pool, Recorder, check_task
from mcdropout.acquisition._ray import ray_picks
from mcdropout.errors import ScoringError, TableError
from mcdropout.scoring import OUTPUT_FORMATS, Partial

ENGINES = ("local", "remote", "ray")
COMMAND = "mcdropout acquire"


@dataclass
class Summary:
    output: Path
    picks: int
    seconds: float
    resumed_from: int


def acquire_file(job: AcquireJob, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
                 api_key: str | None = None, ray_address: str | None = None, workers: int = 2,
                 trust_code: bool = False) -> Summary:
    """Pick ``job.k`` rows of ``job.input`` into ``job.output``; see the module's text for the guarantees."""
    started = time.perf_counter()
    output, source = Path(job.output), Path(job.input)
    out_format = _output_format(output)
    tables.table_format(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file")
    if job.engine not in ENGINES:
        raise ScoringError(f"--engine: unknown engine {job.engine!r}; expected one of {', '.join(ENGINES)}")
    if job.chunk_rows < 1:
        raise ScoringError(f"--chunk-rows must be >= 1, got {job.chunk_rows}")
    check_request(job.k, job.method, beta=job.beta, candidates=job.candidates, configurations=job.configurations)
    _check_output(source, output, overwrite)
    tables.check_last_line(source)
    job = replace(job, input_size=source.stat().st_size, input_blake2b=tables.file_blake2b(source))
    partial = Partial(output, job, resume, command=COMMAND)
    try:
        recorded = Recorder(partial, job, quiet)
        _run(job, recorded, api_key=api_key, ray_address=ray_address, workers=workers, trust_code=trust_code)
        recorded.close()
        partial.finish(out_format)
    except TableError:
        partial.discard()
        raise
    except BaseException:
        if partial.chunks == 0:  # nothing to resume from: leave nothing behind
            partial.discard()
        raise
    finally:
        partial.close()
    return Summary(output, partial.rows_done, round(time.perf_counter() - started, 3), partial.resumed_from)


def _run(job: AcquireJob, recorder: Recorder, **engine: Any) -> None:
    if job.engine == "remote":
        _remote_picks(job, recorder, engine["api_key"])
        return
    if job.engine == "ray":
        ray_picks(job, recorder, address=engine["ray_address"], workers=engine["workers"],
                  trust_code=engine["trust_code"])
        return
    _local_picks(job, recorder, engine["trust_code"])


def _local_picks(job: AcquireJob, recorder: Recorder, trust_code: bool) -> None:
    from mcdropout.acquisition._pool import acquire
    from mcdropout.bundle import load_bundle

    bundle = load_bundle(job.model, trust_code=trust_code, memory_budget=job.memory_budget)
    check_task(bundle.manifest.task, job.method)
    pool = Pool(job, bundle.manifest)
    greedy = job.method == "batchbald"
    result = acquire(bundle, recorder.counted(pool), job.k, job.method, samples=job.samples,
                     seed=job.seed, memory_budget=job.memory_budget, **job.parameters(),
                     **({"start": recorder.done, "on_pick": recorder.candidate} if greedy else {}))
    if not greedy:
        recorder.all_at_once(result.indices, result.scores, result.standard_errors)


def _remote_picks(job: AcquireJob, recorder: Recorder, api_key: str | None) -> None:
    """The pool in one request to the served model ``job.model`` (at most the server's MCD_MAX_ROWS rows)."""
    from mcdropout.client import Client, ServiceError

    if not job.url:
        raise ScoringError("--engine remote needs --url (the server, e.g. http://127.0.0.1:8000)")
    with Client(job.url, api_key=api_key, timeout=600) as client:
        try:
            info = client.model(job.model)
            pool = Pool(job, _Served(info.input_shape or [], info.feature_names))
            rows = np.concatenate(list(recorder.counted(pool)))
            picks = client.acquire(job.model, rows, job.k, method=job.method, samples=job.samples, seed=job.seed,
                                   **{name: value for name, value in job.parameters().items() if value is not None})
        except ServiceError as error:
            raise ScoringError(f"{job.url}: {error}") from None
    errors = picks.raw.get("standard_errors")
    recorder.all_at_once(picks.indices, picks.scores, None if errors is None else np.asarray(errors, dtype=float))


@dataclass(frozen=True)
class _Served:
    """What reading a pool needs of a served model's description."""

    input_shape: list[int]
    feature_names: list[str] | None


def _output_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ScoringError(f"{path}: --out must be .parquet or .csv, got {suffix or 'no extension'!r}")
    return OUTPUT_FORMATS[suffix]


def _check_output(source: Path, output: Path, overwrite: bool) -> None:
    """Never the input, never a folder, an existing file only with --overwrite."""
    same = os.path.samefile(source, output) if output.exists() else \
        os.path.realpath(source) == os.path.realpath(output)
    if same:
        raise ScoringError(f"{output}: is the pool file {source} (same file); give another output path")
    if output.is_dir():
        raise ScoringError(f"{output}: is a folder; give the path of a .parquet or .csv file")
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise ScoringError(f"{output}: exists; pass --overwrite to replace it")
