"""The training pipeline end to end, through the ``mcdropout`` command."""

import json

import numpy as np
import pytest
import torch

import mcdropout as mcd
from mcdropout.training import _fit as training
from mcdropout.training import datasets
from mcdropout.cli import main
from mcdropout.training._recipes import RECIPES, train


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_short_training_writes_a_loadable_bundle(name, tmp_path, capsys):
    out = tmp_path / name
    assert main(["train", name, "--epochs", "2", "--out", str(out), "--seed", "1"]) == 0
    printed = capsys.readouterr()
    assert f"wrote {out}" in printed.out and "mc:" in printed.out
    assert "epoch" in printed.err  # progress is shown
    bundle = mcd.load_bundle(out, device="cpu")
    assert bundle.manifest.training["epochs"] == 2 and bundle.manifest.training["seed"] == 1
    assert bundle.manifest.metrics["mc"]
    x = np.zeros((3, *bundle.manifest.input_shape), dtype=np.float32)
    if bundle.text is not None:  # a text model takes strings (float rows are refused: they are no token ids)
        with pytest.raises(mcd.InputError, match="strings, or token ids as integers"):
            bundle.predict(x, seed=0, samples=8)
        x = ["a film", "the plot was good", "xyzzy"]
    pred = bundle.predict(x, seed=0, samples=8)
    assert len(pred.num_samples) == 3


def test_training_is_reproducible(tmp_path):
    first = train("breast-cancer", seed=4, out=tmp_path / "a", epochs=3, quiet=True)[1]
    second = train("breast-cancer", seed=4, out=tmp_path / "b", epochs=3, quiet=True)[1]
    assert first == second
    weights = [mcd.load_bundle(tmp_path / n).model.state_dict() for n in "ab"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_fit_tau_recovers_the_noise_precision():
    rng = np.random.default_rng(0)
    y = rng.normal(0.0, 2.0, size=(4000, 1))  # truth: mean 0, noise std 2 -> tau = 1/4
    samples = np.zeros((4000, 10, 1))  # a model that always predicts 0
    tau = training.fit_tau(samples, y)
    # the MLE of the precision is 1 / mean(y^2); its relative standard error is sqrt(2 / n)
    assert abs(tau - 1 / np.mean(y**2)) < 1e-4
    assert abs(tau - 0.25) < 5 * 0.25 * np.sqrt(2 / 4000)


def test_evaluate_prints_writes_json_and_plots(tmp_path, capsys):
    out = tmp_path / "h1d"
    train("heteroscedastic-1d", out=out, epochs=3, quiet=True)
    capsys.readouterr()
    report, picture = tmp_path / "m.json", tmp_path / "band.png"
    assert main(["evaluate", str(out), "--samples", "16", "--json", str(report), "--plot", str(picture)]) == 0
    printed = capsys.readouterr().out
    assert "coverage_95" in printed and "auroc_epistemic_std" in printed
    assert json.loads(report.read_text())["samples"] == 16
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    assert main(["train", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'; shipped models:" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such bundle folder" in err


def test_a_recipe_holds_out_calibration_rows_it_never_trains_on(tmp_path, capsys):
    out = tmp_path / "bc"
    assert main(["train", "breast-cancer", "--epochs", "2", "--calibration-fraction", "0.25", "--out", str(out),
                 "--quiet"]) == 0
    bundle = mcd.load_bundle(out, device="cpu")
    data = bundle.manifest.training["data"]
    assert data["calibration_fraction"] == 0.25 and data["calibration_rows"] == round(0.25 * 569) == 142
    assert bundle.manifest.calibration.rows == 142
    assert bundle.manifest.calibration.source == "the calibration part of the training split (142 rows, never" \
                                                 " trained on)"
    assert "uncalibrated" in bundle.manifest.metrics
    split = datasets.load("breast-cancer", calibration=0.25, val=0.0)
    trained = {row.tobytes() for row in split.x_train}
    assert not any(row.tobytes() in trained for row in split.x_calibration)
    # the test rows do not move with the calibration part: they are the ones a split without one has
    np.testing.assert_array_equal(split.x_test, datasets.load("breast-cancer").x_test)
    capsys.readouterr()

    assert main(["train", "breast-cancer", "--epochs", "2", "--calibration-fraction", "0", "--out",
                 str(tmp_path / "raw"), "--quiet"]) == 0
    raw = mcd.load_bundle(tmp_path / "raw", device="cpu").manifest
    assert raw.calibration is None and raw.training["data"]["calibration_rows"] == 0
    assert raw.training["data"]["train_rows"] == 569 - 114
    capsys.readouterr()
    # the recorded split has no calibration rows; the validation rows (none here) are not taken instead
    assert main(["calibrate", str(tmp_path / "raw"), "--split-rows"]) == 2
    assert "trained with --calibration-fraction 0" in capsys.readouterr().err
    for value, message in (("0.9", "(--calibration-fraction) must lie in [0, 0.8)"), ("nan", "must lie in [0, 0.8)"),
                           ("0.01", "gives 6 calibration rows of 569; at least 20"),
                           ("0.79", "5 training rows after holding out 114 for testing and 450 for calibration")):
        assert main(["train", "breast-cancer", "--calibration-fraction", value, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (value, err)
        assert not (tmp_path / "x").exists()


def test_a_split_recorded_without_a_calibration_part_calibrates_on_its_validation_rows():
    split = datasets.load("diabetes")  # how bundles trained before recipes held out calibration rows recorded it
    assert split.x_calibration is None
    x, y, source = split.calibration_rows()
    assert x is split.x_val and source == f"the validation rows of the training split ({len(y)} rows)"
