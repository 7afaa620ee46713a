"""Each metric against a case computed by hand."""

import math

import numpy as np
import pytest
import torch

from mcdropout import metrics


def test_rmse():
    assert metrics.rmse([1.0, 2.0, 3.0], [1.0, 2.0, 5.0]) == pytest.approx(math.sqrt(4 / 3))


def test_gaussian_nll():
    # -log N(1; 0, 4) = 0.5 log(2 pi 4) + 1/8 ; -log N(0; 0, 1) = 0.5 log(2 pi)
    expected = (0.5 * math.log(8 * math.pi) + 1 / 8 + 0.5 * math.log(2 * math.pi)) / 2
    assert metrics.gaussian_nll([1.0, 0.0], [0.0, 0.0], [4.0, 1.0]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="variance must be positive"):
        metrics.gaussian_nll([1.0], [0.0], [0.0])


def test_mc_log_likelihood_is_log_mean_exp_over_samples():
    tau = 2.0
    y = np.array([0.5])
    samples = np.array([[0.0, 1.0]])  # one row, T = 2
    densities = [math.sqrt(tau / (2 * math.pi)) * math.exp(-0.5 * tau * (0.5 - s) ** 2) for s in (0.0, 1.0)]
    assert metrics.mc_log_likelihood(y, samples, tau) == pytest.approx(math.log(sum(densities) / 2))
    with pytest.raises(ValueError, match="do not match"):
        metrics.mc_log_likelihood(np.zeros(3), np.zeros((2, 5)), tau)


def test_interval_coverage_counts_the_edges_inside():
    assert metrics.interval_coverage([0.0, 1.0, 2.0, 3.0], [0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0]) == 0.5


def test_crps_gaussian_closed_form():
    # at y = mean: sigma (2 phi(0) - 1/sqrt(pi)) = sigma (2/sqrt(2 pi) - 1/sqrt(pi))
    assert metrics.crps_gaussian([0.0], [0.0], [2.0]) == pytest.approx(2 * (2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi)))
    # far from the mean CRPS approaches |y - mean| - sigma / sqrt(pi)
    assert metrics.crps_gaussian([100.0], [0.0], [1.0]) == pytest.approx(100 - 1 / math.sqrt(math.pi))


def test_classification_scores():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])
    labels = np.array([0, 2, 0])
    assert metrics.accuracy(probs, labels) == pytest.approx(2 / 3)
    assert metrics.classification_nll(probs, labels) == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.5)) / 3)
    brier = ((0.3**2 + 0.2**2 + 0.1**2) + (0.1**2 + 0.6**2 + 0.7**2) + (0.5**2 + 0.25**2 + 0.25**2)) / 3
    assert metrics.brier(probs, labels) == pytest.approx(brier)
    with pytest.raises(ValueError, match="class indices"):
        metrics.brier(probs, np.array([0, 3, 0]))


def test_ece_with_fifteen_bins():
    # bins are (b/15, (b+1)/15]: confidence 0.7 falls in bin 10, 0.6 in bin 8, 0.5 in bin 7
    probs = np.array([[0.7, 0.3], [0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    labels = np.array([0, 1, 1, 1])
    # bin 10: two rows, accuracy 0.5, confidence 0.7 -> 2 * 0.2; bin 8: accuracy 1, conf 0.6 -> 0.4;
    # bin 7: argmax is class 0 (first of a tie), wrong, conf 0.5 -> 0.5
    assert metrics.ece(probs, labels) == pytest.approx((2 * 0.2 + 0.4 + 0.5) / 4)
    perfect = np.eye(3)
    assert metrics.ece(perfect, np.arange(3)) == 0.0


def test_auroc_counts_ties_as_half():
    assert metrics.auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert metrics.auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert metrics.auroc([0.1, 0.5], [0.5, 0.2]) == pytest.approx((0.5 + 1 + 1 + 0) / 4)


def test_metrics_take_tensors():
    assert metrics.rmse(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0])) == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="shapes differ"):
        metrics.rmse([1.0, 2.0], [1.0])


def test_interval_score_is_the_width_plus_the_scaled_miss():
    # level 0.8: alpha 0.2, each unit outside costs 2 / 0.2 = 10 on top of the width 2
    y, lower, upper = [0.0, 3.0, -2.0], [-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]
    assert metrics.interval_score(y, lower, upper, 0.8) == pytest.approx((2 + (2 + 10 * 2) + (2 + 10 * 1)) / 3)
    assert metrics.interval_score([0.5], [0.0], [1.0], 0.95) == pytest.approx(1.0)  # inside: the width alone
    with pytest.raises(ValueError, match="level must be in"):
        metrics.interval_score(y, lower, upper, 1.0)


def test_risk_coverage_accepts_tied_scores_together():
    # sorted: 0.1 right, 0.2 right, 0.3 wrong, 0.3 right (tied: accepted together), 0.5 wrong
    scores, errors = [0.1, 0.3, 0.2, 0.3, 0.5], [0, 1, 0, 0, 1]
    coverage, risk = metrics.risk_coverage(scores, errors)
    assert coverage.tolist() == pytest.approx([0.2, 0.4, 0.8, 1.0])
    assert risk.tolist() == pytest.approx([0.0, 0.0, 0.25, 0.4])
    # AURC: positions 1, 2 at risk 0; positions 3, 4 (the tie) at 1/4; position 5 at 2/5
    assert metrics.aurc(scores, errors) == pytest.approx((0 + 0 + 2 * 0.25 + 0.4) / 5)
    # the order of tied rows does not matter
    assert metrics.aurc([0.1, 0.3, 0.2, 0.3, 0.5], [0, 0, 0, 1, 1]) == metrics.aurc(scores, errors)


def test_aurc_rewards_a_ranking_that_puts_the_errors_last():
    errors = [0, 0, 1, 1]
    assert metrics.aurc([1, 2, 3, 4], errors) == pytest.approx((0 + 0 + 1 / 3 + 1 / 2) / 4)
    assert metrics.aurc([4, 3, 2, 1], errors) == pytest.approx((1 + 1 + 2 / 3 + 1 / 2) / 4)
