"""`mcdropout evaluate`'s before/after calibration report, on the shipped (calibrated) bundles."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import mcdropout as mcd
from mcdropout._calibrate import write_manifest
from mcdropout.bundle import Bundle
from mcdropout.bundle._calibration import fit_bundle
from mcdropout.cli import main
from mcdropout.training._calibration_report import calibration_report, format_report
from mcdropout.training._evaluation import split_of

MODELS = Path(__file__).resolve().parent.parent / "models"
PNG = b"\x89PNG\r\n\x1a\n"


def test_regression_report_matches_the_intervals_computed_by_hand():
    bundle = mcd.load_bundle(MODELS / "diabetes", device="cpu")
    calibration = bundle.manifest.calibration
    assert calibration is not None and "conformal" in calibration.methods
    split = split_of(bundle)
    report = calibration_report(bundle, split.x_test, split.y_test, rows_source="test rows", samples=16, seed=3)
    y = split.y_test.astype(np.float64)
    scaled = bundle.predict(split.x_test, samples=16, seed=3)  # sigma-scaled std, as served
    mean, std = scaled.mean.numpy(), scaled.std.numpy()
    raw_std = std / np.asarray(calibration.sigma_scale)
    for level in (0.8, 0.9, 0.95):
        tag = round(level * 100)
        z = stats.norm.ppf(0.5 + level / 2)
        inside = np.abs(y - mean) <= z * raw_std
        assert report.before.metrics[f"coverage_{tag}"] == pytest.approx(inside.mean())
        assert report.before.metrics[f"width_{tag}"] == pytest.approx(2 * z * raw_std.mean())
        q = calibration.conformal.quantiles(level)[0]
        assert report.after.metrics[f"coverage_{tag}"] == pytest.approx((np.abs(y - mean) <= q * std).mean())
        assert report.after.metrics[f"width_{tag}"] == pytest.approx(2 * q * std.mean())
        # the interval score is the width plus 2 / alpha per unit outside
        miss = np.maximum(np.abs(y - mean) - q * std, 0.0)
        assert report.after.metrics[f"interval_score_{tag}"] == pytest.approx(
            2 * q * std.mean() + 2 / (1 - level) * miss.mean())
    assert report.before.metrics["rmse"] == report.after.metrics["rmse"]  # calibration leaves the mean alone


def test_evaluate_prints_the_table_writes_json_and_draws_before_and_after(tmp_path, capsys):
    report, pictures = tmp_path / "m.json", tmp_path / "plots"
    assert main(["evaluate", str(MODELS / "breast-cancer"), "--samples", "8", "--json", str(report),
                 "--plot", str(pictures)]) == 0
    printed = capsys.readouterr().out
    assert "before and after calibration, on 114 test rows of the recorded split" in printed
    assert "90% set coverage" in printed and "risk 0.02: accepted fraction" in printed
    written = json.loads(report.read_text())["calibration_report"]
    assert written["rows"] == 114 and written["calibration"]["rows"] == 85
    for side in ("before", "after"):
        values = written[side]
        assert 0 <= values["ece"] <= 1 and values["aurc"] >= 0 and 0 <= values["set_size_90"] <= 2
        for risk in ("0.01", "0.02", "0.05"):
            fraction, error = values[f"accepted_fraction_at_{risk}"], values[f"accepted_error_at_{risk}"]
            assert 0 <= fraction <= 1 and (error is None) == (fraction == 0)
    for name in ("breast-cancer-reliability.png", "breast-cancer-risk-coverage.png"):
        assert (pictures / name).read_bytes()[:8] == PNG


def test_an_uncalibrated_bundle_reports_before_only(tmp_path, capsys):
    folder = tmp_path / "breast-cancer"
    shutil.copytree(MODELS / "breast-cancer", folder)
    manifest = mcd.load_bundle(folder, device="cpu").manifest
    write_manifest(folder, dataclasses.replace(manifest, calibration=None))
    report = tmp_path / "m.json"
    assert main(["evaluate", str(folder), "--samples", "8", "--json", str(report)]) == 0
    assert "the bundle is not calibrated" in capsys.readouterr().out
    written = json.loads(report.read_text())["calibration_report"]
    assert written["after"] is None and written["calibration"] is None
    before = written["before"]
    assert before["set_coverage_90"] >= before["accuracy"]  # a set always holds the predicted class


def test_a_level_beyond_the_calibration_rows_is_reported_as_missing():
    """10 calibration rows: a conformal interval exists up to 10/11 = 0.909, so 95% has none after."""
    shipped = mcd.load_bundle(MODELS / "diabetes", device="cpu")
    split = split_of(shipped)
    fitted = fit_bundle(shipped, split.x_calibration[:10], split.y_calibration[:10], samples=16)
    bundle = Bundle(dataclasses.replace(shipped.manifest, calibration=fitted), shipped.model, device="cpu")
    report = calibration_report(bundle, split.x_test, split.y_test, rows_source="test rows", samples=16)
    assert report.after.metrics["coverage_90"] is not None and report.after.metrics["coverage_95"] is None
    assert report.before.metrics["coverage_95"] is not None  # the Gaussian interval needs no calibration
    assert "-: a level above n/(n + 1)" in format_report(report)


def test_report_columns_are_sized_to_values_in_large_units():
    """A target in dollars: every cell is apart from the next and right-aligned under its heading."""
    from mcdropout.training._calibration_report import Report, Side

    big = {"rmse": 68930.2558, "nll": 12.5, "coverage_95": 0.95, "width_95": 1234567.891, "interval_score_95": None}
    report = Report("regression", 20, "test rows", None, Side(big), Side({**big, "width_95": 7.0}))
    lines = format_report(report).splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["before", "after"])
    table = lines[header:header + 12]
    assert table[1].split() == ["RMSE", "68930.2558", "68930.2558"]
    assert next(line for line in table if line.startswith("95% mean width")).split()[-2:] == ["1234567.8910", "7.0000"]
    assert next(line for line in table if line.startswith("95% interval score")).split()[-2:] == ["-", "-"]
    assert {len(line) for line in table} == {len(table[0])}
