"""The native JSON API against a real server: every endpoint and every bad input."""


import numpy as np
import pytest

import mcdropout as mcd
from mcdropout.training import datasets

from .conftest import MODELS, without_ids

DIABETES_ROWS = datasets.diabetes(0).x_test[:5].tolist()
DIGITS_ROWS = datasets.digits(0).x_test[:3].tolist()


def test_list_and_describe_models(http):
    listed = http.get("/v1/models").json()["models"]
    assert [m["name"] for m in listed] == sorted(p.name for p in MODELS.iterdir() if p.is_dir())
    assert all(m["status"] == "ready" for m in listed)
    info = http.get("/v1/models/diabetes").json()
    assert info["task"] == "regression" and info["input_shape"] == [10]
    assert info["feature_names"][:3] == ["age", "sex", "bmi"] and info["outputs"] == ["disease_progression"]
    assert info["default_samples"] == 100 and info["max_samples"] == 1000 and info["max_rows"] == 1000
    assert info["metrics"]["mc"]["coverage_95"] > 0.9 and info["training"]["data"]["name"] == "diabetes"
    assert http.get("/v1/models/digits").json()["classes"] == [str(i) for i in range(10)]


def test_regression_answer_equals_the_library(http):
    answer = http.post("/v1/models/diabetes/predict",
                       json={"inputs": DIABETES_ROWS, "samples": 64, "seed": 7, "interval": 0.9}).json()
    assert (answer["model"], answer["version"], answer["samples"], answer["seed"]) == ("diabetes", "1.0.0", 64, 7)
    assert answer["samples_used"] == [64] * 5
    bundle = mcd.load_bundle(MODELS / "diabetes", device="cpu")
    local = bundle.predict(np.array(DIABETES_ROWS), samples=64, seed=7)
    assert np.allclose(answer["mean"], local.mean.numpy(), rtol=1e-6)
    assert np.allclose(answer["epistemic_variance"], local.epistemic.numpy(), rtol=1e-5)
    assert np.allclose(answer["variance"], np.add(answer["epistemic_variance"], answer["aleatoric_variance"]))
    # the shipped bundle is calibrated: its interval is conformal, mean +- q std
    half = bundle.manifest.calibration.conformal.quantiles(0.9) * local.std.numpy()
    lower, upper = local.mean - half, local.mean + half
    assert answer["interval"] == {**answer["interval"], "level": 0.9, "method": "conformal"}
    assert np.allclose(answer["interval"]["lower"], lower.numpy(), rtol=1e-5)
    assert np.allclose(answer["interval"]["upper"], upper.numpy(), rtol=1e-5)


def test_instances_by_feature_name(http):
    names = http.get("/v1/models/diabetes").json()["feature_names"]
    instances = [dict(zip(names, row)) for row in DIABETES_ROWS[:2]]
    by_name = http.post("/v1/models/diabetes/predict", json={"instances": instances, "seed": 1}).json()
    by_list = http.post("/v1/models/diabetes/predict", json={"inputs": DIABETES_ROWS[:2], "seed": 1}).json()
    assert by_name["mean"] == by_list["mean"]


def test_classification_answer(http):
    answer = http.post("/v1/models/digits/predict", json={"inputs": DIGITS_ROWS, "samples": 30}).json()
    probs = np.array(answer["probs"])
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1)
    assert answer["label"] == probs.argmax(1).tolist()
    assert answer["class_name"] == [str(label) for label in answer["label"]]
    assert answer["seed"] == 0  # the server's default seed: the same input gets the same answer
    for key in ("entropy", "expected_entropy", "mutual_information", "variation_ratio"):
        assert len(answer[key]) == 3
    assert np.allclose(answer["mutual_information"], np.subtract(answer["entropy"], answer["expected_entropy"]))


def test_auto_samples_and_returned_draws(http):
    auto = http.post("/v1/models/diabetes/predict", json={"inputs": DIABETES_ROWS[:2], "samples": "auto"}).json()
    assert auto["samples"] == "auto" and all(used % 32 == 0 and used >= 32 for used in auto["samples_used"])
    drawn = http.post("/v1/models/diabetes/predict",
                      json={"inputs": DIABETES_ROWS[:2], "samples": 10, "return_samples": True}).json()
    draws = np.array(drawn["draws"])
    assert draws.shape == (2, 10, 1)
    assert np.allclose(draws.mean(axis=1), drawn["mean"], rtol=1e-5)


BAD = [
    ("/v1/models/nope/predict", {"inputs": [[0] * 10]}, 404, "name", "unknown model 'nope'; available:"),
    ("/v1/models/diabetes/predict", {"inputs": [[0] * 9]}, 422, "inputs[0]", "expected 10 values, got 9"),
    ("/v1/models/diabetes/predict", {"inputs": [[0] * 9 + ["a"]]}, 422, "inputs[0][9]", "expected a number, got 'a'"),
    ("/v1/models/diabetes/predict", {"inputs": [[0] * 9 + [True]]}, 422, "inputs[0][9]", "expected a number, got True"),
    ("/v1/models/diabetes/predict", {"inputs": []}, 422, "inputs", "is empty"),
    ("/v1/models/diabetes/predict", {"inputs": [[0] * 10] * 1001}, 422, "inputs", "1001 rows is over the limit of 1000"),
    ("/v1/models/diabetes/predict", {"inputs": [[0] * 10], "samples": 1}, 422, "samples", "from 2 to 1000"),
    ("/v1/models/diabetes/predict", {"inputs": [[0] * 10], "samples": 5000}, 422, "samples", "from 2 to 1000"),
    ("/v1/models/diabetes/predict", {"inputs": [[0] * 10], "samples": "lots"}, 422, "samples", "or 'auto'; got 'lots'"),
    ("/v1/models/diabetes/predict", {"inputs": [[0] * 10], "interval": 1.0}, 422, "interval", "must be a number in (0, 1), got 1.0"),
    ("/v1/models/diabetes/predict", {"inputs": [[0] * 10], "interval": 0}, 422, "interval", "must be a number in (0, 1), got 0"),
    ("/v1/models/diabetes/predict", {"inputs": [[0] * 10], "seed": -1}, 422, "seed", "must be an integer from 0 to 2^63-1; got -1"),
    ("/v1/models/diabetes/predict", {"inputs": [[0] * 10], "colour": "red"}, 422, "colour", "unknown field"),
    ("/v1/models/diabetes/predict", {}, 422, "inputs", "exactly one of 'inputs'"),
    ("/v1/models/diabetes/predict", {"instances": [{"age": 1}]}, 422, "instances[0]", "missing feature(s) 'sex'"),
    ("/v1/models/digits/predict", {"instances": [{"a": 1}]}, 422, "instances", "has no feature names"),
    ("/v1/models/digits/predict", {"inputs": [[[0] * 8] * 8]}, 422, "inputs[0]", "expected 1 value, got 8"),
]


@pytest.mark.parametrize(("path", "body", "status", "field", "message"), BAD, ids=[b[4][:30] for b in BAD])
def test_bad_input_names_the_field(http, path, body, status, field, message):
    answer = http.post(path, json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()
    assert error["field"] == field
    assert message in error["error"]


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(http, literal):
    body = '{"inputs": [[0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, %s, 0, 0, 0, 0, 0, 0]]}' % literal
    answer = http.post("/v1/models/diabetes/predict", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    assert answer.json() == {"error": "inputs[1]: NaN, infinity or a number beyond float32's range (±3.4e38) in row(s) 1", "field": "inputs[1]"}


def test_malformed_json_and_oversized_bodies(http):
    broken = http.post("/v1/models/diabetes/predict", content=b'{"inputs": [[1, 2', headers={"content-type": "application/json"})
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    huge = http.post("/v1/models/diabetes/predict", content=b" " * 10_000_001, headers={"content-type": "application/json"})
    assert huge.status_code == 413 and "over the limit of 10000000 bytes" in huge.json()["error"]


def test_metrics_docs_and_openapi(http):
    http.post("/v1/models/diabetes/predict", json={"inputs": DIABETES_ROWS[:1]})
    text = http.get("/metrics").text
    for name in ("mcdropout_requests_total", "mcdropout_queue_seconds_bucket", "mcdropout_compute_seconds_bucket",
                 "mcdropout_batch_rows_bucket", "mcdropout_queue_depth", "mcdropout_samples_total",
                 'mcdropout_served_uncertainty_bucket{kind="predictive_std"'):
        assert name in text, name
    assert 'model="diabetes"' in text and 'status="200"' in text
    assert http.get("/docs").status_code == 200
    paths = http.get("/openapi.json").json()["paths"]
    assert "/v1/models/{name}/predict" in paths and "/v2/models/{name}/infer" in paths


def test_same_request_same_answer(http):
    body = {"inputs": DIABETES_ROWS[:2], "samples": 40}
    assert without_ids(http.post("/v1/models/diabetes/predict", json=body).json()) == \
        without_ids(http.post("/v1/models/diabetes/predict", json=body).json())
    other = http.post("/v1/models/diabetes/predict", json={**body, "seed": 99}).json()
    assert other["mean"] != http.post("/v1/models/diabetes/predict", json=body).json()["mean"]
