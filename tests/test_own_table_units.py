"""Own tables in any units, a calibration part never trained on, and the warning for a constant-like model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mcdropout import load_bundle
from mcdropout.cli import main
from mcdropout.training import _stacked as stacked
from mcdropout.training import datasets
from mcdropout.training._baseline import compare
from mcdropout.training._own_table import train_from_table
from mcdropout.training.datasets import partition

EPS32 = float(np.finfo(np.float32).eps)
SCALES = {"dollars": (1e5, [1e5, 1e-3, 1.0]), "micro": (1e-5, [1e-5, 1e4, 7.0])}  # target, features


def _table(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    y = np.sin(2 * x[:, 0]) + 0.5 * x[:, 1] + rng.normal(0, 0.2, rows)
    return pd.DataFrame({"a": x[:, 0] + 3, "b": x[:, 1], "c": x[:, 2], "y": y})


def _scaled(frame: pd.DataFrame, target: float, features: list[float]) -> pd.DataFrame:
    return frame.assign(a=frame.a * features[0], b=frame.b * features[1], c=frame.c * features[2], y=frame.y * target)


def _lipschitz(model: torch.nn.Module, p: float) -> float:
    """An upper bound of the network's Lipschitz constant in the 2-norm, any dropout mask: the product of the
    weights' spectral norms, each times the largest mask scale 1 / (1 - p) (ReLU is 1-Lipschitz)."""
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    return float(np.prod([torch.linalg.matrix_norm(m.weight.double(), 2).item() / (1 - p) for m in linears]))


@pytest.fixture(scope="module")
def fits(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("units")
    base = _table()
    frames = {"base": base, **{name: _scaled(base, *scale) for name, scale in SCALES.items()}}
    bundles = {}
    for name, frame in frames.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
        path, _ = train_from_table(folder / f"{name}.csv", target="y", epochs=40, hidden=(16,), out=folder / name,
                                   quiet=True)
        bundles[name] = load_bundle(path, device="cpu")
    return {"frames": frames, "bundles": bundles}


@pytest.mark.parametrize("name", sorted(SCALES))
def test_any_units_give_the_same_standardised_fit(fits, name):
    target, features = SCALES[name]
    base, other = fits["bundles"]["base"], fits["bundles"][name]
    # the network is fitted on standardised rows, so it is the same network, bit for bit
    for (key, a), (_, b) in zip(base.model.state_dict().items(), other.model.state_dict().items()):
        assert torch.equal(a, b), key
    m0, m1 = base.manifest, other.manifest
    assert m1.training["epochs"] == m0.training["epochs"] and m1.dropout == m0.dropout
    assert m1.tau == pytest.approx(m0.tau, rel=1e-9)  # precision in standardised units
    assert np.allclose(m1.input_standardisation.std, np.multiply(m0.input_standardisation.std, features), rtol=1e-12)
    assert np.allclose(m1.input_standardisation.mean, np.multiply(m0.input_standardisation.mean, features),
                       rtol=1e-12)
    assert m1.target_standardisation.std[0] == pytest.approx(m0.target_standardisation.std[0] * target, rel=1e-12)
    assert m1.metrics["baseline"]["r2"] == pytest.approx(m0.metrics["baseline"]["r2"], rel=1e-4)

    # predictions in user units: equal up to the scale, within float32 rounding of the two standardisations
    x = fits["frames"]["base"][["a", "b", "c"]].to_numpy()[:50]
    got = other.predict(x * features, samples=30, seed=3).mean.double().numpy()[:, 0] / target
    want = base.predict(x, samples=30, seed=3).mean.double().numpy()[:, 0]
    mean_x, std_x = np.asarray(m0.input_standardisation.mean), np.asarray(m0.input_standardisation.std)
    # (x - m) / s in float32: x, m and the result each rounded (3 eps), relative to |x| + |m| over s, both bundles
    input_error = np.linalg.norm(2 * 3 * EPS32 * (np.abs(x) + np.abs(mean_x)) / std_x, axis=1)
    # the network's float32 rounding is the same in both (identical standardised inputs give identical outputs)
    y_std, y_mean = m0.target_standardisation.std[0], m0.target_standardisation.mean[0]
    lipschitz = _lipschitz(base.model, m0.dropout)
    output_error = 2 * 3 * EPS32 * (np.abs(want) + abs(y_mean)) + y_std * lipschitz * input_error
    assert np.all(np.abs(got - want) <= output_error), np.max(np.abs(got - want) / output_error)


def test_calibration_rows_are_held_out_and_never_trained_on(tmp_path):
    frame = _table(300, seed=1)
    train, _, calibration, test = partition(len(frame), 0, 0.1, 0.0, 0.15)
    assert (len(test), len(calibration), len(train)) == (30, 45, 225)
    assert len(set(test) | set(calibration) | set(train)) == 300
    frame.to_csv(tmp_path / "clean.csv", index=False)
    spoiled = frame.copy()
    spoiled.loc[calibration, "y"] = 1e6  # calibration targets only: if training saw them, the fit would change
    spoiled.to_csv(tmp_path / "spoiled.csv", index=False)
    options = dict(target="y", epochs=15, hidden=(8,), quiet=True)
    clean, _ = train_from_table(tmp_path / "clean.csv", out=tmp_path / "clean", **options)
    other, _ = train_from_table(tmp_path / "spoiled.csv", out=tmp_path / "spoiled", **options)
    a, b = load_bundle(clean, device="cpu"), load_bundle(other, device="cpu")
    for (key, u), (_, v) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(u, v), key
    data = a.manifest.training["data"]
    assert (data["calibration_fraction"], data["calibration_rows"], data["train_rows"]) == (0.15, 45, 225)
    assert a.manifest.training["early_stopping"]["validation_rows"] == 45  # the last 20% of the training part
    calibration_record = a.manifest.calibration
    assert calibration_record.rows == 45 and "calibration part of clean.csv (45 rows" in calibration_record.source
    assert calibration_record.conformal is not None
    assert b.manifest.calibration.conformal.scores[0].values != calibration_record.conformal.scores[0].values
    assert "uncalibrated" in a.manifest.metrics  # the held-out metrics before and after

    none, _ = train_from_table(tmp_path / "clean.csv", out=tmp_path / "none", calibration_fraction=0, **options)
    uncalibrated = load_bundle(none, device="cpu").manifest
    assert uncalibrated.calibration is None and uncalibrated.training["data"]["calibration_rows"] == 0
    assert uncalibrated.training["data"]["train_rows"] == 270


def test_bad_calibration_fractions_name_the_option(tmp_path, capsys):
    _table(100).to_csv(tmp_path / "t.csv", index=False)
    cases = {"1.5": "must lie in [0, 1)", "-0.1": "must lie in [0, 1)", "nan": "must lie in [0, 1)",
             "0.95": "leave no training rows", "0.05": "gives 5 calibration rows of 100; at least 20"}
    for value, message in cases.items():
        code = main(["train", "--data", str(tmp_path / "t.csv"), "--target", "y", "--calibration-fraction", value,
                     "--out", str(tmp_path / "b")])
        err = capsys.readouterr().err
        assert code == 2 and "--calibration-fraction" in err and message in err, (value, err)
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_a_model_no_better_than_the_mean_is_named_by_train_and_evaluate(tmp_path, capsys):
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(rng.normal(size=(300, 3)), columns=["a", "b", "c"]).assign(y=rng.normal(5e5, 1e5, 300))
    frame.to_csv(tmp_path / "noise.csv", index=False)  # the target is independent of the features
    assert main(["train", "--data", str(tmp_path / "noise.csv"), "--target", "y", "--epochs", "15",
                 "--hidden", "8", "--quiet", "--out", str(tmp_path / "b")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("mcdropout train: warning: the model is no better than"
                                                         " predicting the training mean: held-out R^2")
    recorded = load_bundle(tmp_path / "b", device="cpu").manifest.metrics["baseline"]
    assert recorded["r2"] <= 0.05 and recorded["warning"] in warnings[0]
    assert main(["evaluate", str(tmp_path / "b")]) == 0
    assert f"mcdropout evaluate: warning: {recorded['warning']}" in capsys.readouterr().err.splitlines()


def test_baseline_comparison_is_r2_against_the_training_mean_and_the_majority_class():
    y_train = np.array([[1.0], [3.0]])  # training mean 2
    y_test = np.array([[0.0], [4.0]])  # the mean's squared errors: 4 and 4
    split = datasets.Split(np.zeros((2, 1)), y_train, np.zeros((0, 1)), y_train[:0], np.zeros((2, 1)), y_test)
    good = compare("regression", split, {"mc": {"rmse": 1.0}})  # R^2 = 1 - 1/4
    assert good["r2"] == pytest.approx(0.75) and good["constant_rmse"] == pytest.approx(2.0) and "warning" not in good
    assert "R^2 0.000 <= 0.05" in compare("regression", split, {"mc": {"rmse": 2.0}})["warning"]
    labels = datasets.Split(np.zeros((4, 1)), np.array([0, 1, 1, 1]), np.zeros((0, 1)), np.array([], dtype=int),
                            np.zeros((4, 1)), np.array([1, 1, 1, 0]))
    assert compare("classification", labels, {"mc": {"accuracy": 0.75}})["warning"].endswith("0.750 <= 0.750 on 4"
                                                                                               " test rows")
    better = compare("classification", labels, {"mc": {"accuracy": 1.0}})
    assert better["majority_class_accuracy"] == 0.75 and "warning" not in better


def test_early_stopping_keeps_the_best_epoch_and_retraining_reproduces_it():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(2, 96, 2)).astype(np.float32))
    y = torch.sin(2 * x[..., :1]) + 0.3 * torch.from_numpy(rng.normal(size=(2, 96, 1)).astype(np.float32))
    valid = (x[:, 64:], y[:, 64:])
    options = dict(hidden=[32], dropout=[0.05, 0.3], weight_decay=[1e-5, 1e-5], epochs=300, batch_size=16, lr=1e-2,
                   seed=4, quiet=True)
    stopped = stacked.train(x[:, :64], y[:, :64], validation=valid, patience=10, **options)
    epochs = stopped.epochs.tolist()
    assert all(1 <= e < 300 for e in epochs)
    # the validation pass draws no random numbers: the same run told to stop at those epochs is the same network
    again = stacked.train(x[:, :64], y[:, :64], stop_at=epochs, **options)
    for a, b in zip(stopped.weights + stopped.biases, again.weights + again.biases):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="stop_at"):
        stacked.train(x, y, stop_at=[0, 5], **options)


def test_evaluate_and_score_run_a_bundles_own_code_only_when_trusted(tmp_path, capsys, monkeypatch):
    import json

    _table(200).to_csv(tmp_path / "t.csv", index=False)
    path, _ = train_from_table(tmp_path / "t.csv", target="y", epochs=5, hidden=(8,), out=tmp_path / "own", quiet=True)
    (path / "model.py").write_text("from mcdropout.bundle import architectures\n\n\n"
                                   "def Net(**config):\n    return architectures.build('mlp', config)\n")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["architecture"]["name"] = "model.py:Net"
    (path / "manifest.json").write_text(json.dumps(manifest))
    _table(40, seed=5)[["a", "b", "c"]].to_csv(tmp_path / "rows.csv", index=False)
    score = ["score", str(path), str(tmp_path / "rows.csv"), str(tmp_path / "out.csv"), "--quiet", "--overwrite"]
    monkeypatch.delenv("MCD_TRUST_BUNDLE_CODE", raising=False)
    for command, answer in ((["evaluate", str(path)], "rmse:"), (score, "out.csv: 40 rows")):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "model.py" in err and "--trust-bundle-code" in err, err
        assert main([*command, "--trust-bundle-code"]) == 0
        assert answer in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "out.csv")) == 40
    monkeypatch.setenv("MCD_TRUST_BUNDLE_CODE", "1")  # the server's setting works too
    assert main(score) == 0


def test_recipe_and_table_options_do_not_mix_and_a_text_target_names_the_task_option(tmp_path, capsys):
    assert main(["train", "diabetes", "--test-fraction", "0.3", "--dropout", "0.2", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "--dropout, --test-fraction: for training on your own table (--data)" in err
    assert not (tmp_path / "d").exists()
    pd.DataFrame({"a": np.arange(60.0), "kind": ["cat", "dog"] * 30}).to_csv(tmp_path / "t.csv", index=False)
    assert main(["train", "--data", str(tmp_path / "t.csv"), "--target", "kind", "--out", str(tmp_path / "b")]) == 2
    assert "holds text, not numbers; to train a classifier on it give --task classification" in \
        capsys.readouterr().err
