"""`mcdropout uci --calibration-fraction`: conformal coverage on exchangeable synthetic rows, within binomial bounds.

A generated data set in the UCI protocol's layout with 10 splits of disjoint rows, so the splits are
independent: each split's calibrated network trains on 200 rows, calibrates on 50 it never saw and is
scored on 100 fresh test rows. For exchangeable rows the conformal quantile is the k-th of n = 50 scores
(k = ceil((n + 1) level)), the coverage of a split given its calibration rows is Beta(k, n + 1 - k), and the
number of its m test rows covered is beta-binomial: the total over the 10 splits must fall within the
0.1% and 99.9% quantiles of the sum of 10 of them (two-sided, exact by convolution). The tau of the grid
(100: noise std 0.1) claims a noise five times smaller than the generated std of 0.5, so the Gaussian
intervals under-cover there while the conformal ones do not.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mcdropout.cli import main
from mcdropout.training import _uci as uci

SPLITS, TRAIN, TEST, FRACTION = 10, 250, 100, 0.2
NOISE = 0.5


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("uci") / "synthetic"
    folder.mkdir()
    generator = np.random.default_rng(18)
    rows = SPLITS * (TRAIN + TEST)
    x = generator.uniform(-2, 2, size=(rows, 2))
    y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] + generator.normal(0, NOISE, rows)
    np.savetxt(folder / "data.txt", np.column_stack([x, y]))
    files = {"index_features.txt": "0\n1\n", "index_target.txt": "2\n", "n_splits.txt": f"{SPLITS}\n",
             "n_hidden.txt": "10\n", "n_epochs.txt": "1\n", "dropout_rates.txt": "0.05\n", "tau_values.txt": "100\n"}
    for name, text in files.items():
        (folder / name).write_text(text)
    for k in range(SPLITS):
        block = np.arange(k * (TRAIN + TEST), (k + 1) * (TRAIN + TEST))
        np.savetxt(folder / f"index_train_{k}.txt", block[:TRAIN], fmt="%d")
        np.savetxt(folder / f"index_test_{k}.txt", block[TRAIN:], fmt="%d")
    return folder


def _total_bounds(n: int, m: int, level: float, splits: int, tail: float = 1e-3) -> tuple[int, int]:
    """The tail and 1 - tail quantiles of the test rows covered over ``splits`` independent splits."""
    k = math.ceil((n + 1) * level)
    one = stats.betabinom.pmf(np.arange(m + 1), m, k, n + 1 - k)
    total = np.array([1.0])
    for _ in range(splits):
        total = np.convolve(total, one)
    cdf = np.cumsum(total)
    return int(np.searchsorted(cdf, tail)), int(np.searchsorted(cdf, 1 - tail))


def test_conformal_intervals_cover_exchangeable_rows(synthetic):
    result = uci.run(synthetic, epochs=10, samples=100, validation_samples=20, calibration_fraction=FRACTION,
                     processes=1, quiet=True)
    assert result.hyperparameters == "grid" and len(result.calibrated) == SPLITS
    assert all(s.training_rows == 200 and s.calibration_rows == 50 for s in result.calibrated)
    for level in uci.LEVELS:
        tag = round(level * 100)
        covered = sum(round(s.intervals[f"conformal_coverage_{tag}"] * TEST) for s in result.calibrated)
        low, high = _total_bounds(50, TEST, level, SPLITS)
        assert low <= covered <= high, (level, covered, low, high)
        assert result.calibrated_summary(f"gaussian_coverage_{tag}")[0] < level - 0.1  # tau: a noise 5x too small
        for s in result.calibrated:
            assert s.intervals[f"conformal_width_{tag}"] > s.intervals[f"gaussian_width_{tag}"] > 0
            assert s.intervals[f"conformal_interval_score_{tag}"] >= s.intervals[f"conformal_width_{tag}"]


def test_the_option_adds_the_calibrated_table_and_json(synthetic, tmp_path, capsys):
    out = tmp_path / "synthetic.json"
    status = main(["uci", str(synthetic), "--splits", "1", "--epochs", "5", "--samples", "50",
                   "--validation-samples", "10", "--calibration-fraction", str(FRACTION), "--hyperparameters",
                   "reuse", "--json", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert status == 0, printed.err
    assert "cover 90: conformal / Gaussian" in printed.out and "| synthetic | 1 | 200 / 50 |" in printed.out
    calibrated = json.loads(out.read_text())[0]["calibrated"]
    assert calibrated["fraction"] == FRACTION and calibrated["hyperparameters"] == "reuse"
    (split,) = calibrated["splits"]
    assert (split["dropout"], split["tau"]) == (0.05, 100.0)
    for key in ("conformal_coverage_90", "gaussian_width_95", "conformal_interval_score_95", "rmse"):
        assert math.isfinite(split[key]) and calibrated[key][0] == split[key]


def test_calibration_fraction_is_checked_before_training(synthetic):
    with pytest.raises(ValueError, match=r"--calibration-fraction must be in \(0, 1\), got 1.0"):
        uci.run(synthetic, calibration_fraction=1.0)
    with pytest.raises(ValueError, match="--calibration-fraction 0.02 leaves split 0 245 training and 5 calibration"):
        uci.run(synthetic, calibration_fraction=0.02)
    with pytest.raises(ValueError, match="--hyperparameters must be one of grid, reuse"):
        uci.run(synthetic, calibration_fraction=0.2, hyperparameters="best")

