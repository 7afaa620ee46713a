"""The Open Inference Protocol with unchanged existing clients: tritonclient[http] and KServe's REST client."""

import asyncio

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

from mcdropout.training import datasets

DIABETES = datasets.diabetes(0).x_test[:4].astype(np.float32)
DIGITS = datasets.digits(0).x_test[:3].astype(np.float32)


@pytest.fixture(scope="module")
def triton_client(server):
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def test_health_and_metadata_with_tritonclient(triton_client):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready("digits")
    metadata = triton_client.get_model_metadata("digits")
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    names = [o["name"] for o in metadata["outputs"]]
    # the shipped digits bundle is calibrated: the outputs it gives when asked (sets, abstention) are listed too
    assert names == ["probs", "label", "entropy", "expected_entropy", "mutual_information", "variation_ratio",
                     "samples_used", "prediction_set", "set_size", "abstain"]
    assert triton_client.get_server_metadata()["extensions"] == ["binary_tensor_data"]


def test_tritonclient_defaults_binary_data_both_ways(triton_client, http):
    tensor = triton.InferInput("input", list(DIABETES.shape), "FP32")
    tensor.set_data_from_numpy(DIABETES)  # binary_data=True: raw bytes after the JSON header
    result = triton_client.infer("diabetes", [tensor], parameters={"samples": 50, "seed": 3})
    native = http.post("/v1/models/diabetes/predict",
                       json={"inputs": DIABETES.tolist(), "samples": 50, "seed": 3}).json()
    assert np.allclose(result.as_numpy("mean"), native["mean"], rtol=1e-6)
    assert np.allclose(result.as_numpy("upper"), native["interval"]["upper"], rtol=1e-6)
    assert result.as_numpy("samples_used").tolist() == [50] * 4
    assert result.get_response()["parameters"] == {"samples": 50, "seed": 3, "interval": 0.95,
                                                  "interval_method": "conformal", "id": result.get_response()["id"]}


def test_tritonclient_json_data_and_chosen_outputs(triton_client):
    tensor = triton.InferInput("input", list(DIGITS.shape), "FP32")
    tensor.set_data_from_numpy(DIGITS, binary_data=False)
    outputs = [triton.InferRequestedOutput("probs", binary_data=False), triton.InferRequestedOutput("label")]
    result = triton_client.infer("digits", [tensor], outputs=outputs, parameters={"samples": 20})
    probs = result.as_numpy("probs")
    assert probs.shape == (3, 10) and np.allclose(probs.sum(1), 1)
    assert result.as_numpy("label").tolist() == probs.argmax(1).tolist()
    assert result.as_numpy("entropy") is None  # not asked for


def test_tritonclient_errors(triton_client):
    tensor = triton.InferInput("input", [1, 9], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 9), dtype=np.float32))
    with pytest.raises(triton.InferenceServerException, match=r"shape \[1, 9\] does not match \[rows, 10\]"):
        triton_client.infer("diabetes", [tensor])
    good = triton.InferInput("input", [1, 10], "FP32")
    good.set_data_from_numpy(np.zeros((1, 10), dtype=np.float32))
    with pytest.raises(triton.InferenceServerException, match="parameters.samples"):
        triton_client.infer("diabetes", [good], parameters={"samples": 1})
    with pytest.raises(triton.InferenceServerException, match="unknown model 'nope'"):
        triton_client.infer("nope", [good])


def test_kserve_rest_client(server, http):
    async def run():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
        assert await client.is_server_ready(server.url)
        assert await client.is_server_live(server.url)
        assert await client.is_model_ready(server.url, "diabetes")
        answers = []
        for binary in (False, True):
            tensor = InferInput("input", list(DIABETES.shape), "FP32")
            tensor.set_data_from_numpy(DIABETES, binary_data=binary)
            request = InferRequest("diabetes", [tensor], parameters={"samples": 30, "seed": 5})
            answers.append(await client.infer(server.url, request, model_name="diabetes"))
        return answers

    json_answer, binary_answer = asyncio.run(run())
    native = http.post("/v1/models/diabetes/predict", json={"inputs": DIABETES.tolist(), "samples": 30, "seed": 5}).json()
    for answer in (json_answer, binary_answer):
        outputs = {o.name: o.as_numpy() for o in answer.outputs}
        assert np.allclose(outputs["mean"], native["mean"], rtol=1e-6)
        assert np.allclose(outputs["epistemic_variance"], native["epistemic_variance"], rtol=1e-5)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nope/infer", {"inputs": []}, 404, "unknown model 'nope'"),
        ("/v2/models/diabetes/infer", {"inputs": []}, 400, "takes one input tensor"),
        ("/v2/models/diabetes/infer", {"inputs": [{"name": "x", "shape": [1, 10], "datatype": "FP32", "data": [0] * 10}]},
         400, "unknown input 'x'"),
        ("/v2/models/diabetes/infer", {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "BYTES", "data": ["a"] * 10}]},
         400, "not numeric"),
        ("/v2/models/diabetes/infer", {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": [0] * 9}]},
         400, "9 values for shape [1, 10]"),
        ("/v2/models/diabetes/infer", {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": [0] * 10}],
                                       "parameters": {"interval": 2}}, 422, "parameters.interval"),
        ("/v2/models/diabetes/infer", {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": [0] * 10}],
                                       "outputs": [{"name": "median"}]}, 400, "unknown output(s) 'median'"),
        ("/v2/models/diabetes/infer", {"inputs": "x"}, 400, "invalid inference request: inputs"),
    ],
)
def test_v2_errors_are_error_objects(http, path, body, status, message):
    answer = http.post(path, json=body)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error"} and message in answer.json()["error"]


def test_v2_binary_header_that_lies(server):
    answer = httpx.post(f"{server.url}/v2/models/diabetes/infer", content=b'{"inputs": []}',
                        headers={"Inference-Header-Content-Length": "999"})
    assert answer.status_code == 400 and "does not fit a body of 14 bytes" in answer.json()["error"]
