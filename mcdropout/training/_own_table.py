"""Train a bundle from the user's own table: ``mcdropout train --data FILE --target COLUMN``.

The rows are shuffled with the seed; a test part (10% by default) is held out
for the metrics the manifest records, and the rest is the training part.
Features and target are standardised on the training part; p and tau are
chosen by validation log-likelihood when grids are given (the last 20% of the
training part, as in Gal & Ghahramani's protocol), and the chosen network is
re-trained on the whole training part (:mod:`mcdropout.training._gridsearch`). The
bundle is an ``mlp`` with dropout before every dense layer, ready for the
service and ``mcdropout score``.
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

from mcdropout import _tables as tables
from mcdropout.training import _evaluation as evaluation
from mcdropout.training import _gridsearch as gridsearch
from mcdropout.training import datasets
from mcdropout.training._table_data import features_and_target, partition
from mcdropout.bundle import Bundle, Manifest, Standardisation, save_bundle

MIN_TRAINING_ROWS = 20


def train_from_table(
    path: str | Path,
    *,
    target: str,
    features: Sequence[str] | None = None,
    task: str = "regression",
    dropouts: Sequence[float] = (0.05,),
    taus: Sequence[float] | None = None,
    hidden: Sequence[int] = (50,),
    epochs: int = 400,
    test_fraction: float = 0.1,
    validation_samples: int = 1000,
    samples: int = 100,
    name: str | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> tuple[Path, dict]:
    """Train, evaluate on the held-out part and write the bundle; returns (bundle path, metrics)."""
    started = time.perf_counter()
    _check_settings(task, dropouts, taus, hidden, epochs, test_fraction)
    table = tables.read_table(path)
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
        raise ValueError(f"--features must not include the target column {target!r}")
    if not features:
        raise ValueError(f"{path}: no feature columns besides the target {target!r}")
    x, y, classes = features_and_target(table, features, target, task, path)
    _check_data(x, features, path)

    test, train = partition(len(x), seed, test_fraction)
    held_out = len(test)
    if len(train) < MIN_TRAINING_ROWS:
        raise ValueError(f"{path}: {len(train)} training rows after holding out {held_out} for testing; at least"
                         f" {MIN_TRAINING_ROWS} are needed")
    settings = gridsearch.Settings(
        task=task, hidden=tuple(hidden), dropouts=tuple(dropouts), taus=None if taus is None else tuple(taus),
        epochs=epochs, validation_samples=validation_samples, classes=len(classes) if classes else None, seed=seed,
        standardised_tau=True,
    )
    torch.manual_seed(seed)
    fitted = gridsearch.fit([gridsearch.TrainingSet(x[train], y[train])], settings, quiet=quiet)[0]

    name = name or (Path(out).name if out is not None else _bundle_name(Path(path)))  # the server wants folder = name
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
            "data": {"path": str(path), "rows": len(x), "target": target, "test_fraction": test_fraction,
                     "split_seed": seed, "train_rows": len(train), "test_rows": len(test)},
            "selection": {"chosen": {"dropout": fitted.dropout, "tau": fitted.tau},
                          "grid": fitted.validation,
                          "rule": "max validation log-likelihood on the last 20% of the training part"
                          if fitted.validation else "no grid: the given p and tau"},
            "seed": seed, "epochs": epochs, "batch_size": settings.batch_size,
            "optimizer": {"name": "adam", "lr": 1e-3},
            "weight_decay": f"{gridsearch.LENGTHSCALE}^2 (1 - p) / (2 N tau) on weight matrices",
            "torch": torch.__version__, "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        },
    )
    metrics: dict = {}
    if len(test):
        split = datasets.Split(x[train], y[train], x[:0], y[:0], x[test], y[test], feature_names=list(features))
        metrics = evaluation.evaluate(Bundle(manifest, fitted.model, device="cpu"), split, seed=seed)
    manifest.training["wall_time_s"] = round(time.perf_counter() - started, 2)
    bundle = save_bundle(fitted.model, Path(out) if out is not None else Path("models") / name,
                         replace(manifest, metrics=metrics))
    return bundle, metrics


def _check_settings(task: str, dropouts: Sequence[float], taus: Sequence[float] | None, hidden: Sequence[int],
                    epochs: int, test_fraction: float) -> None:
    if task not in ("regression", "classification"):
        raise ValueError(f"--task must be 'regression' or 'classification', got {task!r}")
    if not dropouts or not all(0 < p < 1 for p in dropouts):
        raise ValueError(f"dropout rates must lie in (0, 1), got {list(dropouts)}")
    if taus is not None and task != "regression":
        raise ValueError("--tau / --tau-grid apply to regression only")
    if taus is not None and (not taus or not all(t > 0 for t in taus)):
        raise ValueError(f"tau values must be positive, got {list(taus)}")
    if not hidden or not all(h > 0 for h in hidden):
        raise ValueError(f"--hidden must list positive layer widths, got {list(hidden)}")
    if epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {epochs}")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"--test-fraction must lie in [0, 1), got {test_fraction}")


def _check_data(x: np.ndarray, features: Sequence[str], path: str | Path) -> None:
    constant = [name for name, column in zip(features, x.T) if np.ptp(column) == 0]
    if constant:
        raise tables.TableError(f"{path}: constant column(s) {', '.join(map(repr, constant))} carry no information;"
                                " leave them out with --features")


def _bundle_name(path: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-._") or "model"
    return name[:64]
