"""Quality of answers once their outcomes are known: what to keep of an answer, how one outcome scores
against it, and the figures of a window of scored rows. Torch-free (numpy only), so that the service's
live quality (``GET /v1/models/{name}/quality``, the Prometheus gauges) and ``mcdropout outcomes``'s
local report compute the same numbers the same way.

A kept answer row (:func:`kept_rows`) is a plain JSON-able dict:

- regression: ``mean``, ``std``, ``lower``, ``upper`` (one value per output), ``level``, ``method``
  (``conformal`` / ``gaussian``) and ``abstain`` (None unless asked);
- classification: ``probs``, ``label``, ``set`` (class indices; None unless asked), ``set_level``,
  ``abstain`` and ``max_risk`` (None unless asked).

A scored row (:func:`score_row`) holds, per row, the figures that windows average: regression —
``covered`` (share of outputs inside their interval), ``width`` (mean interval width), ``interval_score``
(Gneiting & Raftery's, mean over outputs: width + 2/alpha times the miss, alpha = 1 - level) and ``nll``
(Gaussian negative log-likelihood of the mean and std, mean over outputs); classification — ``correct``,
``confidence`` (the predicted class's probability, for ECE), ``nll`` (-log of the true class's
probability), ``in_set`` and ``set_size`` (when a set was served) and ``accepted`` (when abstention at a
``max_risk`` was served).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mcdropout.errors import InputError

ECE_BINS = 15  # equal-width confidence bins of the expected calibration error
_TINY = 1e-12  # floor of a probability inside log (a probability of 0 for the true class is a huge, finite NLL)

# The columns of a scored row, in the order the service's store keeps them.
SCORE_COLUMNS = ("level", "covered", "width", "interval_score", "nll", "correct", "confidence", "set_level",
                 "in_set", "set_size", "max_risk", "accepted")


def kept_rows(result: Any, max_risk: float | None = None) -> list[dict[str, Any]]:
    """One dict per row of ``result`` (an :class:`mcdropout.answer.Result`): what scoring an outcome needs;
    ``max_risk``: the risk a classifier's abstention was served at (the request's option)."""
    abstain = None if result.abstain is None else result.abstain.tolist()
    if hasattr(result, "probs"):
        sets = result.set_members()
        return [{"probs": probs, "label": label, "set": None if sets is None else sets[i],
                 "set_level": result.set_level, "abstain": None if abstain is None else abstain[i],
                 "max_risk": max_risk if abstain is not None else None, "adapted_level": result.adapted_level}
                for i, (probs, label) in enumerate(zip(result.probs.tolist(), result.label.tolist()))]
    return [{"mean": mean, "std": std, "lower": lower, "upper": upper, "level": result.level,
             "method": result.interval_method, "abstain": None if abstain is None else abstain[i],
             "adapted_level": result.adapted_level}
            for i, (mean, std, lower, upper) in enumerate(zip(result.mean.tolist(), result.std.tolist(),
                                                              result.lower.tolist(), result.upper.tolist()))]


def check_target(kept: dict[str, Any], y: Any, field: str, classes: list[str] | None = None) -> Any:
    """``y`` as the kept answer's task takes it: regression — a finite number (one output) or a list of one
    per output; classification — a class index or a class name (of ``classes``). InputError names ``field``."""
    if "probs" in kept:
        count = len(kept["probs"])
        if isinstance(y, str) and classes and y in classes:
            return classes.index(y)
        if isinstance(y, bool) or not isinstance(y, int) or not 0 <= y < count:
            names = f" or one of the class names {classes}" if classes else ""
            raise InputError(f"{field}: must be a class index from 0 to {count - 1}{names}; got {_shown(y)}")
        return y
    outputs = len(kept["mean"])
    values = y if isinstance(y, list) else [y]
    if len(values) != outputs or not all(_finite(value) for value in values):
        wanted = "a finite number" if outputs == 1 else f"a list of {outputs} finite numbers (one per output)"
        raise InputError(f"{field}: must be {wanted}; got {_shown(y)}")
    return [float(value) for value in values]


def score_row(kept: dict[str, Any], y: Any) -> dict[str, Any]:
    """The figures of one answered row and its checked outcome ``y`` (see the module's description)."""
    if "probs" in kept:
        probs, label = kept["probs"], kept["label"]
        members = kept["set"]
        accepted = None if kept["abstain"] is None or kept["max_risk"] is None else not kept["abstain"]
        return {"correct": int(label == y), "confidence": probs[label],
                "nll": -math.log(max(probs[y], _TINY)), "set_level": kept["set_level"] if members is not None
                else None, "in_set": None if members is None else int(y in members),
                "set_size": None if members is None else len(members), "max_risk": kept["max_risk"]
                if accepted is not None else None, "accepted": None if accepted is None else int(accepted)}
    alpha = 1.0 - kept["level"]
    covered = width = score = nll = 0.0
    for value, mean, std, lower, upper in zip(y, kept["mean"], kept["std"], kept["lower"], kept["upper"]):
        lower, upper = -math.inf if lower is None else lower, math.inf if upper is None else upper  # JSON's null
        covered += lower <= value <= upper
        width += upper - lower
        score += (upper - lower) + 2.0 / alpha * (max(lower - value, 0.0) + max(value - upper, 0.0))
        var = max(std * std, _TINY)
        nll += 0.5 * (math.log(2 * math.pi * var) + (value - mean) ** 2 / var)
    n = len(y)
    return {"level": kept["level"], "covered": covered / n, "width": width / n, "interval_score": score / n,
            "nll": nll / n}


def summarise(scores: dict[str, np.ndarray], task: str) -> dict[str, Any]:
    """The figures of a window of scored rows (columns of :data:`SCORE_COLUMNS`, None/NaN where a row has
    none): regression — per served level, coverage, mean width and interval score, and the mean NLL;
    classification — accuracy, ECE, NLL, per set level the set coverage and mean size, and per max_risk the
    accepted rows' error and the abstention rate."""
    rows = len(next(iter(scores.values()), []))
    figures: dict[str, Any] = {"rows": rows}
    if rows == 0:
        return figures
    nll = _floats(scores["nll"])
    figures["nll"] = float(np.nanmean(nll))
    if task == "regression":
        levels = _floats(scores["level"])
        figures["intervals"] = [
            {"level": float(level), "rows": int(at.sum()), "coverage": float(_floats(scores["covered"])[at].mean()),
             "mean_width": float(_floats(scores["width"])[at].mean()),
             "interval_score": float(_floats(scores["interval_score"])[at].mean())}
            for level in np.unique(levels[~np.isnan(levels)]) for at in [levels == level]]
        return figures
    correct = _floats(scores["correct"])
    figures["accuracy"] = float(correct.mean())
    figures["ece"] = expected_calibration_error(_floats(scores["confidence"]), correct)
    set_levels = _floats(scores["set_level"])
    figures["sets"] = [{"level": float(level), "rows": int(at.sum()),
                        "coverage": float(_floats(scores["in_set"])[at].mean()),
                        "mean_size": float(_floats(scores["set_size"])[at].mean())}
                       for level in np.unique(set_levels[~np.isnan(set_levels)]) for at in [set_levels == level]]
    risks = _floats(scores["max_risk"])
    figures["selective"] = [_selective(float(risk), _floats(scores["accepted"])[at], correct[at])
                            for risk in np.unique(risks[~np.isnan(risks)]) for at in [risks == risk]]
    return figures


def _selective(max_risk: float, accepted: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    taken = accepted == 1
    return {"max_risk": max_risk, "rows": int(len(accepted)), "accepted_rows": int(taken.sum()),
            "abstention_rate": float(1.0 - taken.mean()),
            "accepted_error": float(1.0 - correct[taken].mean()) if taken.any() else None}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Weighted mean gap between confidence and accuracy over ``bins`` equal-width confidence bins."""
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in np.unique(which):
        at = which == b
        total += at.sum() * abs(confidence[at].mean() - correct[at].mean())
    return float(total / len(confidence))


def _floats(values: Any) -> np.ndarray:
    return np.array([np.nan if value is None else value for value in values], dtype=np.float64) \
        if isinstance(values, list) else np.asarray(values, dtype=np.float64)


def _finite(value: Any) -> bool:
    """A number within float64's range (an int past it, 10**400 say, is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
