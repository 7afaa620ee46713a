"""The ``ray`` engine of ``mcdropout score``: Ray Data ``map_batches`` over an actor pool.

The driver first copies the rows still to score (after a resume's offset) into
a Parquet file of the feature columns and row ids, checking them on the way, so
that a bad row is reported with its row number before any work is spent. Ray
Data hands each actor row groups of that file, one chunk at a time (on a
cluster of several machines, put OUTPUT where every machine sees it: the file
lives beside it); each actor loads the bundle once (its files travel with the
actor, so workers on other machines need no shared disk for the model) and predicts
batches of ``chunk_rows`` rows, one GPU per actor when the cluster has GPUs.
Output batches come back in input order (``preserve_order``) and are written by
the driver as parts, as with the other engines. With no ``--ray-address`` a
local Ray with ``workers`` CPUs is started and stopped; with one, the driver
joins that cluster.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mcdropout import tables
from mcdropout.bundle import read_manifest
from mcdropout.scoring._engines import LocalEngine
from mcdropout.errors import ScoringError
from mcdropout.scoring._job import Job, checked_chunks, partial_folder, rows_table


class _Predictor:
    """One per actor: the bundle, loaded from the shipped files."""

    def __init__(self, files: dict[str, bytes], samples: int | None, seed: int, interval: float,
                 columns: list[str], id_name: str, options: dict | None = None, trust_code: bool = False) -> None:
        self.folder = tempfile.mkdtemp(prefix="mcdropout-bundle-")
        for name, data in files.items():
            Path(self.folder, name).write_bytes(data)
        self.engine = LocalEngine(self.folder, samples=samples, seed=seed, interval=interval, options=options,
                                  trust_code=trust_code)
        self.columns, self.id_name = columns, id_name

    def __call__(self, chunks: pa.Table) -> pa.Table:
        """Read the staged row groups named by ``chunks`` and predict their rows."""
        paths, groups = chunks.column("path").to_pylist(), chunks.column("group").to_pylist()
        batch = pa.concat_tables([pq.ParquetFile(path).read_row_group(group) for path, group in zip(paths, groups)])
        x = tables.numeric(batch, self.columns, path="(staged input)")
        return rows_table(self.id_name, batch.column(self.id_name), self.engine.predict(x))


def ray_chunks(job: Job, skip: int, *, address: str | None, workers: int, quiet: bool,
               trust_code: bool = False) -> Iterator[pa.Table]:
    """Output tables of successive chunks, in input order."""
    try:
        import ray
    except ImportError:
        raise ImportError("--engine ray needs Ray Data: pip install 'mcdropout[ray]'") from None

    if workers < 1:
        raise ScoringError(f"--workers must be >= 1, got {workers}")
    bundle = Path(job.model)
    manifest = read_manifest(bundle)
    files = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    staging = partial_folder(job.output) / "ray-input.parquet"
    columns, id_name = _stage(job, skip, manifest, staging)
    if columns is None:
        return
    started_here = not ray.is_initialized() and address is None
    if not ray.is_initialized():
        ray.init(address=address, num_cpus=workers if address is None else None, include_dashboard=False,
                 log_to_driver=not quiet, logging_level="ERROR", configure_logging=True)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        groups = pq.ParquetFile(staging).num_row_groups
        # Each actor reads the row group it is given: no read tasks, which on a small Ray would start a worker
        # process per task (and Ray Data's file listing waits for a CPU slot that the actors hold).
        dataset = ray.data.from_items([{"path": str(staging), "group": g} for g in range(groups)]).map_batches(
            _Predictor, batch_size=1, batch_format="pyarrow", concurrency=workers, num_gpus=gpus,
            num_cpus=0 if gpus else 1,
            fn_constructor_kwargs={"files": files, "samples": job.samples, "seed": job.seed,
                                   "interval": job.interval, "columns": columns, "id_name": id_name,
                                   "options": job.options(), "trust_code": trust_code},
        )
        for batch in dataset.iter_batches(batch_size=job.chunk_rows, batch_format="pyarrow"):
            yield batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    finally:
        staging.unlink(missing_ok=True)
        if started_here:
            ray.shutdown()


def _stage(job: Job, skip: int, manifest: Any, staging: Path) -> tuple[list[str] | None, str]:
    """Copy the rows from ``skip`` on (ids + features, checked) to ``staging``; (None, "") if there are none."""
    writer = None
    columns: list[str] | None = None
    id_name = ""
    try:
        for columns, x, id_name, ids in checked_chunks(job, manifest.feature_names, manifest.input_shape, skip):
            table = pa.table({id_name: ids, **{name: x[:, i] for i, name in enumerate(columns)}})
            if writer is None:
                writer = pq.ParquetWriter(staging, table.schema)
            writer.write_table(table, row_group_size=job.chunk_rows)
    finally:
        if writer is not None:
            writer.close()
    return columns, id_name
