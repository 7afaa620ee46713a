"""``OUTPUT.partial/``: the parts of an unfinished run and its progress record, joined into OUTPUT at the end.

``progress.json`` lists every part with its first row, its row count and the BLAKE2b of its bytes; a
resume checks that the list is consistent (parts in order, rows contiguous from 0) and that each part
file is still the one written, so an edited record or a replaced part is an error, never mixed data.

One run at a time: a run holds ``fcntl.flock`` on ``OUTPUT.partial/lock`` (which records its pid) from
start to end, and a second run on the same output is refused naming the holder, so two ``--resume`` runs
can never interleave their parts or join the output twice. A new folder is made under a per-process name,
locked, and renamed into place, so two fresh runs cannot both take it; temporary files carry the pid.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from mcdropout import tables
from mcdropout.errors import ScoringError
from mcdropout.scoring._job import Job, file_blake2b, partial_folder

_START_OVER = "delete the folder to start over"
_LOCK = "lock"


class Partial:
    """``OUTPUT.partial/``: ``job.json``, ``part-NNNNNN.parquet`` per chunk, ``progress.json`` (the parts)."""

    def __init__(self, output: Path, job: Job, resume: bool, command: str = "mcdropout score") -> None:
        self.output = output
        self.command = command  # named to a second run that finds the folder in use
        self.folder = partial_folder(output)
        self.job = job
        self.parts: list[dict[str, Any]] = []
        self._lock_fd: int | None = None
        if not self._create():
            self._lock_existing()
            try:
                if not resume:
                    raise ScoringError(f"{self.folder} holds an interrupted run: pass --resume to continue it,"
                                       f" or {_START_OVER}")
                self._load()
            except BaseException:
                self.close()
                raise
        self.resumed_from = self.rows_done

    def _create(self) -> bool:
        """A new folder, filled and locked under a per-process name, then renamed into place; False if one exists."""
        if self.folder.exists():
            return False
        fresh = self.folder.with_name(f"{self.folder.name}.{os.getpid()}.new")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        try:
            self._lock_fd = _locked(fresh / _LOCK)
            _write_json(fresh / "job.json", asdict(self.job))
            _write_json(fresh / "progress.json", self._progress())
            try:
                os.rename(fresh, self.folder)
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                self.close()  # another run made it first: take it the way every run takes an existing one
                shutil.rmtree(fresh, ignore_errors=True)
                return False
        except BaseException:
            self.close()
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        return True

    def _lock_existing(self) -> None:
        """Lock the existing folder, or refuse: another run holds it (named by its pid), or it has just gone."""
        path = self.folder / _LOCK
        gone = ScoringError(f"{self.folder}: another run finished or removed it while this one started;"
                            f" run again")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            raise gone from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise ScoringError(f"{self.folder} is in use by another `{self.command}` run ({who}); wait for it"
                               f" to finish, or stop it first") from None
        try:  # the holder before us may have finished and removed the folder between our open and our lock
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError(path)
        except FileNotFoundError:
            os.close(fd)
            raise gone from None
        _write_pid(fd)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (also released by the process ending, kill -9 included)."""
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            os.close(fd)

    @property
    def chunks(self) -> int:
        return len(self.parts)

    @property
    def rows_done(self) -> int:
        return sum(part["rows"] for part in self.parts)

    def _load(self) -> None:
        try:
            recorded = json.loads((self.folder / "job.json").read_text())
            progress = json.loads((self.folder / "progress.json").read_text())
        except (OSError, ValueError) as error:
            raise ScoringError(f"{self.folder}: cannot resume, its record is unreadable ({error}); {_START_OVER}"
                               ) from None
        if not isinstance(recorded, dict):
            raise ScoringError(f"{self.folder}/job.json: cannot resume, not a job record; {_START_OVER}")
        differs = [key for key, value in asdict(self.job).items() if recorded.get(key) != value]
        if differs:
            what = ["the input's content" if key in ("input_blake2b", "input_size") else key for key in differs]
            raise ScoringError(f"{self.folder}: cannot resume, the interrupted run had a different"
                               f" {', '.join(dict.fromkeys(what))}; {_START_OVER}")
        self.parts = self._checked_parts(progress)

    def _checked_parts(self, progress: Any) -> list[dict[str, Any]]:
        """The recorded parts, each checked against the record's own order and the file on disk."""
        record = self.folder / "progress.json"
        parts = progress.get("parts") if isinstance(progress, dict) else None
        if not isinstance(parts, list):
            raise ScoringError(f"{record}: cannot resume, no list of parts; {_START_OVER}")
        first = 0
        for index, part in enumerate(parts):
            name = _part_name(index)
            if not (isinstance(part, dict) and part.get("file") == name and part.get("first_row") == first
                    and isinstance(part.get("rows"), int) and part["rows"] > 0 and isinstance(part.get("blake2b"), str)):
                raise ScoringError(f"{record}: cannot resume, entry {index} is not {name} from row {first};"
                                   f" the record was edited; {_START_OVER}")
            file = self.folder / name
            if not file.is_file() or file_blake2b(file) != part["blake2b"]:
                raise ScoringError(f"{file}: cannot resume, the part is missing or not the one this run wrote"
                                   f" (checksum differs); {_START_OVER}")
            first += part["rows"]
        return parts

    def add(self, table: pa.Table) -> None:
        name = _part_name(self.chunks)
        part = self.folder / name
        staging = part.with_suffix(f".{os.getpid()}.tmp")
        try:
            pq.write_table(table, staging)
            checksum = file_blake2b(staging)
            os.replace(staging, part)
        finally:
            staging.unlink(missing_ok=True)
        self.parts.append({"file": name, "first_row": self.rows_done, "rows": table.num_rows, "blake2b": checksum})
        self._save_progress()

    def _save_progress(self) -> None:
        _write_json(self.folder / "progress.json", self._progress())

    def _progress(self) -> dict[str, Any]:
        return {"chunks": self.chunks, "rows": self.rows_done, "parts": self.parts}

    @property
    def _staging(self) -> Path:
        """The joined output before its rename into place."""
        return self.output.with_name(f".{self.output.name}.{os.getpid()}.tmp")

    def finish(self, out_format: str) -> None:
        staging = self._staging
        writer = None
        try:
            for part in self.parts:
                table = pq.read_table(self.folder / part["file"])
                if writer is None:
                    writer = pq.ParquetWriter(staging, table.schema) if out_format == "parquet" \
                        else pa_csv.CSVWriter(staging, table.schema)
                writer.write_table(table)
            if writer is None:
                raise tables.TableError(f"{self.job.input}: the file holds no rows to score")
            done, writer = writer, None
            done.close()
            os.replace(staging, self.output)
        finally:
            if writer is not None:
                writer.close()
            staging.unlink(missing_ok=True)
        shutil.rmtree(self.folder)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._staging.unlink(missing_ok=True)


def _part_name(index: int) -> str:
    return f"part-{index:06d}.parquet"


def _locked(path: Path) -> int:
    """A new lock file, locked by this process and holding its pid."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _write_pid(fd)
    return fd


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _write_json(path: Path, data: dict) -> None:
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        staging.write_text(json.dumps(data))
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
