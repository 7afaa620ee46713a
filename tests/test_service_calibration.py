"""Calibrated answers over HTTP on a real server: conformal intervals, prediction sets, abstention, their 4xx."""

from __future__ import annotations

import dataclasses
import math
import shutil

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pytest
from scipy import stats

from mcdropout._calibrate import calibrate, write_manifest
from mcdropout.bundle import read_manifest
from mcdropout.bundle import load_bundle
from mcdropout.training import split_of
from tests.conftest import MODELS, run_server

DIABETES = split_of(load_bundle(MODELS / "diabetes", device="cpu"))  # the shipped bundles' own splits
DIGITS = split_of(load_bundle(MODELS / "digits", device="cpu"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """diabetes and digits calibrated again here, from files of their calibration rows (never trained on);
    breast-cancer with its calibration removed: an uncalibrated bundle."""
    root = tmp_path_factory.mktemp("calibrated")
    for name in ("diabetes", "digits", "breast-cancer"):
        shutil.copytree(MODELS / name, root / "models" / name)
    uncalibrated = read_manifest(root / "models" / "breast-cancer")
    write_manifest(root / "models" / "breast-cancer", dataclasses.replace(uncalibrated, calibration=None))
    names = read_manifest(root / "models" / "diabetes").feature_names
    table = pa.table({**{n: DIABETES.x_calibration[:, i] for i, n in enumerate(names)},
                      "disease_progression": DIABETES.y_calibration[:, 0]})
    pa_csv.write_csv(table, root / "diabetes.csv")
    calibrate(root / "models" / "diabetes", root / "diabetes.csv", "disease_progression", samples=20, quiet=True)
    np.save(root / "x.npy", DIGITS.x_calibration.reshape(len(DIGITS.x_calibration), -1))
    np.save(root / "y.npy", DIGITS.y_calibration)
    calibrate(root / "models" / "digits", root / "x.npy", labels=root / "y.npy", samples=20, quiet=True)
    return root


@pytest.fixture(scope="module")
def http(folder):
    with run_server(folder, models_dir=str(folder / "models")) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def _predict(http, name, **body):
    return http.post(f"/v1/models/{name}/predict", json=body)


def test_model_info_shows_the_calibration(http):
    info = http.get("/v1/models/diabetes").json()["calibration"]
    assert info["methods"] == ["sigma_scaling", "conformal"] and info["rows"] == len(DIABETES.x_calibration)
    assert info["source"].startswith("diabetes.csv") and "scores" not in info
    assert http.get("/v1/models/breast-cancer").json()["calibration"] is None


def test_conformal_interval_by_default_and_gaussian_on_request(http, folder):
    x = DIABETES.x_test[:5].tolist()
    conformal = _predict(http, "diabetes", inputs=x, seed=1, interval=0.9).json()
    assert conformal["interval"]["method"] == "conformal"
    q = read_manifest(folder / "models" / "diabetes").calibration.conformal.quantiles(0.9)[0]
    mean, std = np.array(conformal["mean"]), np.array(conformal["std"])
    np.testing.assert_allclose(conformal["interval"]["lower"], mean - q * std, rtol=1e-9)
    gaussian = _predict(http, "diabetes", inputs=x, seed=1, interval=0.9, interval_method="gaussian").json()
    assert gaussian["interval"]["method"] == "gaussian"
    np.testing.assert_allclose(gaussian["interval"]["upper"], mean + stats.norm.ppf(0.95) * std, rtol=1e-9)
    assert "abstain" not in gaussian


def test_regression_abstains_on_max_std_and_max_interval_width(http):
    body = _predict(http, "diabetes", inputs=DIABETES.x_test[:20].tolist(), seed=1).json()
    std = np.array(body["std"])[:, 0]
    width = np.array(body["interval"]["upper"])[:, 0] - np.array(body["interval"]["lower"])[:, 0]
    limit = float(np.median(std))
    asked = _predict(http, "diabetes", inputs=DIABETES.x_test[:20].tolist(), seed=1, max_std=limit).json()
    assert asked["abstain"] == (std > limit).tolist()
    asked = _predict(http, "diabetes", inputs=DIABETES.x_test[:20].tolist(), seed=1,
                     max_interval_width=float(np.median(width))).json()
    assert asked["abstain"] == (width > np.median(width)).tolist()


def test_prediction_sets_and_abstention_for_a_classifier(http, folder):
    x = DIGITS.x_test[:40].tolist()
    body = _predict(http, "digits", inputs=x, seed=2, set_level=0.9, set_method="aps", max_risk=0.2).json()
    calibration = read_manifest(folder / "models" / "digits").calibration
    probs = np.array(body["probs"])
    expected = calibration.sets.predict_sets(probs, 0.9, "aps")
    assert body["prediction_set"] == [np.flatnonzero(row).tolist() for row in expected]
    assert body["prediction_set_names"][0] == [body["classes"][i] for i in body["prediction_set"][0]]
    assert body["set_size"] == expected.sum(axis=1).tolist() and body["set_level"] == 0.9
    threshold = calibration.selective.threshold(0.2)
    assert body["abstain"] == (1 - probs.max(axis=1) > threshold).tolist()
    plain = _predict(http, "digits", inputs=x, seed=2).json()
    assert "prediction_set" not in plain and "abstain" not in plain
    assert plain["probs"] == body["probs"]  # the temperature is the bundle's, asked or not
    metrics = http.get("/metrics").text
    assert 'mcdropout_prediction_set_size_count{model="digits"} 40.0' in metrics
    abstained = sum(body["abstain"])
    if abstained:
        assert f'mcdropout_abstentions_total{{model="digits"}} {float(abstained)}' in metrics


@pytest.mark.parametrize(("name", "body", "field", "words"), [
    ("digits", {"set_level": 1.0}, "set_level", "must be a number in (0, 1), got 1.0"),
    ("digits", {"max_risk": 0}, "max_risk", "must be a number in (0, 1), got 0"),
    ("diabetes", {"set_level": 0.9}, "set_level", "applies to classifiers"),
    ("diabetes", {"max_risk": 0.1}, "max_risk", "applies to classifiers"),
    ("digits", {"max_std": 1.0}, "max_std", "applies to regression models"),
    ("breast-cancer", {"set_level": 0.9}, "set_level", "not calibrated"),
    ("breast-cancer", {"max_risk": 0.1}, "max_risk", "not calibrated"),
    ("digits", {"set_level": 0.999}, "set_level", "too high for the 270 calibration rows"),
    ("diabetes", {"interval": 0.99}, "interval", "too high for the 66 calibration rows"),
])
def test_bad_calibration_options_are_422_naming_the_field(http, name, body, field, words):
    response = _predict(http, name, inputs=[[0.0] * 10] if name == "diabetes" else
                        ([[0.0] * 30] if name == "breast-cancer" else DIGITS.x_test[:1].tolist()), **body)
    assert response.status_code == 422, response.text
    assert response.json()["field"] == field and words in response.json()["error"]


def test_v2_parameters_outputs_and_metadata(http):
    metadata = http.get("/v2/models/digits").json()
    names = [o["name"] for o in metadata["outputs"]]
    assert names[-3:] == ["prediction_set", "set_size", "abstain"]
    assert metadata["parameters"]["calibration"]["methods"] == ["temperature", "conformal_sets", "selective"]
    assert "prediction_set" not in [o["name"] for o in http.get("/v2/models/breast-cancer").json()["outputs"]]
    x = np.asarray(DIGITS.x_test[:3], dtype=np.float32)
    request = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
               "parameters": {"seed": 2, "set_level": 0.9, "max_risk": 0.2}}
    answer = http.post("/v2/models/digits/infer", json=request).json()
    outputs = {o["name"]: o for o in answer["outputs"]}
    native = _predict(http, "digits", inputs=x.tolist(), seed=2, set_level=0.9, max_risk=0.2).json()
    assert outputs["prediction_set"]["datatype"] == "BOOL" and outputs["prediction_set"]["shape"] == [3, 10]
    members = np.array(outputs["prediction_set"]["data"]).reshape(3, 10)
    assert [np.flatnonzero(row).tolist() for row in members] == native["prediction_set"]
    assert outputs["abstain"]["data"] == native["abstain"] and outputs["set_size"]["data"] == native["set_size"]
    request["parameters"] = {"max_risk": 1.5}
    bad = http.post("/v2/models/digits/infer", json=request)
    assert bad.status_code == 422 and "parameters.max_risk: must be a number in (0, 1)" in bad.json()["error"]
    plain = http.post("/v2/models/digits/infer", json={**request, "parameters": {"seed": 2}}).json()
    assert "prediction_set" not in {o["name"] for o in plain["outputs"]}


def test_uncalibrated_answers_are_as_before(http):
    body = _predict(http, "breast-cancer", inputs=[[0.0] * 30], seed=0).json()
    assert set(body) >= {"probs", "entropy", "mutual_information"} and "abstain" not in body
    assert math.isclose(sum(body["probs"][0]), 1.0)


def test_client_results_and_to_pandas(http):
    from mcdropout.client import Client

    with Client(str(http.base_url)) as client:
        assert client.model("digits").calibration["methods"][0] == "temperature"
        result = client.predict("digits", DIGITS.x_test[:6], seed=2, set_level=0.9, max_risk=0.2)
        frame = result.to_pandas()
        native = _predict(http, "digits", inputs=DIGITS.x_test[:6].tolist(), seed=2, set_level=0.9,
                          max_risk=0.2).json()
        assert result.set_members() == native["prediction_set"] and frame["abstain"].tolist() == native["abstain"]
        assert frame["set_size"].tolist() == native["set_size"] and "in_set_0" in frame
        regression = client.predict("diabetes", DIABETES.x_test[:3], seed=1, max_std=1e-9)
        assert regression.interval_method == "conformal" and regression.abstain.all()


def test_score_writes_calibration_columns(http, folder, tmp_path, capsys):
    import pyarrow.parquet as pq

    from mcdropout.cli import main

    np.save(tmp_path / "rows.npy", DIGITS.x_test[:25].reshape(25, -1))
    out = tmp_path / "scored.parquet"
    assert main(["score", str(folder / "models" / "digits"), str(tmp_path / "rows.npy"), str(out), "--samples", "20",
                 "--seed", "2", "--set-level", "0.9", "--max-risk", "0.2", "--quiet"]) == 0
    table = pq.read_table(out).to_pandas()
    native = _predict(http, "digits", inputs=DIGITS.x_test[:25].tolist(), samples=20, seed=2, set_level=0.9,
                      max_risk=0.2).json()
    assert table["set_size"].tolist() == native["set_size"] and table["abstain"].tolist() == native["abstain"]
    bad = main(["score", str(folder / "models" / "breast-cancer"), str(tmp_path / "rows.npy"),
                str(tmp_path / "bad.parquet"), "--max-risk", "0.1", "--quiet"])
    assert bad == 2 and not (tmp_path / "bad.parquet").exists()
    assert "max_risk: abstention at a risk needs a calibrated bundle" in capsys.readouterr().err
