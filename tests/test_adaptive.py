"""Adaptive conformal inference (mcdropout.stats.adaptive): ACI's deterministic bound, levels -> intervals and
sets at the edges, the adapted_level option of a bundle's answer, and bundles saved before it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import mcdropout as mcd
from mcdropout.answer import OPTION_NAMES, OptionError, parse_options
from mcdropout.errors import InputError
from mcdropout.stats import calibration as cal
from mcdropout.stats.adaptive import AdaptiveLevel, aci_bound, adapted_interval, adapted_sets, step

MODELS = Path(__file__).resolve().parents[1] / "models"


def _calibration(rows: int = 200, seed: int = 0) -> cal.ConformalRegression:
    rng = np.random.default_rng(seed)
    return cal.fit_conformal_regression(np.zeros(rows), np.ones(rows), rng.normal(size=rows))


def _stream(controller, conformal, ys):
    """Serve rows one by one; ``ys(t, upper)`` is row t's outcome, chosen after seeing its interval."""
    misses, alphas = [], []
    for t in range(len(ys.steps)):
        lower, upper = adapted_interval(conformal, np.zeros((1, 1)), np.ones((1, 1)), controller.adapted_level)
        y = ys(t, float(upper[0, 0]))
        miss = not (lower[0, 0] <= y <= upper[0, 0])
        alphas.append(controller.alpha_t)
        controller.update(not miss)
        misses.append(miss)
    return np.asarray(misses), np.asarray(alphas)


class _Drift:
    """y_t ~ N(0, s_t^2) with s_t growing from 1 to 4: the calibration's 90% interval covers less and less."""

    def __init__(self, steps: int, seed: int) -> None:
        self.steps = range(steps)
        self.noise = np.random.default_rng(seed).normal(size=steps) * np.linspace(1.0, 4.0, steps)

    def __call__(self, t: int, upper: float) -> float:
        return float(self.noise[t])


class _Adversary:
    """Misses every finite interval (y just past its upper end); an unbounded one cannot be missed."""

    def __init__(self, steps: int) -> None:
        self.steps = range(steps)

    def __call__(self, t: int, upper: float) -> float:
        return upper + 1.0 if math.isfinite(upper) else 0.0


class _Switch:
    """Exchangeable rows, then a sudden shift (scale x3), then back: over- and under-coverage in turn."""

    def __init__(self, steps: int, seed: int) -> None:
        self.steps = range(steps)
        scale = np.ones(steps)
        scale[steps // 3: 2 * steps // 3] = 3.0
        self.noise = np.random.default_rng(seed).normal(size=steps) * scale

    def __call__(self, t: int, upper: float) -> float:
        return float(self.noise[t])


@pytest.mark.parametrize("gamma", [0.005, 0.05])
@pytest.mark.parametrize("stream", ["drift", "adversary", "switch"])
def test_aci_keeps_gibbs_candes_bound_on_any_stream(stream, gamma):
    # Proposition 4.1 of Gibbs & Candès (2021) is deterministic: |mean err - alpha| <= (max(a1, 1 - a1) + g)/(g T)
    # for every T and every sequence, so it is checked exactly (1e-12: float rounding of the running sum).
    steps = 3000
    ys = {"drift": _Drift(steps, 1), "adversary": _Adversary(steps), "switch": _Switch(steps, 2)}[stream]
    controller = AdaptiveLevel(0.9, gamma)
    misses, alphas = _stream(controller, _calibration(), ys)
    running = np.cumsum(misses) / np.arange(1, steps + 1)
    for t in range(1, steps + 1):
        assert abs(running[t - 1] - 0.1) <= aci_bound(0.1, gamma, t) + 1e-12, t
    # and the proof's invariant: alpha_t stays in [-gamma, 1 + gamma]
    assert alphas.min() >= -gamma - 1e-12 and alphas.max() <= 1 + gamma + 1e-12
    assert controller.steps == steps and controller.mean_error == pytest.approx(misses.mean())
    assert controller.bound() == pytest.approx(aci_bound(0.1, gamma, steps))


def test_static_calibration_loses_coverage_where_aci_keeps_it():
    # The drifting stream: the static 90% interval's coverage falls far below 90% (by the third quarter
    # the scale is about 3: P(|N(0, 9)| <= 1.645) = 0.41); ACI's long-run miss rate is within its bound.
    steps = 3000
    conformal = _calibration()
    ys = _Drift(steps, 3)
    lower, upper = conformal.interval(np.zeros((steps, 1)), np.ones((steps, 1)), 0.9)
    static = np.mean((lower[:, 0] <= ys.noise) & (ys.noise <= upper[:, 0]))
    misses, _ = _stream(AdaptiveLevel(0.9, 0.05), conformal, ys)
    assert static < 0.7
    assert abs(misses.mean() - 0.1) <= aci_bound(0.1, 0.05, steps)


def test_update_moves_the_level_towards_coverage():
    controller = AdaptiveLevel(0.9, 0.01)
    assert controller.adapted_level == pytest.approx(0.9)
    assert controller.update(False) == pytest.approx(0.9 + 0.01 * 0.9)  # a miss: a wider interval next
    assert controller.update([True, True]) == pytest.approx(0.909 - 2 * 0.01 * 0.1)  # covers: narrower
    state = controller.state
    assert (state.steps, state.errors) == (3, 1)
    assert step(state, [True]).alpha_t == pytest.approx(state.alpha_t - 0.01 * 0.9)  # step takes misses
    assert AdaptiveLevel.of(state).adapted_level == controller.adapted_level
    with pytest.raises(InputError, match="gamma"):
        AdaptiveLevel(0.9, 0.0)
    with pytest.raises(InputError, match="level"):
        AdaptiveLevel(1.0)


def test_adapted_levels_make_intervals_at_the_edges():
    conformal = _calibration(rows=99)
    means, stds = np.array([[1.0], [2.0]]), np.array([[1.0], [0.5]])
    top = conformal.scores[0].max_level()  # 99 / 100
    for level in (0.5, 0.9, top):  # inside (0, n/(n+1)]: the calibration's own interval
        np.testing.assert_array_equal(adapted_interval(conformal, means, stds, level),
                                      conformal.interval(means, stds, level))
    biggest = conformal.scores[0].values[-1]
    np.testing.assert_allclose(adapted_interval(conformal, means, stds, top)[1], means + biggest * stds)
    for level in (top + 1e-6, 1.0, 1.7):  # beyond the rows' reach, alpha_t <= 0: everything covered
        lower, upper = adapted_interval(conformal, means, stds, level)
        assert np.isneginf(lower).all() and np.isposinf(upper).all()
    for level in (0.0, -0.4):  # alpha_t >= 1: the empty interval, as the point {mean}
        lower, upper = adapted_interval(conformal, means, stds, level)
        np.testing.assert_array_equal(lower, means)
        np.testing.assert_array_equal(upper, means)
    with pytest.raises(InputError, match="adapted_level"):
        adapted_interval(conformal, means, stds, math.nan)


def test_adapted_levels_make_sets_at_the_edges():
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(4), size=60)
    sets = cal.fit_conformal_sets(probs, rng.integers(0, 4, size=60))
    top = sets.scores["lac"].max_level()
    for method in ("lac", "aps"):
        np.testing.assert_array_equal(adapted_sets(sets, probs, 0.8, method), sets.predict_sets(probs, 0.8, method))
        assert adapted_sets(sets, probs, 1.2, method).all()
        assert not adapted_sets(sets, probs, -0.1, method).any()
    assert adapted_sets(sets, probs, top + 1e-6).all()


def test_adapted_level_is_set_by_the_controller_not_by_a_request():
    assert "adaptive" in OPTION_NAMES and "adapted_level" not in OPTION_NAMES
    bundle = mcd.load_bundle(MODELS / "diabetes")  # saved before adaptive levels existed: its scores serve any level
    x = np.zeros((3, bundle.manifest.input_shape[0]))
    plain = bundle.answer(x, samples=20, seed=1, level=0.9)
    assert plain.adapted_level is None
    adapted = bundle.answer(x, samples=20, seed=1, level=0.9, options={"adapted_level": 0.95})
    same = bundle.answer(x, samples=20, seed=1, level=0.95)
    assert adapted.adapted_level == 0.95 and adapted.level == 0.9 and adapted.interval_method == "conformal"
    np.testing.assert_allclose(adapted.upper, same.upper)
    wide = bundle.answer(x, samples=20, seed=1, level=0.9, options={"adapted_level": 1.3})
    assert np.isposinf(wide.upper).all() and np.isneginf(wide.lower).all()
    with pytest.raises(OptionError, match="adaptive"):
        bundle.answer(x, samples=20, level=0.9, options={"adaptive": True, "interval_method": "gaussian"})
    with pytest.raises(OptionError, match="adaptive"):
        parse_options({"adaptive": "yes"}, bundle.manifest, 0.9)
    with pytest.raises(OptionError, match="AdaptiveLevel"):  # the library holds no controller of its own
        bundle.answer(x, samples=20, level=0.9, options={"adaptive": True})


def test_classifier_sets_at_an_adapted_level():
    bundle = mcd.load_bundle(MODELS / "digits")
    x = np.zeros((2, *bundle.manifest.input_shape))
    with pytest.raises(OptionError, match="set_level"):
        bundle.answer(x, samples=10, options={"adaptive": True})
    answer = bundle.answer(x, samples=10, seed=0, options={"set_level": 0.9, "adapted_level": 2.0})
    assert answer.adapted_level == 2.0 and answer.set_level == 0.9 and answer.prediction_set.all()
    empty = bundle.answer(x, samples=10, seed=0, options={"set_level": 0.9, "adapted_level": -1.0})
    assert (empty.set_size == 0).all()


def test_late_outcomes_keep_the_bound_with_the_delay():
    # Outcomes come back d = 5 answers late (at most 5 answers await theirs): alpha_t stays in
    # [-gamma d, 1 + gamma d] and |mean err - alpha| <= (max(a1, 1 - a1) + gamma d) / (gamma T), exactly.
    gamma, delay, steps = 0.05, 5, 2000
    conformal, ys = _calibration(), _Drift(steps + delay, 6)
    controller, waiting, misses, alphas = AdaptiveLevel(0.9, gamma), [], [], []
    for t in range(steps + delay - 1):
        lower, upper = adapted_interval(conformal, np.zeros((1, 1)), np.ones((1, 1)), controller.adapted_level)
        waiting.append(not (lower[0, 0] <= ys(t, 0.0) <= upper[0, 0]))
        if len(waiting) == delay:  # the oldest answer's outcome arrives
            misses.append(waiting.pop(0))
            controller.update(not misses[-1])
            alphas.append(controller.alpha_t)
    assert len(misses) == steps
    assert min(alphas) >= -gamma * delay - 1e-12 and max(alphas) <= 1 + gamma * delay + 1e-12
    running = np.cumsum(misses) / np.arange(1, steps + 1)
    bound = (0.9 + gamma * delay) / (gamma * np.arange(1, steps + 1))
    assert (np.abs(running - 0.1) <= bound + 1e-12).all()
