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


class _Predictor:
    """One per actor: the bundle, loaded from the shipped files."""

    def __init__(self, files: dict[str, bytes], samples: int | None, seed: int, interval: float,
                 columns: list[str], id_name: str) -> None:
        from mcdropout.scoring import LocalEngine

        self.folder = tempfile.mkdtemp(prefix="mcdropout-bundle-")
        for name, data in files.items():
            Path(self.folder, name).write_bytes(data)
        self.engine = LocalEngine(self.folder, samples=samples, seed=seed, interval=interval)
        self.columns, self.id_name = columns, id_name

    def __call__(self, chunks: pa.Table) -> pa.Table:
        """Read the staged row groups named by ``chunks`` and predict their rows."""
        from mcdropout.scoring import rows_table

        paths, groups = chunks.column("path").to_pylist(), chunks.column("group").to_pylist()
        batch = pa.concat_tables([pq.ParquetFile(path).read_row_group(group) for path, group in zip(paths, groups)])
        x = tables.numeric(batch, self.columns, path="(staged input)")
        return rows_table(batch, self.engine.predict(x), self.id_name, 0, "(staged input)")


def ray_chunks(job: Any, skip: int, *, address: str | None, workers: int, quiet: bool) -> Iterator[pa.Table]:
    """Output tables of successive chunks, in input order."""
    try:
        import ray
    except ImportError:
        raise ImportError("--engine ray needs Ray Data: pip install 'mcdropout[ray]'") from None
    from mcdropout.scoring import ROW_COLUMN, ScoringError, feature_columns

    if workers < 1:
        raise ScoringError(f"--workers must be >= 1, got {workers}")
    bundle = Path(job.model)
    manifest = read_manifest(bundle)
    files = {p.name: p.read_bytes() for p in bundle.iterdir() if p.is_file()}
    staging = Path(str(job.output) + ".partial") / "ray-input.parquet"
    columns, id_name = _stage(job, skip, manifest, staging, ROW_COLUMN, feature_columns)
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
                                   "interval": job.interval, "columns": columns, "id_name": id_name},
        )
        for batch in dataset.iter_batches(batch_size=job.chunk_rows, batch_format="pyarrow"):
            yield batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    finally:
        staging.unlink(missing_ok=True)
        if started_here:
            ray.shutdown()


def _stage(job: Any, skip: int, manifest: Any, staging: Path, row_column: str,
           feature_columns: Any) -> tuple[list[str] | None, str]:
    """Copy the rows from ``skip`` on (ids + features, checked) to ``staging``; (None, _) if there are none."""
    writer = None
    columns: list[str] | None = None
    id_name = job.id_column or row_column
    first = skip
    try:
        for batch in tables.iter_chunks(job.input, job.chunk_rows, skip_rows=skip,
                                        float_columns=manifest.feature_names or ()):
            if columns is None:
                columns = feature_columns(manifest.feature_names, manifest.input_shape, batch.schema,
                                          job.id_column, job.input)
            values = tables.numeric(batch, columns, path=job.input, first_row=first)
            if job.id_column is None:
                ids = pa.array(range(first, first + batch.num_rows), pa.int64())
            elif job.id_column in batch.schema.names:
                ids = batch.column(batch.schema.names.index(job.id_column))
            else:
                raise tables.TableError(f"{job.input}: no id column {job.id_column!r}; the file has"
                                        f" {', '.join(map(repr, batch.schema.names))}")
            table = pa.table({id_name: ids, **{name: values[:, i] for i, name in enumerate(columns)}})
            if writer is None:
                writer = pq.ParquetWriter(staging, table.schema)
            writer.write_table(table, row_group_size=job.chunk_rows)
            first += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    return columns, id_name
