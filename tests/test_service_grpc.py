"""The gRPC Open Inference Protocol: tritonclient.grpc, unchanged, against a real server on 127.0.0.1."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.conftest import free_port, run_server

grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

ROWS = np.random.default_rng(4).normal(scale=0.05, size=(3, 10)).astype(np.float32)  # diabetes rows


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    port = free_port()
    with run_server(tmp_path_factory.mktemp("grpc"), grpc_port=str(port), reload="false") as server:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        yield server.url, client
        client.close()


def _infer(client, rows: np.ndarray, **parameters):
    tensor = grpcclient.InferInput("input", list(rows.shape), "FP32")
    tensor.set_data_from_numpy(rows)
    return client.infer("diabetes", [tensor], parameters=parameters or None)


def test_health_metadata_and_infer_equal_rest(servers):
    url, client = servers
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("diabetes")
    assert client.get_model_metadata("diabetes").name == "diabetes"
    answer = _infer(client, ROWS, samples=32, seed=5)
    rest = httpx.post(f"{url}/v1/models/diabetes/predict",
                      json={"inputs": ROWS.tolist(), "samples": 32, "seed": 5}).json()
    np.testing.assert_allclose(answer.as_numpy("mean"), np.asarray(rest["mean"]), rtol=1e-6)
    np.testing.assert_allclose(answer.as_numpy("std"), np.asarray(rest["std"]), rtol=1e-6)


def test_errors_are_grpc_statuses_naming_the_problem(servers):
    _, client = servers
    with pytest.raises(InferenceServerException, match="does not match"):
        _infer(client, ROWS[:, :4])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("missing")
