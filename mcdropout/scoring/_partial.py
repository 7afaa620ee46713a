"""``OUTPUT.partial/``: the parts of an unfinished run and its progress record, joined into OUTPUT at the end."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mcdropout import _tables as tables
from mcdropout.errors import ScoringError
from mcdropout.scoring._job import Job, partial_folder


class Partial:
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
