"""Requests are untrusted input (issue 28): cross-origin state changes, the v2 answer's size, strict v2 fields,
/metrics behind keys, duplicate credentials, and internal errors that carry no exception text."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.http import install_error_handlers
from service.settings import Settings
from tests.conftest import MODELS, ROOT, free_port, run_server

ROWS = np.random.default_rng(4).normal(scale=0.05, size=(10, 10)).astype(np.float32)  # diabetes rows
INFER = "/v2/models/diabetes/infer"


def _body(rows=ROWS, **extra):
    return {"inputs": [{"name": "input", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.reshape(-1).tolist()}], **extra}


GRPC_CLIENT = r"""
import json, sys
import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc

address, rows = sys.argv[1], np.asarray(json.loads(sys.argv[2]), dtype=np.float32)
stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))

def infer(outputs=(), **parameters):
    request = pb.ModelInferRequest(model_name="diabetes", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=list(rows.shape), contents=pb.InferTensorContents(
        fp32_contents=rows.reshape(-1).tolist()))],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=name) for name in outputs])
    for name, value in parameters.items():
        request.parameters[name].CopyFrom(pb.InferParameter(string_param=value))
    try:
        answer = stub.ModelInfer(request)
        return {"ok": [o.name for o in answer.outputs]}
    except grpc.RpcError as error:
        return {"code": error.code().name, "message": error.details()}

print(json.dumps({"twice": infer(["mean"] * 3), "one": infer(["mean"]), "all": infer(),
                  "yes": infer(["mean"], binary_data_output="yes")}))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    with run_server(tmp_path_factory.mktemp("untrusted"), grpc_port=str(port), reload="false",
                    max_returned_values="40") as running:
        running.grpc = f"127.0.0.1:{port}"
        yield running


# -- 4: cross-origin state changes ------------------------------------------------------------------------

def test_a_simple_cross_origin_unload_is_refused_and_the_model_stays(http, server):
    refused = http.post("/v2/repository/models/diabetes/unload", content=b"{}",
                        headers={"content-type": "text/plain"})
    assert refused.status_code == 415 and "application/json" in refused.json()["error"]
    foreign = http.post("/v2/repository/models/diabetes/unload", json={},
                        headers={"origin": "https://evil.example"})
    assert foreign.status_code == 403 and "MCD_CORS_ORIGINS" in foreign.json()["error"]
    for kind in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        assert http.post("/v1/models/diabetes/predict", content=b"{}", headers={"content-type": kind}
                         ).status_code == 415
    assert http.get("/v2/models/diabetes/ready").status_code == 200
    # the server's own page (same origin), JSON, no Content-Type (tritonclient), and v2's binary body pass
    assert http.post("/v2/repository/index", json={}, headers={"origin": server.url}).status_code == 200
    assert http.post("/v1/models/diabetes/predict", json={"inputs": ROWS[:1].tolist()},
                     headers={"origin": server.url}).status_code == 200
    assert http.post("/v2/repository/index", content=b"{}").status_code == 200
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 40}}], "outputs": [{"name": "mean"}]})
    binary = http.post(INFER, content=header.encode() + ROWS[:1].tobytes(),
                       headers={"content-type": "application/octet-stream",
                                "inference-header-content-length": str(len(header))})
    assert binary.status_code == 200, binary.text


def test_allowed_cors_origins_may_change_state():
    with TestClient(create_app(Settings(models_dir=MODELS, cors_origins=["https://app.example"]))) as client:
        assert client.post("/v2/repository/index", json={}, headers={"origin": "https://app.example"}
                           ).status_code == 200
        assert client.post("/v2/repository/index", json={}, headers={"origin": "https://other.example"}
                           ).status_code == 403


# -- 10 and Also: the v2 answer's size, and strict fields -------------------------------------------------

def test_v2_outputs_asked_twice_are_a_400_and_the_answer_is_bounded(http):
    twice = http.post(INFER, json=_body(outputs=[{"name": "mean"}] * 3))
    assert twice.status_code == 400 and "'mean' asked for more than once" in twice.json()["error"]
    assert http.post(INFER, json=_body(outputs=[{"name": "mean"}])).status_code == 200
    everything = http.post(INFER, json=_body())  # 10 rows x every output is over MCD_MAX_RETURNED_VALUES=40
    assert everything.status_code == 422 and "MCD_MAX_RETURNED_VALUES" in everything.json()["error"]


@pytest.mark.parametrize("body, header, field", [
    (_body(ROWS[:1]) | {"inputs": [{"name": "input", "shape": [True, 10], "datatype": "FP32",
                                    "data": ROWS[0].tolist()}]}, None, "shape"),
    (_body(ROWS[:1], parameters={"binary_data_output": "yes"}), None, "binary_data_output"),
    (_body(ROWS[:1], outputs=[{"name": "mean", "parameters": {"binary_data": 1}}]), None, "binary_data"),
    (_body(ROWS[:1]), "1_09", "Inference-Header-Content-Length"),
    (_body(ROWS[:1]), "+109", "Inference-Header-Content-Length"),
])
def test_v2_loose_fields_are_refused_naming_them(http, body, header, field):
    content = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["inference-header-content-length"] = header
    answer = http.post(INFER, content=content, headers=headers)
    assert answer.status_code == 400 and field in answer.json()["error"], answer.text


def test_grpc_outputs_are_bounded_strict_and_counted(server, http):
    pytest.importorskip("tritonclient")
    done = subprocess.run([sys.executable, "-c", GRPC_CLIENT, server.grpc, json.dumps(ROWS.tolist())],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert answers["twice"]["code"] == "INVALID_ARGUMENT" and "more than once" in answers["twice"]["message"]
    assert answers["one"] == {"ok": ["mean"]}
    assert answers["all"]["code"] == "INVALID_ARGUMENT" and "MCD_MAX_RETURNED_VALUES" in answers["all"]["message"]
    assert answers["yes"]["code"] == "INVALID_ARGUMENT" and "binary_data_output" in answers["yes"]["message"]
    metrics = http.get("/metrics").text
    assert 'mcdropout_requests_total{model="diabetes",route="grpc:ModelInfer",status="OK"} 1.0' in metrics
    assert 'route="grpc:ModelInfer",status="INVALID_ARGUMENT"} 3.0' in metrics


# -- 6: /metrics behind keys, duplicate credentials, internal errors --------------------------------------

def test_metrics_want_a_key_when_keys_are_set_unless_opened():
    guarded = TestClient(create_app(Settings(models_dir=MODELS, api_keys=["k1"])))
    assert guarded.get("/metrics").status_code == 401
    assert guarded.get("/metrics", headers={"authorization": "Bearer k1"}).status_code == 200
    opened = TestClient(create_app(Settings(models_dir=MODELS, api_keys=["k1"], open_metrics=True)))
    assert opened.get("/metrics").status_code == 200
    assert TestClient(create_app(Settings(models_dir=MODELS))).get("/metrics").status_code == 200


def test_two_authorization_headers_are_refused():
    client = TestClient(create_app(Settings(models_dir=MODELS, api_keys=["k1"])))
    answer = client.get("/metrics", headers=[("authorization", "Bearer k1"), ("authorization", "Bearer nope")])
    assert answer.status_code == 401 and "more than one" in answer.json()["error"]
    answer = client.get("/metrics", headers=[("authorization", "Bearer nope"), ("authorization", "Bearer k1")])
    assert answer.status_code == 401


def test_an_http_internal_error_gives_an_id_not_its_text(caplog):
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom():
        raise IndexError("SECRET-from-a-file")

    with caplog.at_level(logging.ERROR, "mcdropout.service"):
        answer = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert answer.status_code == 500
    text = answer.json()["error"]
    assert "SECRET" not in text and "IndexError" not in text
    reference = text.split()[2].rstrip(";")
    assert reference in caplog.text and "SECRET-from-a-file" in caplog.text


# The servicer's own calls, in a process of their own: tritonclient's gRPC protobuf modules and kserve's
# (imported by other test files) cannot share one process.
SERVICER_PROBE = r"""
import asyncio, io, json, logging, sys
import grpc
from tritonclient.grpc import service_pb2 as pb
from service.app import create_app
from service.dataplane import DataPlane
from service.routes.grpc import InferenceServicer
from service.settings import Settings

class Aborted(Exception):
    pass

class Context:
    def __init__(self, metadata=()):
        self.metadata = metadata
    def invocation_metadata(self):
        return self.metadata
    async def abort(self, code, message):
        raise Aborted(code, message)

def servicer(keys=()):
    return InferenceServicer(DataPlane(create_app(Settings(models_dir=sys.argv[1], api_keys=list(keys))).state.service))

def aborted(call):
    try:
        asyncio.run(call)
    except Aborted as error:
        return [str(error.args[0]), error.args[1]]
    return None

log = io.StringIO()
logging.getLogger("mcdropout.service").addHandler(logging.StreamHandler(log))
broken = servicer()
def bundle(*args, **kwargs):
    raise IndexError("SECRET-from-a-file")
broken.plane.bundle = bundle  # an internal failure where the servicer looks the model up
internal = aborted(broken.ModelMetadata(pb.ModelMetadataRequest(name="diabetes"), Context()))
guarded = servicer(keys=["k1"])
twice = [aborted(guarded.ModelReady(pb.ModelReadyRequest(name="diabetes"), Context(metadata)))
         for metadata in ([("authorization", "Bearer nope"), ("authorization", "Bearer k1")],
                          [("authorization", "Bearer k1"), ("authorization", "Bearer nope")])]
print(json.dumps({"internal": internal, "log": log.getvalue(), "twice": twice}))
"""


@pytest.fixture(scope="module")
def servicer_probe() -> dict:
    pytest.importorskip("tritonclient")
    done = subprocess.run([sys.executable, "-c", SERVICER_PROBE, str(MODELS)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_grpc_internal_error_gives_an_id_not_its_text(servicer_probe):
    code, message = servicer_probe["internal"]
    assert code == "StatusCode.INTERNAL" and "SECRET" not in message and "IndexError" not in message
    assert message.split()[2].rstrip(";") in servicer_probe["log"] and "SECRET-from-a-file" in servicer_probe["log"]


def test_two_grpc_authorization_entries_are_refused(servicer_probe):
    for code, message in servicer_probe["twice"]:
        assert code == "StatusCode.UNAUTHENTICATED" and "more than one" in message
