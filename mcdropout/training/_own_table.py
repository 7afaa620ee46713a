"""Train a bundle from the user's own table: ``mcdropout train --data FILE --target COLUMN``.

The rows are shuffled with the seed; a test part (10% by default) is held out
for the metrics the manifest records, a calibration part (15% by default) for
the bundle's calibration (conformal intervals or sets), and the rest is the
training part. Features and target are standardised on the training part, so
the fit is the same whatever their units. The last 20% of the training part
(as in Gal & Ghahramani's protocol) validates: each network stops early there,
and p and tau are chosen there by log-likelihood; the chosen network is then
re-trained on the whole training part for its best number of epochs
(:mod:`mcdropout.training._gridsearch`). The calibration rows are used for
nothing else. The bundle is an ``mlp`` with dropout before every dense layer,
ready for the service and ``mcdropout score``.
"""

from __future__ import annotations

import platform
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mcdropout import tables
from mcdropout.bundle import Bundle, Manifest, Standardisation, fit_bundle, save_bundle
from mcdropout.errors import InputError
from mcdropout.training import _baseline as baseline
from mcdropout.training import _evaluation as evaluation
from mcdropout.training import _gridsearch as gridsearch
from mcdropout.training import datasets
from mcdropout.training._recipes import calibrated, destination
from mcdropout.training._table_data import features_and_target

STEP_BUDGET = 5_000  # default epochs: about this many gradient steps, within the bounds below
EPOCH_BOUNDS = (20, 1000)


def sized_epochs(rows: int, batch_size: int) -> tuple[int, int]:
    """The most epochs to train ``rows`` rows in batches of ``batch_size``, and the early-stopping patience.

    About STEP_BUDGET steps (500 epochs for 1,200 rows, 20 for 40,000 or more); the patience is a twentieth of
    them, 5 to 25 epochs. Early stopping usually ends training well before the most.
    """
    steps = -(-rows // batch_size)
    epochs = int(np.clip(-(-STEP_BUDGET // steps), *EPOCH_BOUNDS))
    return epochs, int(np.clip(epochs // 20, 5, 25))


def train_from_table(
    path: str | Path,
    *,
    target: str,
    features: Sequence[str] | None = None,
    task: str = "regression",
    dropouts: Sequence[float] = (0.05,),
    taus: Sequence[float] | None = None,
    hidden: Sequence[int] = (50,),
    epochs: int | None = None,
    test_fraction: float = 0.1,
    calibration_fraction: float = datasets.CALIBRATION_FRACTION,
    validation_samples: int = 1000,
    samples: int = 100,
    name: str | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    quiet: bool = False,
    overwrite: bool = False,
) -> tuple[Path, dict]:
    """Train, calibrate, evaluate on the held-out part and write the bundle; returns (bundle path, metrics).

    ``epochs``: the most epochs (default: sized to the data, :func:`sized_epochs`); training stops early on the
    validation rows. ``calibration_fraction``: rows held out to calibrate the bundle on (0: uncalibrated).
    The metrics' ``baseline`` compares the model with a constant predictor and warns when it is no better.
    The bundle (``out``, default ``models/NAME``) replaces an existing folder only with ``overwrite``. The
    manifest records the table's absolute path and BLAKE2b, so that ``evaluate`` re-makes the split from
    any folder and names a table that has since gone or changed.
    """
    started = time.perf_counter()
    _check_settings(task, dropouts, taus, hidden, epochs, test_fraction, calibration_fraction)
    name = name or (Path(out).name if out is not None else _bundle_name(Path(path)))  # the server wants folder = name
    folder = destination(out, name, overwrite)
    table = tables.read_table(path)
    digest = tables.file_blake2b(path)
    columns = table.schema.names
    if target not in columns:
        raise tables.TableError(f"{path}: no target column {target!r}; the file has {', '.join(map(repr, columns))}")
    if features is None:
        features = [c for c in columns if c != target]
        text = [c for c in features if not tables.is_numeric_type(table.column(c).type)]
        if text:
            raise tables.TableError(f"{path}: column(s) {', '.join(map(repr, text))} are not numeric; name the"
                                    " feature columns with --features")
    elif target in features:
        raise InputError(f"--features must not include the target column {target!r}")
    if not features:
        raise tables.TableError(f"{path}: no feature columns besides the target {target!r}")
    x, y, classes = features_and_target(table, features, target, task, path)
    _check_data(x, features, path)

    train, _, calibration, test = datasets.partition(len(x), seed, test_fraction, 0.0, calibration_fraction)
    datasets.check_parts(str(path), len(x), len(train), len(test), len(calibration), calibration_fraction)
    batch_size = gridsearch.Settings.batch_size
    fitting_rows = int((1 - gridsearch.VALIDATION_FRACTION) * len(train))  # as gridsearch.fit cuts
    most, patience = sized_epochs(fitting_rows, batch_size)
    settings = gridsearch.Settings(
        task=task, hidden=tuple(hidden), dropouts=tuple(dropouts), taus=None if taus is None else tuple(taus),
        epochs=most if epochs is None else epochs, validation_samples=validation_samples,
        classes=len(classes) if classes else None, seed=seed, standardised_tau=True, patience=patience,
    )
    torch.manual_seed(seed)
    fitted = gridsearch.fit([gridsearch.TrainingSet(x[train], y[train])], settings, quiet=quiet)[0]

    regression = task == "regression"
    manifest = Manifest(
        name=name,
        description=f"MLP trained by `mcdropout train --data {Path(path).name} --target {target}`.",
        task=task,
        architecture="mlp",
        config={"in_features": len(features), "out_features": len(classes) if classes else 1,
                "hidden": list(hidden), "dropout": fitted.dropout, "input_dropout": True},
        input_shape=[len(features)],
        feature_names=list(features),
        output_names=[target] if regression else None,
        class_names=classes,
        input_standardisation=Standardisation(fitted.x_mean.tolist(), fitted.x_std.tolist()),
        target_standardisation=Standardisation(fitted.y_mean.tolist(), fitted.y_std.tolist()) if regression else None,
        samples=samples,
        dropout=fitted.dropout,
        tau=fitted.tau * float(np.mean(fitted.y_std)) ** 2 if regression else None,  # standardised units
        training={
            "data": {"path": str(Path(path).resolve()), "blake2b": digest, "rows": len(x), "target": target,
                     "test_fraction": test_fraction, "calibration_fraction": calibration_fraction, "split_seed": seed,
                     "train_rows": len(train), "calibration_rows": len(calibration), "test_rows": len(test)},
            "selection": {"chosen": {"dropout": fitted.dropout, "tau": fitted.tau},
                          "grid": fitted.validation,
                          "rule": "max validation log-likelihood on the last 20% of the training part"},
            "seed": seed, "epochs": fitted.epochs, "batch_size": settings.batch_size,
            "early_stopping": {"max_epochs": settings.epochs, "patience": settings.patience,
                               "validation_rows": len(train) - fitting_rows,
                               "rule": "each network keeps its weights from the last epoch that lowered its"
                                       " validation loss (dropout off) by 0.5%, and stops after `patience` epochs"
                                       " without; the final network re-trains on the whole training part for as"
                                       " many epochs"},
            "optimizer": {"name": "adam", "lr": 1e-3},
            "weight_decay": f"{gridsearch.LENGTHSCALE}^2 (1 - p) / (2 N tau) on weight matrices",
            "torch": torch.__version__, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        },
    )
    split = datasets.Split(x[train], y[train], x[:0], y[:0], x[test], y[test], feature_names=list(features),
                           x_calibration=x[calibration], y_calibration=y[calibration])
    bundle = Bundle(manifest, fitted.model, device="cpu")
    source = f"the calibration part of {Path(path).name} ({len(calibration)} rows, never trained on)"
    if len(calibration) and len(test):
        manifest = calibrated(bundle, split, seed=seed, source=source)
    elif len(calibration):
        fitted_calibration = fit_bundle(bundle, split.x_calibration, split.y_calibration, seed=seed, source=source)
        manifest = replace(manifest, calibration=fitted_calibration)
    elif len(test):
        manifest = replace(manifest, metrics=evaluation.evaluate(bundle, split, seed=seed))
    metrics = dict(manifest.metrics or {})
    compared = baseline.compare(task, split, metrics)
    if compared is not None:
        metrics["baseline"] = compared
    manifest.training["wall_time_s"] = round(time.perf_counter() - started, 2)
    bundle_path = save_bundle(fitted.model, folder, replace(manifest, metrics=metrics))
    return bundle_path, metrics


def _check_settings(task: str, dropouts: Sequence[float], taus: Sequence[float] | None, hidden: Sequence[int],
                    epochs: int | None, test_fraction: float, calibration_fraction: float) -> None:
    if task not in ("regression", "classification"):
        raise InputError(f"--task must be 'regression' or 'classification', got {task!r}")
    if not dropouts or not all(0 < p < 1 for p in dropouts):
        raise InputError(f"dropout rates must lie in (0, 1), got {list(dropouts)}")
    if taus is not None and task != "regression":
        raise InputError("--tau / --tau-grid apply to regression only")
    if taus is not None and (not taus or not all(t > 0 for t in taus)):
        raise InputError(f"tau values must be positive, got {list(taus)}")
    if not hidden or not all(h > 0 for h in hidden):
        raise InputError(f"--hidden must list positive layer widths, got {list(hidden)}")
    if epochs is not None and epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {epochs}")
    if not 0 <= test_fraction < 1:
        raise InputError(f"--test-fraction must lie in [0, 1), got {test_fraction}")
    if not 0 <= calibration_fraction < 1:
        raise InputError(f"--calibration-fraction must lie in [0, 1) (0: no calibration), got {calibration_fraction}")
    if test_fraction + calibration_fraction >= 1:
        raise InputError(f"--test-fraction {test_fraction} and --calibration-fraction {calibration_fraction} leave no"
                         " training rows; together they must stay below 1")


def _check_data(x: np.ndarray, features: Sequence[str], path: str | Path) -> None:
    constant = [name for name, column in zip(features, x.T) if np.ptp(column) == 0]
    if constant:
        raise tables.TableError(f"{path}: constant column(s) {', '.join(map(repr, constant))} carry no information;"
                                " leave them out with --features")


def _bundle_name(path: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-._") or "model"
    return name[:64]
