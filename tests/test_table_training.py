"""`mcdropout train --data`: bundles from CSV, Parquet and text tables; clear errors for bad tables."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mcdropout import load_bundle
from mcdropout.training._evaluation import evaluate
from mcdropout.training._own_table import train_from_table

from .conftest import ROOT


def _train(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mcdropout.cli", "train", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def _linear_table(rows: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 3)), columns=["a", "b", "c"])
    frame["y"] = 3 * frame.a - 2 * frame.b + rng.normal(0, 0.5, rows) + 10
    return frame


def test_regression_with_grids_writes_a_bundle_the_service_can_serve(tmp_path):
    source = tmp_path / "linear.csv"
    _linear_table().to_csv(source, index=False)
    done = _train("--data", source, "--target", "y", "--dropout-grid", "0.01,0.1", "--tau-grid", "1", "4",
                  "--epochs", 60, "--hidden", "32", "--out", tmp_path / "bundle")
    assert done.returncode == 0, done.stderr
    assert "grid search (4 points x 1 sets)" in done.stderr and "final training" in done.stderr  # progress shown
    bundle = load_bundle(tmp_path / "bundle", device="cpu")
    manifest = bundle.manifest
    assert manifest.name == "bundle" and manifest.feature_names == ["a", "b", "c"] and manifest.output_names == ["y"]
    assert manifest.config["hidden"] == [32] and manifest.config["input_dropout"] is True
    grid = manifest.training["selection"]["grid"]
    assert len(grid) == 4 and {(g["dropout"], g["tau"]) for g in grid} == {(0.01, 1), (0.01, 4), (0.1, 1), (0.1, 4)}
    best = max(grid, key=lambda g: g["log_likelihood"])
    assert (manifest.dropout, manifest.training["selection"]["chosen"]["tau"]) == (best["dropout"], best["tau"])
    tau_user = manifest.tau / np.mean(manifest.target_standardisation.std) ** 2
    assert tau_user == pytest.approx(best["tau"])
    assert manifest.metrics["mc"]["rmse"] < 1.5 and manifest.metrics["test_rows"] == 30
    again = evaluate(bundle)  # `mcdropout evaluate`: re-reads the recorded table and its test part
    assert again["mc"]["rmse"] == pytest.approx(manifest.metrics["mc"]["rmse"], rel=1e-6)
    pred = bundle.predict(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), samples=200, seed=0)
    assert pred.mean[0, 0].item() == pytest.approx(10, abs=1.0) and pred.mean[1, 0].item() == pytest.approx(13, abs=1.0)


def test_fitted_tau_matches_the_noise(tmp_path):
    """No tau given: tau is fitted on the validation rows; the noise std is 0.5, so tau is near 4."""
    source = tmp_path / "linear.parquet"
    _linear_table(600, seed=1).to_parquet(source)
    path, metrics = train_from_table(source, target="y", epochs=150, hidden=(32,), out=tmp_path / "b", quiet=True)
    manifest = load_bundle(path, device="cpu").manifest
    tau = manifest.training["selection"]["grid"][0]["tau"]
    assert 2 < tau < 6
    assert 0.85 < metrics["mc"]["coverage_95"] <= 1.0


def test_classification_from_parquet_with_string_labels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    labels = np.where(x[:, 0] + x[:, 1] > 0, "pos", "neg")
    source = tmp_path / "points.parquet"
    pd.DataFrame({"u": x[:, 0], "v": x[:, 1], "kind": labels}).to_parquet(source)
    path, metrics = train_from_table(source, target="kind", task="classification", dropouts=(0.05, 0.2),
                                     epochs=60, hidden=(16,), out=tmp_path / "b", quiet=True)
    manifest = load_bundle(path, device="cpu").manifest
    assert manifest.class_names == ["neg", "pos"] and manifest.tau is None
    assert metrics["mc"]["accuracy"] > 0.9


def test_whitespace_text_columns_are_numbered(tmp_path):
    table = _linear_table(200)
    source = tmp_path / "data.txt"
    np.savetxt(source, table[["a", "b", "c", "y"]].to_numpy())
    path, _ = train_from_table(source, target="3", epochs=20, hidden=(8,), out=tmp_path / "b", quiet=True)
    assert load_bundle(path, device="cpu").manifest.feature_names == ["0", "1", "2"]


def test_bad_tables_get_clear_errors(tmp_path):
    table = _linear_table(100)
    cases = {
        "missing": (table, ["--target", "nope"], "no target column 'nope'"),
        "text": (table.assign(name="x"), ["--target", "y"], "column(s) 'name' are not numeric"),
        "constant": (table.assign(k=1.0), ["--target", "y"], "constant column(s) 'k'"),
        "nan": (table.assign(a=[np.nan if i in (7, 42) else 1.0 + i for i in range(100)]), ["--target", "y"],
                "rows numbered from 0: 7, 42"),
        "few": (table.head(15), ["--target", "y"], "at least 20 are needed"),
        "tau": (table, ["--target", "y", "--task", "classification", "--tau", "2"], "regression only"),
    }
    for name, (frame, args, message) in cases.items():
        source = tmp_path / f"{name}.csv"
        frame.to_csv(source, index=False)
        done = _train("--data", source, *args, "--epochs", 2, "--out", tmp_path / name)
        assert done.returncode == 2, (name, done.stderr)
        assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, (name, done.stderr)
        assert not (tmp_path / name).exists()
