"""``mcdropout calibrate``: fit a bundle's calibration on a table of held-out rows and rewrite its manifest.

The rows must be ones the network never trained on (a calibration split): conformal guarantees hold
for rows exchangeable with them. Every format ``score`` reads works (via :mod:`mcdropout.tables`);
image models read flattened rows from NPY with the labels in a column or in their own file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from mcdropout import tables
from mcdropout.bundle import MANIFEST, WEIGHTS, Bundle, Manifest, fit_bundle, load_bundle, weights_hash
from mcdropout.errors import InputError, TableError
from mcdropout.stats import calibration as cal


def calibrate(bundle_path: str | os.PathLike, data: str | os.PathLike, target: str | None = None, *,
              features: Sequence[str] | None = None, labels: str | os.PathLike | None = None,
              samples: int | None = None, seed: int = 0, delta: float = 0.1, quiet: bool = False) -> cal.Calibration:
    """Fit the calibration of the bundle at ``bundle_path`` on ``data`` and write it into its manifest.

    ``target``: the column of true values (labels: class indices or class names); or ``labels``: a file
    holding them (NPY vector, or a one-column table). Any calibration the bundle had is ignored while fitting.
    """
    folder = Path(bundle_path)
    loaded = load_bundle(folder, device="cpu")
    manifest = loaded.manifest
    x, y = _rows(manifest, Path(data), target, features, labels)
    source = f"{Path(data).name}: {len(y)} rows" + (f", labels from {Path(labels).name}" if labels else "")
    if not quiet:
        print(f"calibrating {manifest.name} on {len(y)} rows of {data}", file=sys.stderr, flush=True)
    fitted = fit_bundle(loaded, x, y, source=source, samples=samples, seed=seed, delta=delta)
    write_manifest(folder, dataclasses.replace(manifest, calibration=fitted))
    return fitted


def calibrate_on_split(bundle_path: str | os.PathLike, *, samples: int | None = None, seed: int = 0,
                       delta: float = 0.1, quiet: bool = False) -> cal.Calibration:
    """Fit the calibration of a bundle that ``mcdropout train`` wrote on the calibration rows of its recorded
    split (re-made from the manifest, as ``evaluate`` re-makes the test rows), and write it into its manifest.

    The network never trained on those rows. A bundle trained before recipes held out a calibration part is
    calibrated on its split's validation rows, which training used only to choose epochs or tau.
    The manifest's recorded test metrics are measured again as the calibrated bundle now answers, with the
    uncalibrated ones kept beside them under ``uncalibrated`` (as ``mcdropout train`` records them).
    """
    from mcdropout.training import calibrated_metrics, compare, split_of

    folder = Path(bundle_path)
    loaded = load_bundle(folder, device="cpu")
    split = split_of(loaded)
    x, y, source = split.calibration_rows()
    if len(y) == 0:
        raise InputError(f"bundle {loaded.name!r}: its recorded split has no calibration rows (it was trained with"
                         " --calibration-fraction 0); give --data")
    if not quiet:
        print(f"calibrating {loaded.name} on {source}", file=sys.stderr, flush=True)
    fitted = fit_bundle(loaded, x, y, source=source, samples=samples, seed=seed, delta=delta)
    manifest = dataclasses.replace(loaded.manifest, calibration=fitted)
    recorded = loaded.manifest.metrics
    if "mc" in recorded:
        metrics = calibrated_metrics(Bundle(manifest, loaded.model, device="cpu", text=loaded.text), split,
                                     recorded.get("uncalibrated", recorded), samples=recorded.get("samples"),
                                     seed=recorded.get("seed", 0))
        compared = compare(manifest.task, split, metrics)  # as train records it
        if compared is not None:
            metrics["baseline"] = compared
        manifest = dataclasses.replace(manifest, metrics=metrics)
    write_manifest(folder, manifest)
    return fitted


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Replace the bundle's manifest atomically: a temporary file beside it, then a rename. The manifest
    records the hash of the weights beside it (``weights_blake2b``), which load checks."""
    manifest = dataclasses.replace(manifest, weights_blake2b=weights_hash(folder / WEIGHTS))
    manifest.check()
    handle, staging = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=folder)
    try:
        os.chmod(staging, (folder / MANIFEST).stat().st_mode & 0o777 if (folder / MANIFEST).exists() else 0o644)
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(manifest.to_dict(), indent=2) + "\n")
        os.replace(staging, folder / MANIFEST)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _rows(manifest: Manifest, data: Path, target: str | None, features: Sequence[str] | None,
          labels: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    if (target is None) == (labels is None):
        raise InputError("give the true values as --target COLUMN or as --labels FILE (one of the two)")
    table = tables.read_table(data)
    if target is not None and target not in table.schema.names:
        raise TableError(f"{data}: no target column {target!r}; the file has {', '.join(map(repr, table.schema.names))}")
    columns = list(features) if features else tables.feature_columns(manifest.feature_names, manifest.input_shape,
                                                                     table.schema, target, data)
    x = tables.numeric(table, columns, path=data).reshape(-1, *manifest.input_shape)
    if labels is not None:
        y = _label_file(Path(labels))
    else:
        y = _true_values(table, target, data, "target")
    if len(y) != len(x):
        raise InputError(f"{len(x)} rows of features but {len(y)} true values")
    if len(y) < cal.MIN_ROWS:
        raise InputError(f"{data}: {len(y)} rows; calibration needs at least {cal.MIN_ROWS} (a 95% conformal"
                         " interval, the served default, needs 19)")
    return x, y


def _true_values(table: pa.Table, name: str, path: Path, what: str) -> np.ndarray:
    """Column ``name``: class names (text) as objects, or numbers as floats, one value per row."""
    column = table.column(name)
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.asarray(column.to_pylist(), dtype=object)
    return tables.numeric(table, [name], path=path, what=what)[:, 0]


def _label_file(path: Path) -> np.ndarray:
    """True values from their own file: class indices or values (numbers), or class names (text)."""
    if path.suffix.lower() == ".npy":
        values = np.load(path, allow_pickle=False)
        values = values.reshape(len(values), -1)[:, 0] if values.ndim > 1 else values
        return values.astype(object) if values.dtype.kind in "US" else values
    table = tables.read_table(path)
    if table.num_columns != 1:
        raise TableError(f"{path}: a labels file holds one column, got {table.num_columns}")
    return _true_values(table, table.schema.names[0], path, "label")


def describe(fitted: cal.Calibration) -> str:
    """One line per fitted value, for the command's output."""
    lines = [f"calibrated on {fitted.source} ({', '.join(fitted.methods)})"]
    if fitted.sigma_scale is not None:
        lines.append("sigma scale: " + ", ".join(f"{s:.4g}" for s in fitted.sigma_scale))
    if fitted.conformal is not None:
        for level in (0.8, 0.9, 0.95):
            q = [s.quantile(level) for s in fitted.conformal.scores]
            lines.append(f"conformal q at {level:.0%}: " + ", ".join("inf" if math.isinf(v) else f"{v:.4g}" for v in q))
    if fitted.temperature is not None:
        lines.append(f"temperature: {fitted.temperature:.4g}")
    return "\n".join(lines)
