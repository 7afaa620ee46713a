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


def test_a_table_in_dollars_evaluates_from_another_folder_and_a_gone_or_changed_table_is_named(
        tmp_path, monkeypatch, capsys):
    """The user's path: `train --data ../data/houses.csv` in one folder, `evaluate` in another. The manifest records
    the table's absolute path and BLAKE2b; the report's columns stay apart for a target in dollars; a second
    `train --out` onto the bundle needs --overwrite; a table edited or removed since is named, not mis-read."""
    from mcdropout.cli import main
    from mcdropout.tables import file_blake2b

    data, work, elsewhere = (tmp_path / name for name in ("data", "work", "elsewhere"))
    for folder in (data, work, elsewhere):
        folder.mkdir()
    houses = data / "houses.csv"
    frame = _linear_table(200)
    frame["y"] = (frame.y * 25_000).round(2)  # prices: about 250,000, noise 12,500
    frame.to_csv(houses, index=False)
    monkeypatch.chdir(work)
    train = ["train", "--data", "../data/houses.csv", "--target", "y", "--epochs", "20", "--hidden", "8", "--quiet",
             "--out", "bundle"]
    assert main(train) == 0
    recorded = load_bundle(work / "bundle", device="cpu").manifest.training["data"]
    assert recorded["path"] == str(houses.resolve()) and recorded["blake2b"] == file_blake2b(houses)

    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["evaluate", str(work / "bundle"), "--samples", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["before", "after"])
    rmse = lines[header + 1]
    label, before, after = rmse.split()  # three columns: the numbers do not run together
    assert label == "RMSE" and float(before) == float(after) > 1e4 and "  " in rmse.split("RMSE", 1)[1].strip()
    for line in lines[header:header + 10]:  # every value column ends where its heading does
        assert len(line) == len(lines[header]), (lines[header], line)
    assert float(next(line for line in lines if line.strip().startswith("rmse:")).split()[-1]) > 1e4  # no exponent

    # a second train onto the bundle: refused before training, one line naming --overwrite; the bundle kept
    manifest = (work / "bundle" / "manifest.json").read_bytes()
    monkeypatch.chdir(work)
    capsys.readouterr()
    for command in (train, ["train", "heteroscedastic-1d", "--out", "bundle"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "bundle exists; give --overwrite to replace it" in err, err
        assert (work / "bundle" / "manifest.json").read_bytes() == manifest

    houses.write_text(houses.read_text().replace(f"{frame.y[5]}", f"{frame.y[5] + 1}", 1))  # same rows, one price
    assert main(["evaluate", str(work / "bundle"), "--samples", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"the training table {houses.resolve()} has changed since training (BLAKE2b" in err, err
    houses.unlink()
    assert main(["evaluate", str(work / "bundle"), "--samples", "8"]) == 2
    assert f"the training table {houses.resolve()} is missing" in capsys.readouterr().err

    frame.to_csv(houses, index=False)  # back as trained: --overwrite replaces the bundle
    assert main([*train, "--overwrite", "--seed", "1"]) == 0
    assert load_bundle(work / "bundle", device="cpu").manifest.training["seed"] == 1


def test_a_bundle_recorded_before_paths_were_absolute_still_evaluates(tmp_path, monkeypatch):
    """Older manifests: the path as typed (read from the current folder) and no hash."""
    import json

    source = tmp_path / "t.csv"
    _linear_table(200).to_csv(source, index=False)
    path, metrics = train_from_table(source, target="y", epochs=20, hidden=(8,), out=tmp_path / "b", quiet=True)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["training"]["data"]["path"] = "t.csv"
    del manifest["training"]["data"]["blake2b"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    assert evaluate(load_bundle(path, device="cpu"))["mc"]["rmse"] == pytest.approx(metrics["mc"]["rmse"], rel=1e-6)
    monkeypatch.chdir(path)
    with pytest.raises(ValueError, match=r"the training table .*t.csv is missing \(recorded as 't.csv', relative"):
        evaluate(load_bundle(path, device="cpu"))
