"""Adaptive conformal inference: a conformal level that moves online with the outcomes, to keep coverage under drift.

A split conformal interval covers at its level for rows exchangeable with the calibration rows. Under drift it
does not. ACI (Gibbs & Candès, "Adaptive conformal inference under distribution shift", NeurIPS 2021) keeps the
calibration and moves the level instead. With the target miscoverage ``alpha`` (level 1 - alpha) and a step
``gamma``, after each outcome

    alpha_{t+1} = alpha_t + gamma (alpha - err_t),   err_t = 1 if y_t fell outside the interval made at alpha_t,

and the next interval is made at the adapted level 1 - alpha_t. Whatever the sequence of rows and outcomes
(adversarial ones included), the long-run error rate is within

    |mean_t err_t - alpha| <= (max(alpha_1, 1 - alpha_1) + gamma) / (gamma T)       (their Proposition 4.1)

of alpha after T outcomes: :meth:`AdaptiveLevel.bound`. That is all it promises: an average over time. No
single row, and no group of rows, is promised anything; while the stream drifts, coverage over a short window
can sit well away from the level. A large gamma follows drift fast, with levels that jump about; a small one
moves smoothly and lags.

The bound needs the interval at alpha_t <= 0 (a level of 1 or more) to cover everything, and the one at
alpha_t >= 1 (a level of 0 or less) to cover nothing: :func:`adapted_interval` and :func:`adapted_sets` make them
from a bundle's calibration (which stores the sorted calibration scores, so any level has its quantile). A level
above n / (n + 1) has the infinite conformal quantile: the interval (-inf, inf), the set of every class.

Outcomes that arrive late (after other rows were answered) still count: the identity behind the bound,
alpha_{T+1} - alpha_1 = gamma sum(alpha - err_t), holds for any order of updates, and alpha_t stays within
[-gamma d, 1 + gamma d] when at most d answers await their outcome at any time (d = 1: each outcome comes before
the next answer), so the bound above grows to (max(alpha_1, 1 - alpha_1) + gamma d) / (gamma T).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mcdropout.errors import InputError
from mcdropout.stats.calibration import ConformalRegression, ConformalSets, check_level

__all__ = ["DEFAULT_GAMMA", "AdaptiveLevel", "AdaptiveState", "aci_bound", "adapted_interval", "adapted_sets"]

DEFAULT_GAMMA = 0.02  # at 90% a miss raises the level by 0.018; the drift study (docs/adaptive.md) compares steps


def check_gamma(gamma: Any, name: str = "gamma") -> float:
    """``gamma`` as a float in (0, 1), else :class:`InputError` naming ``name``."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating)) or not 0.0 < float(gamma) < 1.0:
        raise InputError(f"{name} must be a number in (0, 1), got {gamma!r}")
    return float(gamma)


def aci_bound(alpha_start: float, gamma: float, steps: int) -> float:
    """Gibbs & Candès's bound on |mean error - alpha| after ``steps`` outcomes from ``alpha_start``, step ``gamma``."""
    if steps < 1:
        return math.inf
    return (max(alpha_start, 1.0 - alpha_start) + gamma) / (gamma * steps)


@dataclass(frozen=True)
class AdaptiveState:
    """What an :class:`AdaptiveLevel` is, as plain numbers (for a store shared by several processes)."""

    level: float  # the nominal level 1 - alpha
    gamma: float
    alpha_start: float  # alpha_1
    alpha_t: float  # the current adapted miscoverage
    steps: int = 0  # outcomes seen
    errors: int = 0  # of which outside their interval

    @property
    def adapted_level(self) -> float:
        return 1.0 - self.alpha_t

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "gamma": self.gamma, "alpha_start": self.alpha_start, "alpha_t": self.alpha_t,
                "steps": self.steps, "errors": self.errors}


class AdaptiveLevel:
    """ACI's online level for one nominal ``level`` (target miscoverage alpha = 1 - level) at step ``gamma``.

    Make each interval at :attr:`adapted_level`, then tell :meth:`update` whether its outcome was covered, in
    the order the outcomes arrive. Safe to share between threads.
    """

    def __init__(self, level: float, gamma: float = DEFAULT_GAMMA, alpha_start: float | None = None) -> None:
        level = check_level(level)
        self._state = AdaptiveState(level=level, gamma=check_gamma(gamma),
                                    alpha_start=1.0 - level if alpha_start is None else float(alpha_start),
                                    alpha_t=1.0 - level if alpha_start is None else float(alpha_start))
        if not math.isfinite(self._state.alpha_start):
            raise InputError(f"alpha_start must be a finite number, got {alpha_start!r}")
        self._lock = threading.Lock()

    @classmethod
    def of(cls, state: AdaptiveState) -> AdaptiveLevel:
        """The controller in ``state`` (as :attr:`state` gave it)."""
        made = cls(state.level, state.gamma, state.alpha_start)
        made._state = state
        return made

    @property
    def state(self) -> AdaptiveState:
        return self._state

    @property
    def alpha(self) -> float:
        return 1.0 - self._state.level

    @property
    def alpha_t(self) -> float:
        return self._state.alpha_t

    @property
    def adapted_level(self) -> float:
        """The level to make the next interval at: 1 - alpha_t (may leave (0, 1): see the module's notes)."""
        return self._state.adapted_level

    @property
    def steps(self) -> int:
        return self._state.steps

    @property
    def mean_error(self) -> float:
        """The share of outcomes so far outside their interval (nan before the first)."""
        state = self._state
        return state.errors / state.steps if state.steps else math.nan

    def bound(self) -> float:
        """The guaranteed bound on |mean_error - alpha| after the outcomes seen so far."""
        state = self._state
        return aci_bound(state.alpha_start, state.gamma, state.steps)

    def update(self, covered: bool | Iterable[bool]) -> float:
        """One outcome (or several, in their order): whether it fell inside the interval it was answered with.
        Returns the new adapted level."""
        misses = [not bool(c) for c in ([covered] if isinstance(covered, (bool, np.bool_)) else covered)]
        with self._lock:
            self._state = step(self._state, misses)
            return self._state.adapted_level


def step(state: AdaptiveState, misses: Iterable[bool]) -> AdaptiveState:
    """``state`` after the outcomes ``misses`` (True: outside the interval), in order: ACI's update each."""
    alpha, alpha_t, steps, errors = 1.0 - state.level, state.alpha_t, state.steps, state.errors
    for miss in misses:
        alpha_t += state.gamma * (alpha - float(miss))
        steps += 1
        errors += int(miss)
    return AdaptiveState(level=state.level, gamma=state.gamma, alpha_start=state.alpha_start, alpha_t=alpha_t,
                         steps=steps, errors=errors)


def _finite_level(level: Any) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not math.isfinite(level):
        raise InputError(f"adapted_level must be a finite number, got {level!r}")
    return float(level)


def adapted_interval(conformal: ConformalRegression, means: np.ndarray, stds: np.ndarray,
                     level: float) -> tuple[np.ndarray, np.ndarray]:
    """The conformal interval mean +- q std at any adapted ``level``: as the calibration gives it in
    (0, n / (n + 1)]; (-inf, inf) above (every y covered); at 0 or below, the point {mean} (a continuous
    target is never covered: ACI's empty interval)."""
    level = _finite_level(level)
    means, stds = np.asarray(means, dtype=np.float64), np.asarray(stds, dtype=np.float64)
    if level <= 0.0:
        return means.copy(), means.copy()
    if level >= 1.0 or level > conformal.scores[0].max_level():
        return np.full_like(means, -math.inf), np.full_like(means, math.inf)
    return conformal.interval(means, stds, level)


def adapted_sets(sets: ConformalSets, probs: np.ndarray, level: float, method: str = "lac") -> np.ndarray:
    """Conformal prediction sets at any adapted ``level``: as the calibration gives them in (0, n / (n + 1)];
    every class above; no class at 0 or below (ACI's empty set)."""
    level = _finite_level(level)
    probs = np.asarray(probs, dtype=np.float64)
    if method not in sets.scores:
        raise InputError(f"set_method must be one of {', '.join(sets.scores)}, got {method!r}")
    if level <= 0.0:
        return np.zeros(probs.shape, dtype=bool)
    if level >= 1.0 or level > sets.scores[method].max_level():
        return np.ones(probs.shape, dtype=bool)
    return sets.predict_sets(probs, level, method)
