"""Outcomes in: a ``POST /v1/models/{name}/outcomes`` body checked entry by entry against the kept answers,
scored (mcdropout.quality.score_row) and written in one transaction — or, on the first bad entry, nothing of
the request is written and the error names the entry's field (``[3].y``).

Duplicates: the first outcome of an (id, row) wins. One already stored, or repeated later in the same
request, is not an error: it is left out and counted in the answer's ``duplicates``, so that a client may
retry a request whose answer it did not hear.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

from mcdropout.errors import InputError
from mcdropout.quality import SCORE_COLUMNS, check_target, score_row
from service.inputs import ApiError, shown
from service.live.store import AnswerStore, transaction

ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
ID_RULE = "1 to 128 characters of A-Z a-z 0-9 . _ : -"


@dataclass(frozen=True)
class StoredAnswer:
    """One kept answer row: ``kept`` is mcdropout.quality.kept_rows' dict (level, interval, probabilities ...)."""

    model: str
    id: str
    row: int
    task: str
    kept: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """One accepted outcome: ``y`` as checked (a list of floats per output, or a class index), and its
    per-row scores (mcdropout.quality.score_row)."""

    id: str
    row: int
    y: Any
    scores: dict[str, Any]


def check_id(value: Any, field: str) -> str:
    """A client's answer id: ApiError 422 naming ``field`` unless it is a string of ID_RULE."""
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise ApiError(422, f"{field}: an answer id is {ID_RULE}; got {shown(value)}", field)
    return value


def parse_entries(raw: bytes, limit: int) -> list[tuple[str, int, Any]]:
    """The body's (id, row, y) entries; ApiError names the field at fault (``[i].row``)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(body, list) or not body:
        raise ApiError(422, 'body: must be a non-empty list of {"id": ..., "row": ..., "y": ...}', "body")
    if len(body) > limit:
        raise ApiError(422, f"body: {len(body)} outcomes is over the limit of {limit} per request"
                       " (MCD_MAX_OUTCOMES); split them", "body")
    entries = []
    for i, entry in enumerate(body):
        if not isinstance(entry, dict):
            raise ApiError(422, f'[{i}]: must be an object {{"id": ..., "row": ..., "y": ...}}', f"[{i}]")
        unknown = sorted(set(entry) - {"id", "row", "y"})
        if unknown:
            raise ApiError(422, f"[{i}].{unknown[0]}: unknown field; expected id, row, y", f"[{i}].{unknown[0]}")
        for name in ("id", "row", "y"):
            if name not in entry:
                raise ApiError(422, f"[{i}].{name}: missing", f"[{i}].{name}")
        row = entry["row"]
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < 2**31:
            raise ApiError(422, f"[{i}].row: must be a row index (an integer from 0 to 2^31-1); got {shown(row)}",
                           f"[{i}].row")
        entries.append((check_id(entry["id"], f"[{i}].id"), row, entry["y"]))
    return entries


def ingest(store: AnswerStore, model: str, classes: list[str] | None, entries: list[tuple[str, int, Any]]
           ) -> tuple[list[tuple[StoredAnswer, Outcome]], int]:
    """Check, score and write ``entries`` in one transaction: the accepted (answer, outcome) pairs and the
    number of duplicates left out. Runs on the store's own thread."""
    connection = store.connection
    with transaction(connection):  # BEGIN IMMEDIATE: no other process writes outcomes until it ends
        ids = {answer_id for answer_id, _, _ in entries}
        found = store.answers_of(model, ids)
        seen = store.outcome_keys(model, ids)  # the first outcome of a row wins
        accepted = []
        for i, (answer_id, row, y) in enumerate(entries):
            pair = _checked(store, model, classes, found, i, answer_id, row, y)
            if (answer_id, row) not in seen:
                seen.add((answer_id, row))
                accepted.append(pair)
        now = time.time()
        columns = ", ".join(SCORE_COLUMNS)
        connection.executemany(
            f"INSERT INTO outcomes (model, id, row, at, y, {columns})"
            f" VALUES (?, ?, ?, ?, ?{', ?' * len(SCORE_COLUMNS)})",
            [(model, outcome.id, outcome.row, now, orjson.dumps(outcome.y).decode(),
              *(outcome.scores.get(name) for name in SCORE_COLUMNS)) for _, outcome in accepted])
    store.reported(model)  # retention, off this request's path
    return accepted, len(entries) - len(accepted)


def _checked(store: AnswerStore, model: str, classes: list[str] | None,
             found: dict[tuple[str, int], tuple[str, str]], i: int, answer_id: str, row: int, y: Any
             ) -> tuple[StoredAnswer, Outcome]:
    hit = found.get((answer_id, row))
    if hit is None:
        rows = store.answer_rows(model, answer_id)
        if rows is not None:
            why = "is past the store's retention" if row < rows[0] else "was never answered"
            raise ApiError(422, f"[{i}].row: row {row} of answer {answer_id!r} {why} (rows {rows[0]} to {rows[1]} are"
                           " kept)", f"[{i}].row")
        raise ApiError(422, f"[{i}].id: no answer {answer_id!r} of model {model!r} is kept (never answered, past"
                       " the store's retention, or answered by a server with another store)", f"[{i}].id")
    task, kept = hit[0], orjson.loads(hit[1])
    try:
        checked = check_target(kept, y, f"[{i}].y", classes)
    except InputError as error:
        raise ApiError(422, str(error), f"[{i}].y") from None
    return StoredAnswer(model, answer_id, row, task, kept), Outcome(answer_id, row, checked, score_row(kept, checked))

