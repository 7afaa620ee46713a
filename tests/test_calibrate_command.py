"""`mcdropout calibrate`: fits on a user's table, rewrites the manifest atomically, and the bundle then serves it."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest

from mcdropout._calibrate import write_manifest
from mcdropout.bundle import Bundle, load_bundle, read_manifest
from mcdropout.cli import main
from tests.conftest import MODELS

ROWS = 300


@pytest.fixture(scope="module")
def regression_bundle(tmp_path_factory):
    """The shipped diabetes bundle and a table of rows from its own generating model (its means plus noise)."""
    folder = tmp_path_factory.mktemp("cal") / "diabetes"
    shutil.copytree(MODELS / "diabetes", folder)
    bundle = load_bundle(folder, device="cpu")
    rng = np.random.default_rng(0)
    x = rng.normal(scale=0.05, size=(ROWS, 10))
    prediction = bundle.predict(x, samples=20, seed=0)
    y = prediction.mean.numpy()[:, 0] + 2.0 * prediction.std.numpy()[:, 0] * rng.standard_normal(ROWS)
    names = bundle.manifest.feature_names
    table = pa.table({**{n: x[:, i] for i, n in enumerate(names)}, "disease_progression": y})
    pa_csv.write_csv(table, folder.parent / "calibration.csv")
    return folder, folder.parent / "calibration.csv"


def test_calibrate_writes_a_regression_calibration(regression_bundle, capsys):
    folder, table = regression_bundle
    before = (folder / "weights.safetensors").read_bytes()
    assert read_manifest(folder).calibration.source.startswith("the calibration part")  # as shipped
    assert main(["calibrate", str(folder), "--data", str(table), "--target", "disease_progression",
                 "--samples", "20", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "sigma_scaling, conformal" in out and "conformal q at 90%" in out
    manifest = read_manifest(folder)
    assert manifest.calibration.rows == ROWS and manifest.calibration.source.startswith("calibration.csv")
    # The targets' noise has twice the predictive std: sigma-scaling finds a factor near 2 (sd ~ 2 / sqrt(2 x 300)).
    assert manifest.calibration.sigma_scale[0] == pytest.approx(2.0, abs=0.4)
    assert (folder / "weights.safetensors").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "weights.safetensors"]
    data = json.loads((folder / "manifest.json").read_text())
    assert data["calibration"]["methods"] == ["sigma_scaling", "conformal"]
    # Served std is the scaled one; calibrating again fits on the raw numbers, not on the scaled ones.
    raw = _uncalibrated("diabetes").predict(np.zeros((2, 10)), samples=20, seed=1)
    scaled = load_bundle(folder, device="cpu").predict(np.zeros((2, 10)), samples=20, seed=1)
    np.testing.assert_allclose(scaled.std.numpy(), raw.std.numpy() * manifest.calibration.sigma_scale[0])
    assert main(["calibrate", str(folder), "--data", str(table), "--target", "disease_progression",
                 "--samples", "20", "--quiet"]) == 0
    assert read_manifest(folder).calibration.sigma_scale == pytest.approx(manifest.calibration.sigma_scale)


def test_calibrate_refuses_bad_arguments_by_name(regression_bundle, capsys):
    folder, table = regression_bundle
    assert main(["calibrate", str(folder), "--data", str(table), "--target", "nope", "--quiet"]) == 2
    assert "no target column 'nope'" in capsys.readouterr().err
    assert main(["calibrate", str(folder), "--data", str(table), "--quiet"]) == 2
    assert "--target COLUMN or as --labels FILE" in capsys.readouterr().err


def test_calibrate_an_image_classifier_from_npy_and_a_labels_file(tmp_path, capsys):
    folder = tmp_path / "digits"
    shutil.copytree(MODELS / "digits", folder)
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 16, size=(120, 64))
    labels = rng.integers(0, 10, size=120)  # labels unrelated to the images: the fitted model must soften
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", labels)
    assert main(["calibrate", str(folder), "--data", str(tmp_path / "x.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--samples", "8", "--quiet"]) == 0
    calibration = read_manifest(folder).calibration
    assert calibration.methods == ["temperature", "conformal_sets", "selective"]
    assert calibration.temperature > 1.0  # random labels: softer probabilities fit better
    bundle = load_bundle(folder, device="cpu")
    entropy_raw = _uncalibrated("digits").predict(x[:8].reshape(8, 1, 8, 8), samples=8, seed=0).entropy
    own_raw = bundle.predict(x[:8].reshape(8, 1, 8, 8), samples=8, seed=0, calibrated=False).entropy
    assert np.array_equal(own_raw.numpy(), entropy_raw.numpy())  # calibrated=False: the raw numbers
    entropy = bundle.predict(x[:8].reshape(8, 1, 8, 8), samples=8, seed=0).entropy
    assert (entropy > entropy_raw).all()


def test_a_damaged_calibration_is_a_bundle_error_naming_the_field(regression_bundle):
    from mcdropout.bundle import BundleError, Manifest

    folder, table = regression_bundle
    if read_manifest(folder).calibration is None:
        main(["calibrate", str(folder), "--data", str(table), "--target", "disease_progression", "--samples", "20",
              "--quiet"])
    data = read_manifest(folder).to_dict()
    data["calibration"]["sigma_scale"] = [1.0, 2.0]
    with pytest.raises(BundleError, match=r"'calibration.sigma_scale': 2 values for 1 outputs"):
        Manifest.from_dict(data)
    data["calibration"] = {"task": "regression"}
    with pytest.raises(BundleError, match="field 'calibration': cannot be read"):
        Manifest.from_dict(data)


def test_calibrate_on_the_calibration_rows_of_the_training_split(tmp_path):
    """A bundle of `mcdropout train` is calibrated on its own split's calibration rows, re-made from the manifest."""
    import subprocess
    import sys

    from mcdropout.training._evaluation import evaluate, split_of

    folder = tmp_path / "breast-cancer"
    shutil.copytree(MODELS / "breast-cancer", folder)
    shipped = read_manifest(folder)
    write_manifest(folder, dataclasses.replace(shipped, calibration=None, metrics=shipped.metrics["uncalibrated"]))
    done = subprocess.run([sys.executable, "-m", "mcdropout.cli", "calibrate", str(folder), "--split-rows",
                           "--samples", "20"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    bundle = load_bundle(folder, device="cpu")
    rows = len(split_of(bundle).y_calibration)
    assert rows == round(0.15 * 569)
    assert bundle.manifest.calibration.source == f"the calibration part of the training split ({rows} rows, never" \
                                                 " trained on)"
    # the recorded test metrics are measured again as the bundle now answers, the raw ones kept beside them
    metrics = bundle.manifest.metrics
    assert metrics["uncalibrated"] == shipped.metrics["uncalibrated"]
    assert metrics["baseline"] == shipped.metrics["baseline"]  # re-measured, not dropped
    assert metrics["mc"] == pytest.approx(evaluate(bundle, seed=metrics["seed"])["mc"], rel=1e-9)
    refused = subprocess.run([sys.executable, "-m", "mcdropout.cli", "calibrate", str(folder), "--validation-rows",
                              "--target", "y"], capture_output=True, text=True, timeout=300)  # the old name
    assert refused.returncode == 2 and "--split-rows takes the split's own targets" in refused.stderr


def _uncalibrated(name: str) -> Bundle:
    """A shipped bundle with its calibration removed: the raw MC numbers."""
    shipped = load_bundle(MODELS / name, device="cpu")
    return Bundle(dataclasses.replace(shipped.manifest, calibration=None), shipped.model, device="cpu")


def test_labels_files_may_hold_class_names_and_too_few_rows_are_refused(tmp_path, capsys):
    from mcdropout.training import split_of

    folder = tmp_path / "breast-cancer"
    shutil.copytree(MODELS / "breast-cancer", folder)
    split = split_of(load_bundle(folder, device="cpu"))
    names = read_manifest(folder).class_names
    x, labels = split.x_calibration, [names[i] for i in split.y_calibration]
    features = read_manifest(folder).feature_names
    pa_csv.write_csv(pa.table({n: x[:, i] for i, n in enumerate(features)}), tmp_path / "x.csv")
    pa_csv.write_csv(pa.table({"diagnosis": labels}), tmp_path / "names.csv")
    np.save(tmp_path / "names.npy", np.array(labels))
    first = None
    for file in ("names.csv", "names.npy"):
        assert main(["calibrate", str(folder), "--data", str(tmp_path / "x.csv"), "--labels", str(tmp_path / file),
                     "--samples", "8", "--quiet"]) == 0, capsys.readouterr().err
        fitted = read_manifest(folder).calibration
        assert fitted.rows == len(labels)
        first = first or fitted.sets
        assert fitted.sets == first  # the same labels, read from names in either file

    before = (folder / "manifest.json").read_bytes()
    pa_csv.write_csv(pa.table({n: x[:19, i] for i, n in enumerate(features)}), tmp_path / "few.csv")
    np.save(tmp_path / "few.npy", np.array(labels[:19]))
    assert main(["calibrate", str(folder), "--data", str(tmp_path / "few.csv"), "--labels", str(tmp_path / "few.npy"),
                 "--quiet"]) == 2
    assert "19 rows; calibration needs at least 20" in capsys.readouterr().err
    assert (folder / "manifest.json").read_bytes() == before
