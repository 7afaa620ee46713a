"""Every input either protocol can carry is answered 2xx or 4xx, never 5xx: numbers beyond a dtype's
range, strings and booleans for numbers, huge values echoed in errors; HEAD on GET routes; API keys
that hold no key refuse to start. Against a real server on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ROOT, run_server

ROW = [0.01] * 10  # a diabetes row
BIG = "1" + "0" * 400  # an integer no float holds, written out in the JSON


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with run_server(tmp_path_factory.mktemp("hardening"), reload="false") as server:
        yield server.url


def _v1(url: str, raw: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/models/diabetes/predict", content=raw, headers={"content-type": "application/json"})


@pytest.mark.parametrize("raw, field", [
    ('{"inputs": [[%s, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}' % BIG, "inputs[0][0]"),
    ('{"inputs": [[1e39, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}', "inputs[0]"),  # finite in float64, not in float32
    ('{"inputs": [["1", 0, 0, 0, 0, 0, 0, 0, 0, 0]]}', "inputs[0][0]"),
    ('{"inputs": [[true, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}', "inputs[0][0]"),
    ('{"inputs": [%s], "seed": true}' % ROW, "seed"),
    ('{"inputs": [%s], "seed": "3"}' % ROW, "seed"),
    ('{"inputs": [%s], "return_samples": "yes"}' % ROW, "return_samples"),
    ('{"inputs": [%s], "interval": "0.9"}' % ROW, "interval"),
    ('{"inputs": [%s], "samples": "%s"}' % (ROW, "x" * 1_000_000), "samples"),
])
def test_v1_bad_numbers_are_422_naming_the_field(url, raw, field):
    response = _v1(url, raw)
    assert response.status_code == 422, response.text[:300]
    body = response.json()
    assert body["field"].startswith(field) and len(response.content) < 2000


def test_v1_instances_beyond_float_are_422(url):
    names = httpx.get(f"{url}/v1/models/diabetes").json()["feature_names"]
    row = ", ".join(f'"{name}": {BIG if k == 0 else 0}' for k, name in enumerate(names))
    response = _v1(url, '{"instances": [{%s}]}' % row)
    assert response.status_code == 422 and response.json()["field"] == f"instances[0].{names[0]}"


@pytest.mark.parametrize("datatype, value", [("INT8", "1000"), ("UINT8", "-1"), ("INT64", str(2**70)),
                                             ("INT32", "1.5"), ("FP32", BIG), ("FP32", "1e39"), ("FP16", "70000"),
                                             ("FP32", '"1"'), ("FP32", "true"), ("FP64", "null")])
def test_v2_data_outside_its_datatype_is_400(url, datatype, value):
    raw = ('{"inputs": [{"name": "input", "shape": [1, 10], "datatype": "%s", "data": [%s, 0, 0, 0, 0, 0, 0, 0, 0,'
           ' 0]}]}' % (datatype, value))
    response = httpx.post(f"{url}/v2/models/diabetes/infer", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text[:300]
    assert "input" in response.json()["error"]


def test_v2_integers_in_range_are_answered(url):
    raw = '{"inputs": [{"name": "input", "shape": [1, 10], "datatype": "INT8", "data": [1, 0, 0, 0, 0, 0, 0, 0, 0, -128]}]}'
    response = httpx.post(f"{url}/v2/models/diabetes/infer", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/diabetes", "/v2/health/live", "/v2/models/diabetes",
                                  "/metrics"])
def test_head_is_answered_on_get_routes(url, path):
    get = httpx.get(f"{url}{path}")
    head = httpx.head(f"{url}{path}")
    assert head.status_code == get.status_code == 200
    assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]


def test_api_keys_that_hold_no_key_refuse_to_start():
    env = {**os.environ, "MCD_API_KEYS": " , ", "MCD_MODELS_DIR": str(ROOT / "models")}
    done = subprocess.run([sys.executable, "-c", "import service.app"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert "MCD_API_KEYS holds no key" in done.stderr and "Traceback" not in done.stderr


def test_with_keys_the_open_schema_does_not_list_the_models(tmp_path):
    with run_server(tmp_path, api_keys="secret", reload="false") as server:
        schema = httpx.get(f"{server.url}/openapi.json").text
        assert "breast-cancer" not in schema and "heteroscedastic-1d" not in schema
        listed = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer secret"}).json()
        assert "breast-cancer" in {model["name"] for model in listed["models"]}
