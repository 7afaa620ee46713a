"""mcdropout.client against real servers on 127.0.0.1: every method, every error, retries, chunking."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from mcdropout import load_bundle
from mcdropout.training import datasets
from mcdropout.client import (
    AsyncClient,
    ClassificationResult,
    Client,
    InvalidInput,
    NotFound,
    Overloaded,
    RegressionResult,
    ServerError,
    Unauthorized,
    Unreachable,
)

from .conftest import MODELS, free_port, run_server

SPLIT = datasets.diabetes(0)
ROWS = SPLIT.x_test[:23]


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """Row limit 5 (so 23 rows go as five requests) and API keys on."""
    with run_server(tmp_path_factory.mktemp("client"), max_rows=5, api_keys="key-1") as running:
        yield running


def test_importing_the_client_imports_neither_torch_nor_fastapi():
    code = "import sys, mcdropout.client; print('torch' in sys.modules, 'fastapi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_models_model_and_health(server):
    with Client(server.url) as client:
        names = {m.name for m in client.models()}
        assert {"diabetes", "digits", "breast-cancer"} <= names
        info = client.model("diabetes")
        assert info.task == "regression" and info.feature_names == SPLIT.feature_names and info.max_rows == 1000
        assert client.health() == {"live": True, "ready": True}


def test_predict_in_chunks_equals_the_library(small_server):
    """23 rows over a 5-row limit: five requests, joined in order, equal to one library call."""
    with Client(small_server.url, api_key="key-1") as client:
        result = client.predict("diabetes", ROWS, samples=50, seed=3, interval=0.9)
    assert isinstance(result, RegressionResult) and len(result) == 23
    bundle = load_bundle(MODELS / "diabetes", device="cpu")
    local = bundle.predict(ROWS, samples=50, seed=3)
    half = bundle.manifest.calibration.conformal.quantiles(0.9) * local.std.numpy()  # calibrated: conformal
    lower, upper = local.mean - half, local.mean + half
    np.testing.assert_allclose(result.mean, local.mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(result.std, local.std.numpy(), rtol=1e-5)
    np.testing.assert_allclose(result.lower, lower.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.upper, upper.numpy(), rtol=1e-5)
    assert result.seed == 3 and result.level == 0.9 and (result.samples_used == 50).all()
    assert result.interval_method == "conformal"


def test_dataframe_columns_are_matched_by_name(server):
    frame = pd.DataFrame(ROWS, columns=SPLIT.feature_names)
    shuffled = frame[list(reversed(SPLIT.feature_names))].assign(extra=1.0)
    with Client(server.url) as client:
        from_frame = client.predict("diabetes", shuffled, samples=20, seed=1)
        from_array = client.predict("diabetes", ROWS, samples=20, seed=1)
        np.testing.assert_array_equal(from_frame.mean, from_array.mean)
        table = from_frame.to_pandas()
        assert list(table.columns[:4]) == ["mean", "std", "lower", "upper"] and len(table) == 23
        with pytest.raises(InvalidInput, match="'bmi'") as error:
            client.predict("diabetes", frame.drop(columns=["bmi"]))
        assert error.value.field == "inputs"


def test_classification_result(server):
    x = datasets.breast_cancer(0).x_test[:7]
    with Client(server.url) as client:
        result = client.predict("breast-cancer", x.tolist(), samples=30, seed=0)
    assert isinstance(result, ClassificationResult)
    assert result.probs.shape == (7, 2) and np.allclose(result.probs.sum(1), 1)
    assert set(result.class_name) <= set(result.classes)
    assert {"label", "entropy", "mutual_information", "prob_malignant"} <= set(result.to_pandas().columns)


def test_async_client_gives_the_same_answers(small_server):
    async def main():
        async with AsyncClient(small_server.url, api_key="key-1") as client:
            return (await client.models(), await client.model("diabetes"), await client.health(),
                    await client.predict("diabetes", ROWS, samples=50, seed=3))

    models, info, health, result = asyncio.run(main())
    with Client(small_server.url, api_key="key-1") as client:
        expected = client.predict("diabetes", ROWS, samples=50, seed=3)
    assert info.max_rows == 5 and health["ready"] and len(models) >= 3
    np.testing.assert_array_equal(result.mean, expected.mean)


def test_typed_errors(server, small_server):
    with Client(server.url) as client:
        with pytest.raises(NotFound, match="nope"):
            client.predict("nope", ROWS)
        with pytest.raises(InvalidInput) as error:
            client.predict("diabetes", ROWS[:, :3])
        assert error.value.status == 422 and error.value.field == "inputs[0]"
        with pytest.raises(InvalidInput) as error:
            client.predict("diabetes", ROWS, samples=1)
        assert error.value.field == "samples"
        with pytest.raises(InvalidInput, match="interval"):
            client.predict("diabetes", ROWS, interval=1.5)
    with Client(small_server.url, api_key="key-1") as client:
        bad = ROWS.copy()
        bad[12, 4] = np.nan
        with pytest.raises(InvalidInput) as error:  # in the third chunk of five rows: numbered over all rows
            client.predict("diabetes", bad)
        assert error.value.field.startswith("inputs[12]"), error.value
        overflowing = ROWS.copy()
        overflowing[[16, 18]] = 1e37  # the network overflows: the server lists rows 1 and 3 of its request
        with pytest.raises(InvalidInput, match=r"non-finite .* rows numbered from 0: 16, 18 \(field 'inputs'\)"):
            client.predict("diabetes", overflowing)
    with Client(small_server.url, api_key="wrong") as client:
        with pytest.raises(Unauthorized):
            client.models()
        assert client.health()["live"]  # health stays open
    with Client(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01) as client:
        with pytest.raises(Unreachable):
            client.models()


class _Flaky(BaseHTTPRequestHandler):
    """Answers 503 (Retry-After: 0) ``failures`` times per path, then the scripted answer."""

    failures = 2
    answers: dict[str, tuple[int, dict]] = {}
    seen: list[str] = []

    def _answer(self) -> None:
        self.seen.append(self.path)
        if self.seen.count(self.path) <= self.failures:
            status, body, headers = 503, {"error": "queue full"}, {"Retry-After": "0"}
        else:
            status, body = self.answers.get(self.path, (404, {"error": f"no model at {self.path}"}))
            headers = {}
        data = json.dumps(body).encode()
        self.send_response(status)
        for key, value in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def flaky(server):
    """A stand-in server on 127.0.0.1 replaying the real server's answers after two 503s."""
    with Client(server.url) as client:
        info = client._http.get("/v1/models/diabetes").json()
        answer = client._http.post("/v1/models/diabetes/predict", json={"inputs": ROWS[:2].tolist(), "seed": 0}).json()
    _Flaky.answers = {"/v1/models/diabetes": (200, info), "/v1/models/diabetes/predict": (200, answer),
                      "/v1/models/broken": (200, {**info, "name": "broken"}),
                      "/v1/models/broken/predict": (500, {"error": "internal error: RuntimeError"})}
    _Flaky.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_retries_503_then_succeeds(flaky):
    with Client(flaky, retries=3, backoff=0.01) as client:
        result = client.predict("diabetes", ROWS[:2])
    assert len(result) == 2
    assert _Flaky.seen.count("/v1/models/diabetes/predict") == 3


def test_gives_up_with_overloaded_and_never_retries_4xx_or_500(flaky):
    with Client(flaky, retries=1, backoff=0.01) as client:
        with pytest.raises(Overloaded) as error:
            client.predict("diabetes", ROWS[:2])
        assert error.value.retry_after == 0.0
    _Flaky.seen.clear()
    _Flaky.failures = 0
    try:
        with Client(flaky, retries=3, backoff=0.01) as client:
            with pytest.raises(ServerError, match="500"):
                client.predict("broken", ROWS[:2])
            with pytest.raises(NotFound):
                client.model("missing")
    finally:
        _Flaky.failures = 2
    assert _Flaky.seen.count("/v1/models/broken/predict") == 1
