"""The gRPC Open Inference Protocol: tritonclient.grpc, unchanged, against a real server on 127.0.0.1.

The client runs in a process of its own: tritonclient's protobuf modules and kserve's (test_service_v2)
declare the same ``inference`` messages, which one process's descriptor pool refuses to hold twice.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT, free_port, run_server

ROWS = np.random.default_rng(4).normal(scale=0.05, size=(3, 10)).astype(np.float32)  # diabetes rows

CLIENT = r"""
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

address, rows = sys.argv[1], np.asarray(json.loads(sys.argv[2]), dtype=np.float32)
client = grpcclient.InferenceServerClient(address)

def infer(x, **parameters):
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client.infer("diabetes", [tensor], parameters=parameters or None)

def message(call):
    try:
        call()
    except InferenceServerException as error:
        return str(error)
    return None

answer = infer(rows, samples=32, seed=5)
print(json.dumps({
    "live": client.is_server_live(), "ready": client.is_server_ready(), "model_ready": client.is_model_ready("diabetes"),
    "name": client.get_model_metadata("diabetes").name,
    "mean": answer.as_numpy("mean").tolist(), "std": answer.as_numpy("std").tolist(),
    "bad_shape": message(lambda: infer(rows[:, :4])),
    "unknown": message(lambda: client.get_model_metadata("missing")),
}))
"""


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    pytest.importorskip("tritonclient")
    port = free_port()
    with run_server(tmp_path_factory.mktemp("grpc"), grpc_port=str(port), reload="false") as server:
        done = subprocess.run([sys.executable, "-c", CLIENT, f"127.0.0.1:{port}", json.dumps(ROWS.tolist())],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        rest = httpx.post(f"{server.url}/v1/models/diabetes/predict",
                          json={"inputs": ROWS.tolist(), "samples": 32, "seed": 5}).json()
        yield json.loads(done.stdout), rest


def test_health_metadata_and_infer_equal_rest(answers):
    grpc, rest = answers
    assert grpc["live"] and grpc["ready"] and grpc["model_ready"] and grpc["name"] == "diabetes"
    np.testing.assert_allclose(np.asarray(grpc["mean"]), np.asarray(rest["mean"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grpc["std"]), np.asarray(rest["std"]), rtol=1e-6)


def test_errors_are_grpc_statuses_naming_the_problem(answers):
    grpc, _ = answers
    assert "does not match" in grpc["bad_shape"]
    assert "unknown model" in grpc["unknown"]
