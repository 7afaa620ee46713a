"""Calibration's guarantees on generated data where the truth is known (mcdropout.stats.calibration)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import optimize, special, stats

from mcdropout.errors import InputError
from mcdropout.stats import calibration as cal

REPS, N_CAL, N_TEST = 200, 200, 200


def _coverage_tolerance(level: float, reps: int = REPS, n: int = N_CAL, m: int = N_TEST) -> float:
    """4 standard deviations of the mean over reps of one split's test coverage.

    One split's coverage given its quantile is Binomial(m, c)/m with c ~ Beta(k, n + 1 - k) (k = ceil((n+1) level)):
    variance about level (1 - level) (1/(n + 2) + 1/m).
    """
    return 4.0 * math.sqrt(level * (1 - level) * (1.0 / (n + 2) + 1.0 / m) / reps)


def _misspecified(rng, rows):
    """A network whose std is 1.5x too small and whose errors are heavy-tailed (Student t, 4 dof)."""
    mean = rng.normal(size=rows)
    true_std = rng.uniform(0.5, 2.0, size=rows)
    y = mean + true_std * rng.standard_t(4, size=rows) / math.sqrt(2.0)  # t4 has variance 2
    return mean, true_std / 1.5, y


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_conformal_intervals_cover_where_raw_gaussian_ones_do_not(level):
    rng = np.random.default_rng(18)
    conformal, raw = [], []
    z = stats.norm.ppf(0.5 + level / 2)
    for _ in range(REPS):
        mean, std, y = _misspecified(rng, N_CAL + N_TEST)
        fitted = cal.fit_conformal_regression(mean[:N_CAL], std[:N_CAL], y[:N_CAL])
        lower, upper = fitted.interval(mean[N_CAL:, None], std[N_CAL:, None], level)
        conformal.append(np.mean((lower[:, 0] <= y[N_CAL:]) & (y[N_CAL:] <= upper[:, 0])))
        raw.append(np.mean(np.abs(y[N_CAL:] - mean[N_CAL:]) <= z * std[N_CAL:]))
    tolerance = _coverage_tolerance(level)
    assert np.mean(conformal) >= level - tolerance
    # Split conformal is also not far above: E[coverage] <= level + 1 / (n + 1) for continuous scores.
    assert np.mean(conformal) <= level + 1.0 / (N_CAL + 1) + tolerance
    assert np.mean(raw) < level - 0.05  # the raw MC intervals under-cover


def test_regression_calibration_scales_sigma_and_keeps_coverage():
    rng = np.random.default_rng(7)
    mean, std, y = _misspecified(rng, 20_000)
    fitted = cal.fit_regression(mean[:10_000], std[:10_000], y[:10_000], source="generated")
    # E[(y - mean)^2 / std^2] = 1.5^2 exactly here; sd of the estimate: sqrt(Var(chi) / n), below 0.05.
    assert fitted.sigma_scale[0] == pytest.approx(1.5, abs=0.1)
    scaled = std[10_000:] * fitted.sigma_scale[0]
    lower, upper = fitted.conformal.interval(mean[10_000:, None], scaled[:, None], 0.9)
    covered = np.mean((lower[:, 0] <= y[10_000:]) & (y[10_000:] <= upper[:, 0]))
    assert covered >= 0.9 - 4 * math.sqrt(0.09 / 10_000)


def test_too_high_a_level_for_the_rows_is_refused():
    fitted = cal.fit_conformal_regression(np.zeros(9), np.ones(9), np.arange(9.0))
    assert fitted.quantiles(0.9)[0] == 8.0  # ceil(10 x 0.9) = 9th of 9
    with pytest.raises(InputError, match="too high for 9 calibration rows"):
        fitted.quantiles(0.95)
    with pytest.raises(InputError, match=r"level must be a number in \(0, 1\)"):
        fitted.quantiles(1.0)


def test_thinned_scores_are_conservative():
    rng = np.random.default_rng(3)
    scores = rng.exponential(size=50_000)
    full, thinned = cal.SortedScores.of(scores, keep=10**9), cal.SortedScores.of(scores, keep=1000)
    assert len(thinned.values) <= 1000 and thinned.ranks[-1] == 50_000
    for level in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999):
        exact, kept = full.quantile(level), thinned.quantile(level)
        assert exact <= kept <= full.values[min(49_999, math.ceil(50_001 * level) + 50)]


def _sample_labels(rng, probs):
    cumulative = probs.cumsum(axis=1)
    return (rng.uniform(size=(len(probs), 1)) > cumulative).sum(axis=1).clip(max=probs.shape[1] - 1)


def test_temperature_recovers_a_known_temperature():
    rng = np.random.default_rng(11)
    rows, classes, true_t = 4000, 10, 2.5
    logits = rng.normal(scale=4.0, size=(rows, classes))
    y = _sample_labels(rng, special.softmax(logits / true_t, axis=1))
    fitted = cal.fit_temperature(logits, y)
    # Standard error from the observed information of the NLL in T (numerical second derivative of the sum).
    def nll(t):
        return -special.log_softmax(logits / t, axis=1)[np.arange(rows), y].sum()
    h = 1e-3
    information = (nll(fitted + h) - 2 * nll(fitted) + nll(fitted - h)) / h**2
    assert abs(fitted - true_t) <= 4.0 / math.sqrt(information)


def test_temperature_applies_to_every_sample_before_the_softmax():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(5, 8, 3))
    out = cal.summarise_logits(logits, 2.0)
    p = special.softmax(logits / 2.0, axis=-1)
    np.testing.assert_allclose(out["probs"], p.mean(axis=1))
    expected = -(p * np.log(p)).sum(-1).mean(1)
    np.testing.assert_allclose(out["expected_entropy"], expected)
    np.testing.assert_allclose(out["mutual_information"], out["entropy"] - expected, atol=1e-12)
    # log-probabilities give the same statistics as the logits
    log_p = special.log_softmax(logits, axis=-1)
    np.testing.assert_allclose(cal.summarise_logits(log_p, 2.0)["probs"], out["probs"])


@pytest.mark.parametrize("method", cal.SET_METHODS)
def test_conformal_sets_cover(method):
    rng = np.random.default_rng(5)
    level, classes, covered, sizes = 0.9, 6, [], []
    for _ in range(REPS):
        probs = rng.dirichlet(np.full(classes, 0.5), size=N_CAL + N_TEST)
        y = _sample_labels(rng, probs)
        # The model is over-confident: it reports probabilities sharpened by temperature 0.5.
        reported = special.softmax(np.log(probs) / 0.5, axis=1)
        fitted = cal.fit_conformal_sets(reported[:N_CAL], y[:N_CAL])
        sets = fitted.predict_sets(reported[N_CAL:], level, method)
        covered.append(sets[np.arange(N_TEST), y[N_CAL:]].mean())
        sizes.append(sets.sum(axis=1).mean())
    assert np.mean(covered) >= level - _coverage_tolerance(level)
    assert 1.0 < np.mean(sizes) < classes


def test_aps_scores_are_the_mass_ranked_above():
    """APS with U = 0: the top class scores 0, so a sharp classifier's sets are not every class."""
    probs = np.array([[0.3, 0.5, 0.2]])
    np.testing.assert_allclose(cal._set_scores(probs, "aps"), [[0.5, 0.0, 0.8]])
    np.testing.assert_allclose(cal._set_scores(probs, "lac"), [[0.7, 0.5, 0.8]])


def test_selective_risk_bound_holds_over_repetitions():
    """Uncertainty u ~ U(0, 1) and P(error | u) = 0.2 u: accepting u <= t has selective risk 0.1 t exactly."""
    rng = np.random.default_rng(13)
    max_risk, delta, reps, n = 0.05, 0.1, 100, 4000
    violations, accepted = 0, []
    for _ in range(reps):
        u = rng.uniform(size=n)
        errors = rng.uniform(size=n) < 0.2 * u
        threshold = cal.selective_threshold(u, errors, max_risk, delta)
        true_risk = 0.1 * min(max(threshold, 0.0), 1.0)
        violations += true_risk > max_risk
        accepted.append(max(threshold, 0.0))
    # Each repetition violates with probability <= delta: the count is at most Binomial(reps, delta)'s 99.9% point.
    assert violations <= stats.binom.ppf(0.999, reps, delta)
    assert np.mean(accepted) > 0.25  # not vacuous: the best possible threshold is 0.5


def test_selective_abstains_everywhere_when_no_threshold_qualifies():
    errors = np.ones(50, dtype=bool)
    assert cal.selective_threshold(np.linspace(0, 1, 50), errors, 0.1) == -math.inf
    with pytest.raises(InputError, match="max_risk must be a number in"):
        cal.selective_threshold(np.zeros(3), np.zeros(3), 1.5)


def test_classification_calibration_round_trips_through_json():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=3.0, size=(300, 4, 5))
    y = _sample_labels(rng, special.softmax(logits.mean(axis=1) / 2.0, axis=1))
    fitted = cal.fit_classification(logits, y, source="generated.csv")
    again = cal.Calibration.from_dict(json.loads(json.dumps(fitted.to_dict())))
    assert again.methods == ["temperature", "conformal_sets", "selective"] == fitted.methods
    assert again.temperature == fitted.temperature and again.rows == 300
    stats_ = cal.summarise_logits(logits, fitted.temperature)
    np.testing.assert_array_equal(again.sets.predict_sets(stats_["probs"], 0.9, "aps"),
                                  fitted.sets.predict_sets(stats_["probs"], 0.9, "aps"))
    assert again.selective.threshold(0.2, "entropy") == fitted.selective.threshold(0.2, "entropy")
    assert "scores" not in json.dumps(fitted.summary())


def test_the_engine_applies_the_temperature_to_every_sample():
    import torch

    from mcdropout.engine import MCPredictor

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3))
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    raw = MCPredictor(model, task="classification", samples=16).predict(x, seed=3, return_samples=True)
    hot = MCPredictor(model, task="classification", samples=16, temperature=2.5).predict(x, seed=3)
    expected = cal.summarise_logits(np.log(raw.samples.numpy().astype(np.float64)), 2.5)
    np.testing.assert_allclose(hot.probs.numpy(), expected["probs"], atol=1e-6)
    np.testing.assert_allclose(hot.expected_entropy.numpy(), expected["expected_entropy"], atol=1e-5)
    np.testing.assert_allclose(hot.mutual_information.numpy(), expected["mutual_information"], atol=1e-5)
    with pytest.raises(InputError, match="temperature must be a positive number"):
        MCPredictor(model, task="classification", temperature=0.0)


def test_calibrated_results_columns_json_and_joins():
    from mcdropout.answer import ClassificationResult, concatenate, from_json, take_rows

    rows = 4
    result = ClassificationResult(
        model="m", version="1", seed=0, classes=["a", "b", "c"], samples_used=np.full(rows, 8),
        probs=np.full((rows, 3), 1 / 3), label=np.zeros(rows, dtype=np.int64),
        class_name=np.asarray(["a"] * rows, dtype=object), entropy=np.zeros(rows), expected_entropy=np.zeros(rows),
        mutual_information=np.zeros(rows), variation_ratio=np.zeros(rows),
        prediction_set=np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 1, 1]], dtype=bool),
        set_size=np.array([1, 2, 0, 3]), abstain=np.array([False, True, True, False]), set_level=0.9)
    columns = result.columns()
    assert list(columns)[-6:] == ["samples_used", "in_set_a", "in_set_b", "in_set_c", "set_size", "abstain"]
    assert result.set_members() == [[0], [0, 1], [], [0, 1, 2]]
    body = {"model": "m", "version": "1", "seed": 0, "task": "classification", "classes": result.classes,
            "samples_used": [8] * rows, "probs": result.probs.tolist(), "label": [0] * rows,
            "class_name": ["a"] * rows, "entropy": [0.0] * rows, "expected_entropy": [0.0] * rows,
            "mutual_information": [0.0] * rows, "variation_ratio": [0.0] * rows,
            "prediction_set": result.set_members(), "set_size": [1, 2, 0, 3], "abstain": [False, True, True, False],
            "set_level": 0.9}
    again = from_json(body)
    np.testing.assert_array_equal(again.prediction_set, result.prediction_set)
    np.testing.assert_array_equal(again.abstain, result.abstain)
    joined = concatenate([take_rows(again, 0, 2), take_rows(again, 2, 4)])
    np.testing.assert_array_equal(joined.set_size, result.set_size)
    plain = {k: v for k, v in body.items() if k not in ("prediction_set", "set_size", "abstain", "set_level")}
    assert from_json(plain).prediction_set is None and "abstain" not in from_json(plain).columns()


def test_parse_options_names_the_field():
    from types import SimpleNamespace

    from mcdropout.answer import OptionError, Options, parse_options

    uncalibrated = SimpleNamespace(name="m", task="classification", calibration=None)
    assert parse_options({}, uncalibrated) is None
    with pytest.raises(OptionError, match="set_level: prediction sets need a calibrated bundle") as error:
        parse_options({"set_level": 0.9}, uncalibrated)
    assert error.value.field == "set_level"
    with pytest.raises(OptionError, match="set_method: must be one of 'lac', 'aps'"):
        parse_options({"set_method": "raps"}, uncalibrated)
    with pytest.raises(OptionError, match="sets: unknown option"):
        parse_options({"sets": 1}, uncalibrated)
    regression = SimpleNamespace(name="r", task="regression", calibration=None)
    assert parse_options({"max_std": 2.0}, regression) == Options(max_std=2.0)
    with pytest.raises(OptionError, match="interval_method: 'conformal' needs a calibrated bundle"):
        parse_options({"interval_method": "conformal"}, regression)


def test_separated_calibration_rows_leave_the_temperature_at_one():
    """Every row right with a margin: the NLL falls all the way to T -> 0, which has no minimum."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, size=200)
    logits = rng.normal(size=(200, 5, 3))
    logits[np.arange(200), :, y] += 6.0
    assert cal.fit_temperature(logits, y) == 1.0



def test_the_temperature_is_the_one_closest_to_one_within_a_standard_error_of_the_best():
    """Where the rows cannot tell temperatures apart (within one paired standard error of the lowest NLL),
    the fit keeps the one nearest 1, not wherever in a flat stretch the bare minimum lands."""
    rng = np.random.default_rng(7)
    rows, classes = 300, 10
    logits = rng.normal(scale=4.0, size=(rows, classes))
    y = _sample_labels(rng, special.softmax(logits / 2.0, axis=1))

    def row_nll(t):
        return -special.log_softmax(logits / t, axis=1)[np.arange(rows), y]

    bare = math.exp(optimize.minimize_scalar(lambda u: row_nll(math.exp(u)).mean(), bounds=(math.log(0.05),
                    math.log(20.0)), method="bounded", options={"xatol": 1e-9}).x)
    fitted = cal.fit_temperature(logits, y)

    def excess(t):
        difference = row_nll(t) - row_nll(bare)
        return difference.mean() - difference.std(ddof=1) / math.sqrt(rows)

    assert 1.0 < fitted < bare
    assert abs(excess(fitted)) < 1e-6  # on the band's edge
    assert excess(fitted / 1.01) > 0.0  # a step towards 1 leaves the band
