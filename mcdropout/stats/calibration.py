"""Calibration of MC dropout's numbers, fitted on rows the network never trained on.

Protocol-neutral (numpy and scipy only): arrays in, plain dataclasses out, each with ``to_dict`` /
``from_dict`` for the bundle manifest. The fitting functions:

- :func:`fit_conformal_regression` (means, stds, y): split conformal with the normalised score
  |y - mean| / std; :meth:`ConformalRegression.quantile` answers any level at serve time.
- :func:`fit_sigma_scale` (means, stds, y): one factor s on the predictive variance (s^2 var), by NLL.
- :func:`fit_temperature` (logits, y): one temperature T by NLL of mean_t softmax(z_t / T), with logits
  of shape (rows, samples, classes); :func:`summarise_logits` gives the statistics at a temperature.
- :func:`fit_conformal_sets` (probs, y): LAC and APS scores; :meth:`ConformalSets.predict_sets`.
- :func:`fit_selective` (statistics, y): risk-controlling thresholds at any (max_risk, delta) at
  serve time; :meth:`Selective.threshold` and :func:`selective_threshold` on raw arrays.
- :func:`fit_regression` and :func:`fit_classification` put them together in a :class:`Calibration`
  (what a manifest's ``calibration`` holds); ``mcdropout.bundle._calibration.fit_bundle`` fits one from a bundle's
  own predictions on held-out rows.

Guarantees: conformal coverage >= level for exchangeable rows (marginally, per output); the selective
threshold's accepted rows have error <= max_risk with probability >= 1 - delta (Clopper-Pearson bounds
as in Geifman & El-Yaniv's SGR, 2017, tested in a fixed sequence: Learn-then-Test, Angelopoulos et al. 2021).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from scipy import optimize, special, stats

from mcdropout import vocabulary as _vocabulary
from mcdropout.answer import min_max_risk
from mcdropout.errors import InputError

__all__ = [
    "SCORES", "SET_METHODS", "Calibration", "CalibrationError", "ConformalRegression", "ConformalSets", "Selective", "SortedScores",
    "check_level", "check_risk", "fit_classification", "fit_conformal_regression", "fit_conformal_sets",
    "fit_regression", "fit_selective", "fit_sigma_scale", "fit_temperature", "selective_threshold",
    "summarise_logits", "uncertainty_score",
]

MIN_ROWS = 20  # the fewest calibration rows the commands accept: a 95% conformal interval (the default) needs 19
MAX_SCORES = 4096  # order statistics kept per score: enough for any level to 1/4096 of its rank
MAX_SELECTIVE_ROWS = 5000  # calibration rows kept for serve-time selective thresholds
SELECTIVE_GRID = 30  # candidate thresholds tested at once
SET_METHODS = _vocabulary.SET_METHODS
SCORES = _vocabulary.ABSTAIN_SCORES
_TINY_LOG = math.log(np.finfo(np.float64).tiny)
_ROUNDING = 1e-9  # how far below 0 a stored score may be (float rounding of 1 - p), and still be read


def check_level(level: Any, name: str = "level") -> float:
    """``level`` as a float in (0, 1), else :class:`InputError` naming ``name``."""
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0.0 < float(level) < 1.0:
        raise InputError(f"{name} must be a number in (0, 1), got {level!r}")
    return float(level)


def check_risk(max_risk: Any, name: str = "max_risk") -> float:
    return check_level(max_risk, name)


# -- order statistics -----------------------------------------------------------


@dataclass(frozen=True)
class SortedScores:
    """The order statistics of n calibration scores, or a thinned, conservative subset of them.

    ``ranks`` (1-based, increasing, ending at n) and ``values`` (their scores). The conformal
    quantile at ``level`` is the score of rank k = ceil((n + 1) level); when k is not kept, the
    next kept rank answers (a larger score: the coverage only grows).
    """

    n: int
    ranks: list[int]
    values: list[float]

    @classmethod
    def of(cls, scores: np.ndarray, keep: int = MAX_SCORES) -> SortedScores:
        scores = np.sort(np.asarray(scores, dtype=np.float64).ravel())
        n = len(scores)
        if n == 0:
            raise InputError("calibration needs at least one row")
        if not np.isfinite(scores).all():
            raise InputError("calibration scores must be finite (a zero std or a NaN target?)")
        ranks = np.arange(1, n + 1) if n <= keep else np.unique(np.ceil(np.linspace(1, n, keep)).astype(np.int64))
        return cls(n=n, ranks=ranks.tolist(), values=scores[ranks - 1].tolist())

    def max_level(self) -> float:
        """The highest level with a finite quantile: n / (n + 1)."""
        return self.n / (self.n + 1)

    def quantile(self, level: float) -> float:
        """The conformal quantile at ``level``; inf when ceil((n + 1) level) > n (too few rows)."""
        return _quantile(self, check_level(level))

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "ranks": self.ranks, "values": self.values}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "scores") -> SortedScores:
        """Read and check stored order statistics: ``where`` names the field in errors (a :class:`CalibrationError`).

        Sound: n a positive int; ranks increasing integers in 1..n ending at n (every rank when n <= MAX_SCORES,
        the kept ones otherwise); as many values as ranks, finite, >= 0 and non-decreasing."""
        n = _whole(data.get("n"), f"{where}.n")
        if n < 1:
            raise CalibrationError(where + ".n", f"must be >= 1, got {n}")
        ranks = [_whole(r, f"{where}.ranks") for r in _list(data.get("ranks"), f"{where}.ranks")]
        values = _numbers(data.get("values"), f"{where}.values")
        if len(values) != len(ranks):
            raise CalibrationError(where + ".values", f"{len(values)} values for {len(ranks)} ranks")
        if not ranks or ranks[0] < 1 or ranks[-1] != n or any(b <= a for a, b in zip(ranks, ranks[1:])):
            raise CalibrationError(where + ".ranks", f"must increase from >= 1 to n = {n}")
        if n <= MAX_SCORES and len(ranks) != n:
            raise CalibrationError(where + ".n", f"{n} rows, but {len(ranks)} scores are stored")
        if any(v < -_ROUNDING for v in values):  # a fitted score is >= 0 up to rounding (1 - p with p = 1)
            raise CalibrationError(where + ".values", "scores must be >= 0")
        if any(b < a for a, b in zip(values, values[1:])):
            raise CalibrationError(where + ".values", "scores must be sorted in increasing order")
        return cls(n=n, ranks=ranks, values=values)

    def __hash__(self) -> int:
        return id(self)


@functools.lru_cache(maxsize=256)
def _quantile(scores: SortedScores, level: float) -> float:
    k = math.ceil((scores.n + 1) * level - 1e-12)  # the tolerance: (n + 1) level that is an integer in exact maths
    if k > scores.n:
        return math.inf
    return scores.values[int(np.searchsorted(scores.ranks, k, side="left"))]


# -- regression -------------------------------------------------------------------


def _regression_arrays(means, stds, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    means = np.asarray(means, dtype=np.float64)
    means = means.reshape(len(means), -1)
    stds = np.asarray(stds, dtype=np.float64).reshape(means.shape)
    y = np.asarray(y, dtype=np.float64).reshape(means.shape)
    if not (np.isfinite(means).all() and np.isfinite(y).all()):
        raise InputError("calibration means and targets must be finite")
    if not (np.isfinite(stds).all() and (stds > 0).all()):
        raise InputError("calibration stds must be finite and positive")
    return means, stds, y


@dataclass(frozen=True)
class ConformalRegression:
    """Split conformal intervals mean +- q std, one score list per output."""

    scores: list[SortedScores]

    @property
    def n(self) -> int:
        return self.scores[0].n

    def quantiles(self, level: float) -> np.ndarray:
        """q per output at ``level``; :class:`InputError` when ``level`` is above n / (n + 1)."""
        level = check_level(level)
        q = np.array([s.quantile(level) for s in self.scores])
        if not np.isfinite(q).all():
            raise InputError(f"level {level} is too high for {self.n} calibration rows: a conformal interval"
                             f" needs level <= n / (n + 1) = {self.scores[0].max_level():.6f}")
        return q

    def interval(self, means: np.ndarray, stds: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
        half = self.quantiles(level) * stds
        return means - half, means + half

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "q90": [float(s.quantile(0.9)) for s in self.scores],
                "scores": [s.to_dict() for s in self.scores]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConformalRegression:
        scores = _list(data.get("scores"), "conformal.scores")
        if not scores:
            raise CalibrationError("conformal.scores", "holds no score list")
        read = [SortedScores.from_dict(_mapping(s, f"conformal.scores[{i}]"), f"conformal.scores[{i}]")
                for i, s in enumerate(scores)]
        _same_n([s.n for s in read], data.get("n"), "conformal")
        return cls(scores=read)


def fit_conformal_regression(means, stds, y, keep: int = MAX_SCORES) -> ConformalRegression:
    """Split conformal with the normalised score |y - mean| / std; arrays (rows,) or (rows, outputs)."""
    means, stds, y = _regression_arrays(means, stds, y)
    scores = np.abs(y - means) / stds
    return ConformalRegression(scores=[SortedScores.of(scores[:, j], keep) for j in range(scores.shape[1])])


def fit_sigma_scale(means, stds, y) -> np.ndarray:
    """Per output the factor s minimising the Gaussian NLL of y under N(mean, s^2 std^2).

    Closed form: s^2 = mean((y - mean)^2 / std^2).
    """
    means, stds, y = _regression_arrays(means, stds, y)
    scale = np.sqrt(np.mean(((y - means) / stds) ** 2, axis=0))
    if not (scale > 0).all():
        raise InputError("sigma-scaling needs rows whose targets differ from the means")
    return scale


# -- classification ---------------------------------------------------------------


def summarise_logits(logits, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """The answer's classification statistics from MC logits (rows, samples, classes) at a temperature.

    Log-probabilities serve as logits too (a softmax ignores a per-row shift).
    """
    z = np.asarray(logits, dtype=np.float64) / temperature
    log_p = z - special.logsumexp(z, axis=-1, keepdims=True)
    p = np.exp(log_p)
    probs = p.mean(axis=1)
    entropy = -special.xlogy(probs, probs).sum(axis=-1)
    expected = -(p * np.maximum(log_p, _TINY_LOG)).sum(axis=-1).mean(axis=1)
    labels = probs.argmax(axis=-1)
    votes = (p.argmax(axis=-1) == labels[:, None]).mean(axis=1)
    return {"probs": probs, "label": labels, "entropy": entropy, "expected_entropy": expected,
            "mutual_information": np.maximum(entropy - expected, 0.0), "variation_ratio": 1.0 - votes}


def _labels(y, rows: int, classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (rows,) or y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and (y == np.round(y)).all()):
        raise InputError(f"calibration labels must be {rows} class indices, got an array of shape {y.shape}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= classes:
        raise InputError(f"calibration labels must be class indices in [0, {classes}), got {y.min()}..{y.max()}")
    return y


def fit_temperature(logits, y, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T closest to 1 whose NLL of mean_t softmax(z_t / T) at the labels ``y`` is within one
    standard error of the lowest.

    ``logits``: (rows, samples, classes) MC logits (or log-probabilities); (rows, classes) is one sample.
    The standard error is that of the rows' paired NLL differences from the best T (Breiman's one-standard-
    error rule): where the NLL is flat, the data cannot tell the temperatures apart, and the rule keeps the
    one that changes the model least. Why: below T of about 0.3 each MC sample of a sharp classifier votes
    one class, the averaged probabilities become vote fractions and the NLL barely moves, so the bare
    minimum lands anywhere in that flat part (an earlier digits network on 144 held-out rows: T = 0.056,
    serving entropies of 1e-49 and a worse ECE on its test rows). Where the NLL falls all the way to the
    lower bound (rows so well separated that sharpening never stops paying) it has no minimum, and the fit
    is 1 (no scaling): taken at the bound, an earlier breast-cancer network's 91 held-out rows gave T = 0.05,
    which tripled its test rows' NLL.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2:
        z = z[:, None, :]
    if z.ndim != 3 or not np.isfinite(z).all():
        raise InputError(f"logits must be finite, of shape (rows, samples, classes); got shape {z.shape}")
    y = _labels(y, z.shape[0], z.shape[2])
    samples = z.shape[1]

    def row_nll(log_t: float) -> np.ndarray:
        scaled = z / math.exp(log_t)
        log_p = scaled - special.logsumexp(scaled, axis=-1, keepdims=True)
        picked = log_p[np.arange(len(y)), :, y]  # (rows, samples)
        return -(special.logsumexp(picked, axis=1) - math.log(samples))

    def nll(log_t: float) -> float:
        return float(row_nll(log_t).mean())

    low, high = math.log(bounds[0]), math.log(bounds[1])
    fit = optimize.minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    if nll(low) <= fit.fun or nll(0.0) - fit.fun <= 1e-9 * max(1.0, abs(fit.fun)):
        return 1.0  # no minimum (still falling at the bound), or flat: T = 1 is as good
    best = row_nll(fit.x)

    def excess(log_t: float) -> float:
        """The mean NLL above the best, less one standard error of the paired difference."""
        difference = row_nll(log_t) - best
        return float(difference.mean() - difference.std(ddof=1) / math.sqrt(len(difference)))

    if excess(0.0) <= 0.0:
        return 1.0
    near = fit.x + math.copysign(1e-4, -fit.x)  # a step from the best towards T = 1, where excess < 0
    if excess(near) >= 0.0:
        return float(math.exp(fit.x))
    return float(math.exp(optimize.brentq(excess, near, 0.0, xtol=1e-6)))


def _set_scores(probs: np.ndarray, method: str) -> np.ndarray:
    """Every class's score (rows, classes): LAC 1 - p_k; APS the mass of the classes ranked above k.

    APS here is the randomised APS score with U = 0 (deterministic, so a row's set depends on it alone):
    counting p_k itself as well (U = 1) makes the true class's score about 1 for every sure, right row of a
    sharp classifier, and the sets of every class (measured on digits: 10 classes at 90%).
    """
    if method == "lac":
        return 1.0 - probs
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=1)
    ranked = sorted_probs.cumsum(axis=1) - sorted_probs
    scores = np.empty_like(probs)
    np.put_along_axis(scores, order, ranked, axis=1)
    return scores


@dataclass(frozen=True)
class ConformalSets:
    """Conformal prediction sets from LAC and APS scores (non-randomised: a row's set depends on it alone)."""

    scores: dict[str, SortedScores]

    @property
    def n(self) -> int:
        return next(iter(self.scores.values())).n

    def predict_sets(self, probs: np.ndarray, level: float, method: str = "lac") -> np.ndarray:
        """A (rows, classes) boolean mask: class k is in row i's set at ``level``."""
        if method not in self.scores:
            raise InputError(f"set_method must be one of {', '.join(self.scores)}, got {method!r}")
        level = check_level(level, "set_level")
        q = self.scores[method].quantile(level)
        if not math.isfinite(q):
            raise InputError(f"set_level {level} is too high for {self.n} calibration rows: it must be"
                             f" <= n / (n + 1) = {self.scores[method].max_level():.6f}")
        return _set_scores(np.asarray(probs, dtype=np.float64), method) <= q + 1e-12

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, **{m: s.to_dict() for m, s in self.scores.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConformalSets:
        missing = [m for m in SET_METHODS if m not in data]
        if missing:  # a request may ask for any method the service offers
            raise CalibrationError(f"sets.{missing[0]}", "is missing")
        scores = {m: SortedScores.from_dict(_mapping(data[m], f"sets.{m}"), f"sets.{m}") for m in SET_METHODS}
        _same_n([s.n for s in scores.values()], data.get("n"), "sets")
        return cls(scores=scores)


def fit_conformal_sets(probs, y, methods: tuple[str, ...] = SET_METHODS, keep: int = MAX_SCORES) -> ConformalSets:
    """Calibration scores of the true class under each method, from (rows, classes) probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    y = _labels(y, probs.shape[0], probs.shape[1])
    return ConformalSets(scores={m: SortedScores.of(_set_scores(probs, m)[np.arange(len(y)), y], keep)
                                 for m in methods})


# -- selective classification -----------------------------------------------------


def uncertainty_score(statistics: dict[str, np.ndarray], score: str) -> np.ndarray:
    """The named uncertainty per row (higher: less sure) from the answer's statistics."""
    if score == "one_minus_max_prob":
        return 1.0 - np.asarray(statistics["probs"]).max(axis=-1)
    if score in ("entropy", "mutual_information"):
        return np.asarray(statistics[score], dtype=np.float64)
    raise InputError(f"abstain_score must be one of {', '.join(SCORES)}, got {score!r}")


def selective_threshold(scores, errors, max_risk: float, delta: float = 0.1, grid: int = SELECTIVE_GRID) -> float:
    """The largest threshold t such that rows with score <= t err at most ``max_risk``, with probability 1 - delta.

    Learn-then-Test (Angelopoulos et al., 2021) by fixed-sequence testing: candidate thresholds (the
    calibration scores at ``grid`` accepted counts) are tested from the most selective up, each with a
    binomial (Clopper-Pearson) upper bound on its accepted rows' error at level delta, and testing stops
    at the first that fails; the last one passed is returned. The family-wise error stays within delta
    with no Bonferroni split, which on a few hundred rows is the difference between accepting most rows
    and none (Geifman & El-Yaniv's SGR splits delta over log2 n tests). The sequence starts at the
    fewest accepted rows that could pass at all (no error among ceil(log delta / log(1 - max_risk))).
    -inf when none passes: abstain on every row.
    """
    max_risk, delta = check_risk(max_risk), check_level(delta, "delta")
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    cumulative = np.cumsum(np.asarray(errors, dtype=np.int64)[order])
    n = len(sorted_scores)
    if n == 0:
        raise InputError("selective thresholds need at least one calibration row")
    fewest = math.ceil(math.log(delta) / math.log1p(-max_risk))
    if fewest > n:
        return -math.inf
    positions = np.unique(np.ceil(np.linspace(fewest, n, min(grid, n - fewest + 1)) - 1e-9).astype(np.int64))
    candidates = np.unique(sorted_scores[positions - 1])
    accepted = np.searchsorted(sorted_scores, candidates, side="right")
    wrong = cumulative[accepted - 1]
    bounds = np.where(wrong >= accepted, 1.0, stats.beta.ppf(1.0 - delta, wrong + 1, np.maximum(accepted - wrong, 1)))
    passed = bounds <= max_risk
    failed = np.flatnonzero(~passed)
    last = (failed[0] if len(failed) else len(candidates)) - 1
    return float(candidates[last]) if last >= 0 else -math.inf


@dataclass(frozen=True)
class Selective:
    """Calibration rows' uncertainty scores and errors, so that any (max_risk, delta) is answered at serve time."""

    scores: dict[str, list[float]]
    errors: list[int]
    delta: float = 0.1

    @property
    def n(self) -> int:
        return len(self.errors)

    def threshold(self, max_risk: float, score: str = "one_minus_max_prob", delta: float | None = None) -> float:
        if score not in self.scores:
            raise InputError(f"abstain_score must be one of {', '.join(self.scores)}, got {score!r}")
        return _threshold(self, float(max_risk), score, self.delta if delta is None else float(delta))

    def abstain(self, statistics: dict[str, np.ndarray], max_risk: float, score: str = "one_minus_max_prob",
                delta: float | None = None) -> np.ndarray:
        """True for the rows to hand to a human: uncertainty above the threshold."""
        return uncertainty_score(statistics, score) > self.threshold(max_risk, score, delta)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "delta": self.delta, "errors": self.errors, "scores": self.scores}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selective:
        errors = [_whole(e, "selective.errors") for e in _list(data.get("errors"), "selective.errors")]
        if not errors or any(e not in (0, 1) for e in errors):
            raise CalibrationError("selective.errors", "expected a non-empty list of 0 and 1")
        scores = {str(k): _numbers(vs, f"selective.scores.{k}")
                  for k, vs in _mapping(data.get("scores"), "selective.scores").items()}
        missing = [score for score in SCORES if score not in scores]
        if missing:  # a request may abstain by any score the service offers
            raise CalibrationError(f"selective.scores.{missing[0]}", "is missing")
        for key, values in scores.items():
            if len(values) != len(errors):
                raise CalibrationError(f"selective.scores.{key}", f"{len(values)} scores for {len(errors)} rows")
        if data.get("n") is not None and _whole(data["n"], "selective.n") != len(errors):
            raise CalibrationError("selective.n", f"{data['n']} rows, but {len(errors)} errors are stored")
        delta = _number(data.get("delta", 0.1), "selective.delta")
        if not 0 < delta < 1:
            raise CalibrationError("selective.delta", f"must lie in (0, 1), got {delta}")
        return cls(scores=scores, errors=errors, delta=delta)

    def __hash__(self) -> int:
        return id(self)


@functools.lru_cache(maxsize=256)
def _threshold(selective: Selective, max_risk: float, score: str, delta: float) -> float:
    return selective_threshold(selective.scores[score], selective.errors, max_risk, delta)


def fit_selective(statistics: dict[str, np.ndarray], y, delta: float = 0.1, keep: int = MAX_SELECTIVE_ROWS,
                  seed: int = 0) -> Selective:
    """Keep each calibration row's uncertainty under every score and whether its label was wrong.

    More than ``keep`` rows: a seeded random subset (a smaller calibration set; still valid).
    """
    labels = np.asarray(statistics["label"])
    y = _labels(y, len(labels), int(np.asarray(statistics["probs"]).shape[1]))
    rows = np.arange(len(y))
    if len(rows) > keep:
        rows = np.sort(np.random.default_rng(seed).choice(len(y), keep, replace=False))
    return Selective(scores={s: uncertainty_score(statistics, s)[rows].tolist() for s in SCORES},
                     errors=(labels[rows] != y[rows]).astype(int).tolist(), delta=check_level(delta, "delta"))


# -- a bundle's calibration -------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """What a bundle's manifest records under ``calibration``: methods, rows, fitted values, when."""

    task: str
    rows: int
    source: str = ""
    fitted_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    sigma_scale: list[float] | None = None
    conformal: ConformalRegression | None = None
    temperature: float | None = None
    sets: ConformalSets | None = None
    selective: Selective | None = None

    @property
    def methods(self) -> list[str]:
        names = [("sigma_scaling", self.sigma_scale), ("conformal", self.conformal),
                 ("temperature", self.temperature), ("conformal_sets", self.sets), ("selective", self.selective)]
        return [name for name, value in names if value is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "methods": self.methods, "task": self.task, "rows": self.rows, "source": self.source,
            "fitted_at": self.fitted_at, "sigma_scale": self.sigma_scale,
            "conformal": None if self.conformal is None else self.conformal.to_dict(),
            "temperature": self.temperature,
            "sets": None if self.sets is None else self.sets.to_dict(),
            "selective": None if self.selective is None else self.selective.to_dict(),
        }

    def summary(self) -> dict[str, Any]:
        """The fitted values without the stored scores: for ``/v1/models/{name}`` and logs."""
        out = {"methods": self.methods, "rows": self.rows, "source": self.source, "fitted_at": self.fitted_at}
        if self.sigma_scale is not None:
            out["sigma_scale"] = self.sigma_scale
        if self.conformal is not None:
            out["conformal_q90"] = [float(s.quantile(0.9)) for s in self.conformal.scores]
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.selective is not None:
            out["delta"] = self.selective.delta
            out["min_max_risk"] = min_max_risk(self.selective.n, self.selective.delta)
        if self.conformal is not None or self.sets is not None:
            out["max_level"] = (self.conformal or self.sets).n / ((self.conformal or self.sets).n + 1)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        def part(key, kind):
            return None if data.get(key) is None else kind.from_dict(data[key])

        sigma = data.get("sigma_scale")
        if sigma is not None:
            sigma = _numbers(sigma, "sigma_scale")
            if not sigma or any(v <= 0 for v in sigma):
                raise CalibrationError("sigma_scale", "expected a non-empty list of positive numbers")
        temperature = data.get("temperature")
        if temperature is not None:
            temperature = _number(temperature, "temperature")
            if temperature <= 0:
                raise CalibrationError("temperature", f"must be positive, got {temperature}")
        return cls(task=str(data["task"]), rows=int(data["rows"]), source=str(data.get("source", "")),
                   fitted_at=str(data.get("fitted_at", "")), sigma_scale=sigma,
                   conformal=part("conformal", ConformalRegression), temperature=temperature,
                   sets=part("sets", ConformalSets), selective=part("selective", Selective))


class CalibrationError(ValueError):
    """Stored calibration that is unsound; ``field`` is its path under ``calibration`` (``sigma_scale``)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"field 'calibration.{field}': {problem}")


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list):
        raise CalibrationError(where, f"expected a list, got {type(value).__name__}")
    return value


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise CalibrationError(where, f"expected an object, got {type(value).__name__}")
    return value


def _whole(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, float) or not value.is_integer():
        raise CalibrationError(where, f"expected an integer, got {type(value).__name__}")
    return int(value)


def _number(value: Any, where: str) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2 ** 1000:
        return float(value)
    if not isinstance(value, float) or not math.isfinite(value):
        raise CalibrationError(where, "expected a finite number")
    return value


def _numbers(values: Any, where: str) -> list[float]:
    return [_number(v, where) for v in _list(values, where)]


def _same_n(ns: list[int], stated: Any, where: str) -> None:
    if len(set(ns)) > 1:
        raise CalibrationError(f"{where}.n", f"its score lists hold different numbers of rows: {sorted(set(ns))}")
    if stated is not None and _whole(stated, f"{where}.n") != ns[0]:
        raise CalibrationError(f"{where}.n", f"{stated} rows, but the scores hold {ns[0]}")


def fit_regression(means, stds, y, source: str = "") -> Calibration:
    """Sigma-scaling, then split conformal on the scaled stds (the served std is the scaled one)."""
    means, stds, y = _regression_arrays(means, stds, y)
    scale = fit_sigma_scale(means, stds, y)
    return Calibration(task="regression", rows=len(y), source=source, sigma_scale=scale.tolist(),
                       conformal=fit_conformal_regression(means, stds * scale, y))


def fit_classification(logits, y, source: str = "", delta: float = 0.1) -> Calibration:
    """Temperature, then conformal sets and selective thresholds on the temperature-scaled statistics."""
    temperature = fit_temperature(logits, y)
    statistics = summarise_logits(logits if np.ndim(logits) == 3 else np.asarray(logits)[:, None], temperature)
    return Calibration(task="classification", rows=len(statistics["label"]), source=source,
                       temperature=temperature, sets=fit_conformal_sets(statistics["probs"], y),
                       selective=fit_selective(statistics, y, delta))
