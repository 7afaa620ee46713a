"""``mcdropout outcomes SCORES LABELS``: join a scoring run's output with labels that arrived later, on a key
column both files hold, and report the outcomes to the server that answered (its ``answer_id`` and
``answer_row`` columns name each row there), or score them here into a local report (mcdropout.quality's
figures over every joined row).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mcdropout import tables
from mcdropout.errors import InputError
from mcdropout.quality import SCORE_COLUMNS, check_target, score_row, summarise


class OutcomesError(ValueError):
    """Files or flags that cannot be joined or reported: one line for the CLI."""


def joined(scores_path: str | Path, labels_path: str | Path, key: str | None, target: str) -> pa.Table:
    """The scored rows that have a label, with the label as column ``__y`` (key: default the scores' first
    column, the scoring run's id column)."""
    scores, labels = tables.read_table(scores_path), tables.read_table(labels_path)
    key = key or scores.column_names[0]
    for path, table, columns in ((scores_path, scores, [key]), (labels_path, labels, [key, target])):
        missing = [column for column in columns if column not in table.column_names]
        if missing:
            raise OutcomesError(f"{path}: no column {missing[0]!r}; it has {', '.join(table.column_names)}")
    keys = labels.column(key).to_pylist()
    if len(set(keys)) != len(keys):
        twice = next(value for value in keys if keys.count(value) > 1)
        raise OutcomesError(f"{labels_path}: key {twice!r} of column {key!r} appears more than once")
    y = labels.column(target)
    if pa.types.is_floating(y.type) and all(v is None or float(v).is_integer() for v in y.to_pylist()):
        y = y.cast(pa.int64())  # class indices read as floats (a CSV column with a gap, say): whole numbers
    labelled = pa.table({key: labels.column(key), "__y": y})
    found = scores.join(labelled, key, join_type="inner")
    if found.num_rows < labels.num_rows:
        unknown = sorted(set(keys) - set(found.column(key).to_pylist()), key=str)
        raise OutcomesError(f"{labels_path}: {len(unknown)} label(s) with no scored row of that {key!r} in"
                            f" {scores_path}, e.g. {unknown[:5]}")
    return found


def report_to_server(found: pa.Table, url: str, model: str, api_key: str | None = None) -> dict[str, int]:
    """POST the joined outcomes to ``url``'s model; the scores must come from a remote scoring run."""
    from mcdropout.client import Client, ServiceError

    ids, rows = found.column("answer_id") if "answer_id" in found.column_names else None, None
    if ids is None or ids.null_count:
        raise OutcomesError("the scores carry no answer ids (answer_id): they were not scored by a server"
                            " (mcdropout score --engine remote); write a local report instead (--report)")
    rows = found.column("answer_row").to_pylist()
    entries = [{"id": answer_id, "row": row, "y": y}
               for answer_id, row, y in zip(ids.to_pylist(), rows, found.column("__y").to_pylist())]
    try:
        with Client(url, api_key=api_key) as client:
            return client.report_outcomes(model, entries)
    except ServiceError as error:  # a refused request was kept whole or not at all (the server's transaction)
        raise OutcomesError(f"{url}: {error}") from None


def local_report(found: pa.Table, interval: float, set_level: float | None, max_risk: float | None
                 ) -> dict[str, Any]:
    """The figures of every joined row, scored here against the score file's columns. The levels are not in
    the file: ``interval``, ``set_level`` and ``max_risk`` are those the scoring run used."""
    names = found.column_names
    classes = [name.removeprefix("prob_") for name in names if name.startswith("prob_")]
    task = "classification" if classes else "regression"
    kept = _kept_rows(found, classes, interval, set_level, max_risk)
    scored = []
    for i, (row, y) in enumerate(zip(kept, found.column("__y").to_pylist())):
        try:
            scored.append(score_row(row, check_target(row, y, f"label of row {i}", classes or None)))
        except InputError as error:
            raise OutcomesError(str(error)) from None
    columns = {name: np.array([np.nan if s.get(name) is None else s[name] for s in scored], dtype=np.float64)
               for name in SCORE_COLUMNS}
    return {"task": task, **summarise(columns, task)}


def _kept_rows(found: pa.Table, classes: list[str], interval: float, set_level: float | None,
               max_risk: float | None) -> list[dict[str, Any]]:
    names = found.column_names
    column = {name: found.column(name).to_numpy(zero_copy_only=False) for name in names if name != "__y"}
    abstain = column.get("abstain")
    if classes:
        probs = np.stack([column[f"prob_{name}"] for name in classes], axis=1).astype(np.float64)
        sets = np.stack([column[f"in_set_{name}"] for name in classes], axis=1) \
            if f"in_set_{classes[0]}" in column else None
        return [{"probs": probs[i].tolist(), "label": int(np.argmax(probs[i])),
                 "set": None if sets is None else np.flatnonzero(sets[i]).tolist(), "set_level": set_level,
                 "abstain": None if abstain is None else bool(abstain[i]),
                 "max_risk": max_risk if abstain is not None else None} for i in range(found.num_rows)]
    suffixes = [""] if "mean" in column else [name[len("mean"):] for name in names if name.startswith("mean_")]
    if not suffixes:
        raise OutcomesError("the scores hold neither prob_<class> nor mean columns: not a scoring run's output")
    stats = {stat: np.stack([column[stat + suffix] for suffix in suffixes], axis=1).astype(np.float64)
             for stat in ("mean", "std", "lower", "upper")}
    return [{**{stat: values[i].tolist() for stat, values in stats.items()}, "level": interval, "method": "",
             "abstain": None if abstain is None else bool(abstain[i])} for i in range(found.num_rows)]


def write_report(report: dict[str, Any], path: str | Path | None) -> str:
    """The report as JSON, written to ``path`` (when given); the text is returned for printing."""
    text = json.dumps(report, indent=2)
    if path is not None:
        Path(path).write_text(text + "\n")
    return text
