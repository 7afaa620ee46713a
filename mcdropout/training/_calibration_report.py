"""Held-out rows scored before and after a bundle's calibration: what ``mcdropout evaluate`` reports and plots.

"Before" is the bundle with its calibration removed, its raw MC numbers taken at their word: Gaussian
intervals; for classifiers, sets of the top classes until their probability reaches the level, and the
most confident rows accepted while the mean of their 1 - max prob stays within the risk. "After" is the
bundle as served: conformal intervals on the sigma-scaled std, temperature-scaled probabilities,
conformal sets and Learn-then-Test abstention thresholds (the answer module's own code paths).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mcdropout import answer
from mcdropout.bundle import Bundle, summarise
from mcdropout.stats import metrics

LEVELS = (0.8, 0.9, 0.95)
RISKS = (0.01, 0.02, 0.05)
SET_LEVEL = 0.9
SCORE = "one_minus_max_prob"  # the served default abstain_score
BINS = 15  # reliability bins, as metrics.ece


@dataclass(frozen=True)
class Side:
    """One column of the report: the bundle's predictions on the rows, raw (before) or as served (after)."""

    metrics: dict[str, float | None]
    probs: np.ndarray | None = None  # classifiers
    coverage_by_level: tuple[np.ndarray, np.ndarray] | None = None  # regression: nominal levels, observed


@dataclass(frozen=True)
class Report:
    """Before and after on ``rows`` held-out rows; ``after`` is None for an uncalibrated bundle."""

    task: str
    rows: int
    rows_source: str
    calibration: dict | None
    before: Side
    after: Side | None
    labels: np.ndarray | None = None  # classifiers: the true classes

    def to_dict(self) -> dict:
        return {"rows": self.rows, "rows_source": self.rows_source, "calibration": self.calibration,
                "before": self.before.metrics, "after": None if self.after is None else self.after.metrics,
                "before_means": BEFORE[self.task], "after_means": AFTER[self.task]}


BEFORE = {
    "regression": "the raw MC numbers (calibration removed): Gaussian intervals mean +- z std",
    "classification": "the raw MC probabilities (calibration removed) taken at their word: a set holds the top"
                      " classes until their probability reaches the level; at a risk, the most confident rows"
                      " are accepted while the mean of their 1 - max prob stays within it",
}
AFTER = {
    "regression": "as served: conformal intervals mean +- q std on the sigma-scaled std",
    "classification": "as served: temperature-scaled probabilities, conformal sets, and rows accepted under the"
                      " Learn-then-Test threshold of 1 - max prob (error <= risk with probability 1 - delta)",
}


def calibration_report(bundle: Bundle, x: np.ndarray, y: np.ndarray, *, rows_source: str,
                       samples: int | None = None, seed: int = 0, set_level: float = SET_LEVEL,
                       set_method: str = "lac") -> Report:
    """Score ``bundle`` on rows ``x`` with true values ``y`` (class indices for classifiers), before and after
    its calibration. The rows must be ones neither training nor calibration used."""
    calibration = bundle.manifest.calibration
    raw = Bundle(dataclasses.replace(bundle.manifest, calibration=None), bundle.model, bundle.path,
                 device=str(next(bundle.model.parameters()).device))
    summary = None if calibration is None else calibration.summary()
    if bundle.manifest.task == "regression":
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        before = _regression(raw, x, y, samples, seed)
        after = None if calibration is None else _regression(bundle, x, y, samples, seed)
        return Report("regression", len(y), rows_source, summary, before, after)
    labels = np.asarray(y).astype(np.int64)
    before = _classification(raw, x, labels, samples, seed, set_level, set_method)
    after = None if calibration is None else _classification(bundle, x, labels, samples, seed, set_level,
                                                             set_method)
    return Report("classification", len(labels), rows_source, summary, before, after, labels)


def _regression(bundle: Bundle, x: np.ndarray, y: np.ndarray, samples: int | None, seed: int) -> Side:
    prediction = bundle.predict(x, samples=samples, seed=seed)
    manifest = bundle.manifest
    mean = prediction.mean.reshape(len(y), -1).numpy().astype(np.float64)
    variance = prediction.variance.reshape(len(y), -1).numpy().astype(np.float64)
    scores: dict[str, float | None] = {"rmse": metrics.rmse(y, mean), "nll": metrics.gaussian_nll(y, mean, variance)}
    for level in LEVELS:
        tag = round(level * 100)
        interval = served_interval(manifest, prediction, level)
        if interval is None:  # too few calibration rows for a conformal interval at this level
            scores.update({f"coverage_{tag}": None, f"width_{tag}": None, f"interval_score_{tag}": None})
            continue
        lower, upper = interval
        scores[f"coverage_{tag}"] = metrics.interval_coverage(y, lower, upper)
        scores[f"width_{tag}"] = float(np.mean(upper - lower))
        scores[f"interval_score_{tag}"] = metrics.interval_score(y, lower, upper, level)
    levels = np.round(np.linspace(0.05, 0.95, 19), 2)
    intervals = [served_interval(manifest, prediction, level) for level in levels]
    observed = np.array([np.nan if i is None else metrics.interval_coverage(y, *i) for i in intervals])
    return Side(scores, coverage_by_level=(levels, observed))


def served_interval(manifest, prediction, level: float) -> tuple[np.ndarray, np.ndarray] | None:
    """The interval the service answers at ``level``: conformal for a calibrated bundle, else Gaussian;
    None where the bundle's calibration rows are too few for a conformal interval at ``level``."""
    try:
        options = answer.parse_options({}, manifest, level)
    except answer.OptionError:
        return None
    result = summarise(manifest, prediction, level, options)
    return result.lower, result.upper


def _classification(bundle: Bundle, x: np.ndarray, labels: np.ndarray, samples: int | None, seed: int,
                    set_level: float, set_method: str) -> Side:
    prediction = bundle.predict(x, samples=samples, seed=seed)
    probs = prediction.probs.numpy().astype(np.float64)
    calibration = bundle.manifest.calibration
    wrong = probs.argmax(axis=1) != labels
    uncertainty = 1.0 - probs.max(axis=1)
    scores: dict[str, float | None] = {
        "accuracy": metrics.accuracy(probs, labels), "nll": metrics.classification_nll(probs, labels),
        "ece": metrics.ece(probs, labels, bins=BINS), "brier": metrics.brier(probs, labels),
    }
    members = _mass_sets(probs, set_level) if calibration is None else \
        calibration.sets.predict_sets(probs, set_level, set_method)
    tag = round(set_level * 100)
    scores[f"set_coverage_{tag}"] = float(members[np.arange(len(labels)), labels].mean())
    scores[f"set_size_{tag}"] = float(members.sum(axis=1).mean())
    scores["aurc"] = metrics.aurc(uncertainty, wrong)
    for risk in RISKS:
        threshold = _plug_in_threshold(uncertainty, risk) if calibration is None else \
            calibration.selective.threshold(risk, SCORE)
        accepted = uncertainty <= threshold
        scores[f"accepted_fraction_at_{risk:g}"] = float(accepted.mean())
        scores[f"accepted_error_at_{risk:g}"] = float(wrong[accepted].mean()) if accepted.any() else None
    return Side(scores, probs=probs)


def _mass_sets(probs: np.ndarray, level: float) -> np.ndarray:
    """The top classes of each row until their probability reaches ``level`` (the probabilities trusted)."""
    order = np.argsort(-probs, axis=1, kind="stable")
    ranked = np.take_along_axis(probs, order, axis=1)
    above = ranked.cumsum(axis=1) - ranked  # the mass of the classes ranked before each
    members = np.empty_like(probs, dtype=bool)
    np.put_along_axis(members, order, above < level, axis=1)
    return members


def _plug_in_threshold(uncertainty: np.ndarray, risk: float) -> float:
    """The largest score at which the accepted rows' mean predicted error (1 - max prob) is within ``risk``."""
    values, counts = np.unique(uncertainty, return_counts=True)
    predicted = np.cumsum(values * counts) / np.cumsum(counts)  # non-decreasing in the score
    passed = np.flatnonzero(predicted <= risk)
    return float(values[passed[-1]]) if len(passed) else -math.inf


# -- the table -----------------------------------------------------------------------


def _labels(task: str) -> list[tuple[str, str]]:
    if task == "regression":
        rows = [("rmse", "RMSE"), ("nll", "NLL (Gaussian)")]
        for level in LEVELS:
            tag = round(level * 100)
            rows += [(f"coverage_{tag}", f"{tag}% interval coverage"), (f"width_{tag}", f"{tag}% mean width"),
                     (f"interval_score_{tag}", f"{tag}% interval score (Winkler)")]
        return rows
    return [("accuracy", "accuracy"), ("nll", "NLL"), ("ece", f"ECE ({BINS} bins)"), ("brier", "Brier"),
            ("aurc", "AURC (1 - max prob)")]


def format_report(report: Report) -> str:
    """The before/after table, with what each column means and where the rows came from."""
    keys = _labels(report.task)
    if report.task == "classification":
        set_keys = [k for k in report.before.metrics if k.startswith("set_")]
        keys += [(k, f"{k.rsplit('_', 1)[1]}% set {'coverage' if 'coverage' in k else 'mean size'}") for k in set_keys]
        for risk in RISKS:
            keys += [(f"accepted_fraction_at_{risk:g}", f"risk {risk:g}: accepted fraction"),
                     (f"accepted_error_at_{risk:g}", f"risk {risk:g}: accepted rows' error")]
    lines = [f"before and after calibration, on {report.rows} {report.rows_source}"]
    if report.calibration is None:
        lines.append("the bundle is not calibrated: 'after' needs `mcdropout calibrate`")
    else:
        source = report.calibration["source"] or f"{report.calibration['rows']} rows"
        lines.append(f"calibrated on {source} ({', '.join(report.calibration['methods'])})")
        if "min_max_risk" in report.calibration:
            lines.append(f"the smallest max_risk its {report.calibration['rows']} calibration rows can certify at"
                         f" delta {report.calibration['delta']:g}: {report.calibration['min_max_risk']:g}")
    rows = [[label, _cell(report.before.metrics.get(key)),
             _cell(None if report.after is None else report.after.metrics.get(key))] for key, label in keys]
    lines += format_columns(["", "before", "after"], rows)
    if report.after is not None and any(report.after.metrics.get(f"coverage_{round(level * 100)}", 0) is None
                                        for level in LEVELS):
        lines.append("-: a level above n/(n + 1) of the calibration's n rows has no conformal interval")
    lines.append(f"before: {BEFORE[report.task]}")
    lines.append(f"after: {AFTER[report.task]}")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_columns(header: list[str], rows: list[list[str]], gap: int = 2) -> list[str]:
    """A plain-text table: the first column left-aligned, the others right-aligned, each as wide as its widest
    cell and ``gap`` spaces apart, so numbers in any units (a price in dollars) never run together."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return [(" " * gap).join(cell.ljust(width) if i == 0 else cell.rjust(width)
                             for i, (cell, width) in enumerate(zip(row, widths))).rstrip()
            for row in [header, *rows]]


# -- the pictures --------------------------------------------------------------------


def plot_report(report: Report, folder: Path, name: str) -> list[Path]:
    """Before/after pictures in ``folder``: the reliability diagram (classifiers: accuracy per confidence bin;
    regression: observed against nominal interval coverage) and, for classifiers, the risk-coverage curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    sides = [("before", report.before)] + ([] if report.after is None else [("after", report.after)])
    written = []
    figure, axes = plt.subplots(figsize=(7, 5))
    if report.task == "classification":
        for (label, side), colour, offset in zip(sides, ("tab:orange", "tab:blue"), (-10, 4)):
            centres, accuracy, counts = metrics.reliability_bins(side.probs, report.labels, BINS)
            axes.plot(centres, accuracy, marker="o", color=colour,
                      label=f"{label} (ECE {side.metrics['ece']:.4f})")
            for centre, value, count in zip(centres, accuracy, counts):
                axes.annotate(str(count), (centre, value), textcoords="offset points", xytext=(0, offset),
                              ha="center", fontsize=7, color=colour)
        axes.set_xlabel("confidence (max mean probability), bin mean")
        axes.set_ylabel("accuracy in the bin")
        axes.set_title(f"{name}: reliability on {report.rows} held-out rows ({BINS} bins; labels: rows per bin)")
    else:
        for (label, side), colour in zip(sides, ("tab:orange", "tab:blue")):
            levels, observed = side.coverage_by_level
            axes.plot(levels, observed, marker="o", markersize=3, color=colour, label=label)
        axes.set_xlabel("nominal interval level")
        axes.set_ylabel("observed coverage")
        axes.set_title(f"{name}: interval reliability on {report.rows} held-out rows")
    axes.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="perfect calibration")
    axes.legend(loc="upper left")
    written.append(_save(figure, folder / f"{name}-reliability.png", plt))
    if report.task == "classification":
        figure, axes = plt.subplots(figsize=(7, 5))
        for (label, side), colour in zip(sides, ("tab:orange", "tab:blue")):
            wrong = side.probs.argmax(axis=1) != report.labels
            coverage, risk = metrics.risk_coverage(1.0 - side.probs.max(axis=1), wrong)
            axes.step(coverage, risk, where="post", color=colour, label=f"{label} (AURC {side.metrics['aurc']:.4f})")
            for r in RISKS:
                accepted = side.metrics[f"accepted_fraction_at_{r:g}"]
                error = side.metrics[f"accepted_error_at_{r:g}"]
                if accepted and error is not None:
                    axes.scatter([accepted], [error], color=colour, s=20, zorder=3)
        for r in RISKS:
            axes.axhline(r, color="grey", linestyle=":", linewidth=1)
        axes.set_xlabel("coverage (share of rows accepted, least uncertain first)")
        axes.set_ylabel("risk (error rate of the accepted rows)")
        axes.set_title(f"{name}: risk-coverage; dots: accepted at risk {', '.join(f'{r:g}' for r in RISKS)}")
        axes.legend(loc="upper left")
        written.append(_save(figure, folder / f"{name}-risk-coverage.png", plt))
    return written


def _save(figure, path: Path, plt) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
