"""The gRPC Open Inference Protocol: tritonclient.grpc, unchanged, against a real server on 127.0.0.1.

The client runs in a process of its own: tritonclient's protobuf modules and kserve's (test_service_v2)
declare the same ``inference`` messages, which one process's descriptor pool refuses to hold twice.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from tests.conftest import ROOT, free_port, run_server

ROWS = np.random.default_rng(4).normal(scale=0.05, size=(3, 10)).astype(np.float32)  # diabetes rows

CLIENT = r"""
import json, sys
import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc
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
    except (InferenceServerException, grpc.RpcError) as error:
        return str(error)
    return None

# 2,000,000 typed values (8 MB) for a model that takes at most 1000 rows x 10
stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
huge = pb.ModelInferRequest(model_name="diabetes", inputs=[pb.ModelInferRequest.InferInputTensor(
    name="input", datatype="FP32", shape=[200000, 10], contents=pb.InferTensorContents(fp32_contents=[0.5] * 2000000))])

answer = infer(rows, samples=32, seed=5)
print(json.dumps({
    "live": client.is_server_live(), "ready": client.is_server_ready(), "model_ready": client.is_model_ready("diabetes"),
    "name": client.get_model_metadata("diabetes").name,
    "mean": answer.as_numpy("mean").tolist(), "std": answer.as_numpy("std").tolist(),
    "bad_shape": message(lambda: infer(rows[:, :4])),
    "unknown": message(lambda: client.get_model_metadata("missing")),
    "huge": message(lambda: stub.ModelInfer(huge)),
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
    assert "2000000 values in contents is over the limit of 10000" in grpc["huge"]


DEADLINE_CLIENT = r"""
import sys
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

client = grpcclient.InferenceServerClient(sys.argv[1])
x = np.zeros((1, 1, 8, 8), dtype=np.float32)
tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
tensor.set_data_from_numpy(x)
try:
    client.infer("digits", [tensor], parameters={"samples": 10}, client_timeout=2.0)
    print("answered")
except InferenceServerException as error:
    print(error.status(), error.message())
"""


def test_a_grpc_callers_deadline_drops_its_queued_work(tmp_path):
    """The request carries gRPC's deadline: held in the queue past it (the batcher waits up to
    MCD_MAX_DELAY_MS for more work), the call is answered DEADLINE_EXCEEDED by the server just before its
    caller stops waiting, and its work is dropped (counted as reason "deadline"), not computed for nobody."""
    pytest.importorskip("tritonclient")
    port = free_port()
    with run_server(tmp_path, grpc_port=str(port), reload="false", max_delay_ms="6000") as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        done = subprocess.run([sys.executable, "-c", DEADLINE_CLIENT, f"127.0.0.1:{port}"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("StatusCode.DEADLINE_EXCEEDED deadline exceeded") \
            and "(the caller's deadline)" in done.stdout, done.stdout
        waited = time.monotonic()
        while _dropped(http) is None and time.monotonic() - waited < 30:  # counted when the batcher takes it
            time.sleep(0.2)
        assert _dropped(http) == 1.0


def _dropped(http: httpx.Client) -> float | None:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith('mcdropout_dropped_requests_total{model="digits",reason="deadline"}'):
            return float(line.rsplit(" ", 1)[1])
    return None
