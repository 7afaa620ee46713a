"""Per-sample probabilities of a pool, in chunks: where they come from and where BatchBALD keeps them.

A *chunk* is (offset, probs): the pool's rows ``offset .. offset + len(probs)`` and their per-sample class
probabilities, shape (rows, T, C). A source of chunks is an array (rows, T, C), an iterable of chunks, or an
iterable of bare arrays (their offsets follow one another). Chunks come in row order, each once.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from mcdropout.errors import InputError


@dataclass(frozen=True)
class Chunk:
    """Rows ``offset .. offset + len(probs)`` of a pool and their per-sample probabilities (rows, T, C)."""

    offset: int
    probs: np.ndarray


ProbabilitySource = Union[np.ndarray, Iterable[Chunk], Iterable[np.ndarray], Callable[[], Iterable[Any]]]


def iter_chunks(source: ProbabilitySource, chunk_bytes: int) -> Iterator[Chunk]:
    """The chunks of ``source``, checked: consecutive offsets from 0, one (T, C) shape, finite probabilities.
    An array is cut into chunks of about ``chunk_bytes`` (in float64); other sources keep their own chunks."""
    if callable(source) and not isinstance(source, np.ndarray):
        source = source()
    if hasattr(source, "shape") and hasattr(source, "ndim"):  # an array: numpy, a memmap, a torch tensor
        if source.ndim != 3:
            raise InputError(f"probabilities: expected an array of shape (rows, T, C), got shape {tuple(source.shape)}")
        array = source
        chunk_rows = max(1, chunk_bytes // (8 * max(1, int(np.prod(array.shape[1:])))))
        parts: Iterable[Any] = (Chunk(start, np.asarray(array[start:start + chunk_rows]))
                                for start in range(0, len(array), chunk_rows))
    else:
        parts = source
    expected = 0
    shape = None
    for part in parts:
        chunk = part if isinstance(part, Chunk) else Chunk(expected, np.asarray(part))
        probs = chunk.probs
        if probs.ndim != 3 or probs.shape[1] < 2 or probs.shape[2] < 2:
            raise InputError(f"probabilities: chunk at row {chunk.offset}: expected shape (rows, T >= 2, C >= 2),"
                             f" got {probs.shape}")
        if shape is not None and probs.shape[1:] != shape:
            raise InputError(f"probabilities: chunk at row {chunk.offset} has (T, C) = {probs.shape[1:]},"
                             f" the earlier ones {shape}: every row needs the same samples and classes")
        if chunk.offset != expected:
            raise InputError(f"probabilities: chunk offsets must follow one another from 0; expected row {expected},"
                             f" got {chunk.offset}")
        if not np.isfinite(probs).all() or (probs < 0).any():
            raise InputError(f"probabilities: chunk at row {chunk.offset} holds negative, NaN or infinite values")
        shape = probs.shape[1:]
        expected += len(probs)
        if len(probs):
            yield chunk


class Buffer:
    """Rows of per-sample probabilities kept for BatchBALD's passes, float32: in RAM while they fit
    ``budget_bytes``, past it in a file in ``directory`` (a temporary one by default), read back a range
    of rows at a time (plain reads, not a memory map, so that the rows read count against no one's
    resident memory once a pass moves on).

    ``capacity``: with a number, a fixed set of slots written in place (the BALD prefilter's candidates);
    without, rows are appended in order.
    """

    def __init__(self, samples: int, classes: int, budget_bytes: int, capacity: int | None = None,
                 directory: str | os.PathLike | None = None) -> None:
        self.shape = (samples, classes)
        self.row_bytes = 4 * samples * classes
        self.budget_bytes = budget_bytes
        self.directory = directory
        self.rows = 0
        self._parts: list[np.ndarray] = []
        self._array: np.ndarray | None = None
        self._fd: int | None = None
        self._path: Path | None = None
        if capacity is not None:
            self.rows = capacity
            if capacity * self.row_bytes <= budget_bytes:
                self._array = np.zeros((capacity, *self.shape), dtype=np.float32)
            else:
                self._open()
                os.ftruncate(self._fd, capacity * self.row_bytes)

    def _open(self) -> None:
        self._fd, name = tempfile.mkstemp(prefix="mcdropout-acquisition-", suffix=".f32", dir=self.directory)
        self._path = Path(name)

    @property
    def on_disk(self) -> bool:
        return self._path is not None

    def append(self, probs: np.ndarray) -> None:
        probs = np.ascontiguousarray(probs, dtype=np.float32)
        if self._fd is None and (self.rows + len(probs)) * self.row_bytes > self.budget_bytes:
            self._open()
            for part in self._parts:
                os.write(self._fd, part.tobytes())
            self._parts = []
        if self._fd is not None:
            os.pwrite(self._fd, probs.tobytes(), self.rows * self.row_bytes)
        else:
            self._parts.append(probs)
        self.rows += len(probs)

    def write(self, slots: np.ndarray, probs: np.ndarray) -> None:
        """Put ``probs`` (rows, T, C) into the fixed ``slots``."""
        if self._array is not None:
            self._array[slots] = probs
            return
        probs = np.ascontiguousarray(probs, dtype=np.float32)
        for slot, row in zip(slots.tolist(), probs):
            os.pwrite(self._fd, row.tobytes(), slot * self.row_bytes)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start .. stop``, (rows, T, C) float32."""
        if self._fd is not None:
            data = os.pread(self._fd, (stop - start) * self.row_bytes, start * self.row_bytes)
            return np.frombuffer(data, dtype=np.float32).reshape(stop - start, *self.shape)
        if self._array is None:
            self._array = (np.concatenate(self._parts) if self._parts
                           else np.zeros((0, *self.shape), dtype=np.float32))
            self._parts = []
        return self._array[start:stop]

    def close(self) -> None:
        """Drop the rows and delete the file, if any."""
        self._array = None
        self._parts = []
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None
