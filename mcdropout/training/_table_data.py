"""A table's features and target as arrays, and the held-out parts a bundle trained on it records."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from mcdropout import tables
from mcdropout.bundle import Manifest
from mcdropout.training import datasets

MAX_CLASSES = 1000


class OutsideAllowedDirs(tables.TableError):
    """The table a manifest names lies (after following every symlink) outside the folders it may be read from."""


def recorded_split(manifest: Manifest, allowed_dirs: Sequence[str | Path] | None = None) -> datasets.Split:
    """The parts of the table a bundle was trained on, re-read from the path its manifest records (its
    validation rows are inside the training part, so the split's validation part is empty).

    ``allowed_dirs``: where given (the server gives the bundle's folder and the operator's folders), a path
    that resolves outside all of them is refused before it is opened; None (the CLI, on the user's own
    bundle) reads the recorded path wherever it is."""
    data = manifest.training["data"]
    path = training_table(data, allowed_dirs)
    x, y, classes = features_and_target(tables.read_table(path), manifest.feature_names, data["target"],
                                         manifest.task, path)
    if classes != manifest.class_names:
        raise tables.TableError(f"{path}: its classes {classes} are not the bundle's"
                                f" {manifest.class_names}; the file changed since training")
    if len(x) != data["rows"]:
        raise tables.TableError(f"{path}: {len(x)} rows, the bundle was trained on {data['rows']};"
                                " the file changed since training")
    train, _, calibration, test = datasets.partition(len(x), data["split_seed"], data["test_fraction"], 0.0,
                                                     data.get("calibration_fraction", 0.0))
    return datasets.Split(x[train], y[train], x[:0], y[:0], x[test], y[test], feature_names=manifest.feature_names,
                          x_calibration=x[calibration], y_calibration=y[calibration])


def training_table(data: dict, allowed_dirs: Sequence[str | Path] | None = None) -> Path:
    """The table a bundle was trained on (``data``: its manifest's ``training.data``), checked to be there and,
    where the manifest records its BLAKE2b, to hold the same bytes as when training read it.

    Bundles record an absolute path; older ones the path as typed, which is read from the current folder."""
    recorded = Path(data["path"])
    path = recorded.resolve()  # every symlink followed: one inside the bundle that points out is out
    if allowed_dirs is not None and not any(path.is_relative_to(Path(folder).resolve()) for folder in allowed_dirs):
        raise OutsideAllowedDirs("the bundle's training table is outside its own folder and the folders this server"
                                 " may read (MCD_ALLOWED_DATA_DIRS)")
    typed = "" if recorded.is_absolute() else f" (recorded as {str(recorded)!r}, relative to where training ran)"
    if not path.is_file():
        raise tables.TableError(f"the training table {path} is missing{typed}; the bundle's held-out rows are"
                                " re-made from it")
    expected = data.get("blake2b")
    if expected is not None:
        found = tables.file_blake2b(path)
        if found != expected:
            raise tables.TableError(f"the training table {path} has changed since training (BLAKE2b {found}, the"
                                    f" bundle's {expected}); the bundle's held-out rows cannot be re-made from it")
    return path


def features_and_target(table: pa.Table, features: Sequence[str], target: str, task: str,
                         path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Checked features (rows, features); the target, (rows, 1) values or (rows,) class indices; class names."""
    x = tables.numeric(table, features, path=path)
    if task == "regression":
        kind = table.schema.field(target).type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            raise tables.TableError(f"{path}: target column {target!r} holds text, not numbers; to train a"
                                    " classifier on it give --task classification")
        return x, tables.numeric(table, [target], path=path, what="target"), None
    y, classes = _labels(table.column(target), path, target)
    return x, y, classes


def _labels(column: pa.ChunkedArray, path: str | Path, target: str) -> tuple[np.ndarray, list[str]]:
    """Class indices and class names (sorted; numbers sort as numbers)."""
    if column.null_count:
        rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
        raise tables.TableError(f"{path}: target column {target!r} is empty in row(s) {', '.join(map(str, rows[:10]))}")
    values = column.to_numpy(zero_copy_only=False)
    classes, indices = np.unique(values, return_inverse=True)
    if not 2 <= len(classes) <= MAX_CLASSES:
        raise tables.TableError(f"{path}: target column {target!r} has {len(classes)} distinct value(s); a"
                                f" classifier needs 2 to {MAX_CLASSES}")
    names = [str(int(c)) if isinstance(c, float) and c.is_integer() else str(c) for c in classes]
    return indices.astype(np.int64), names
