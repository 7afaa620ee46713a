"""Batching, overload, deadlines, auth, broken bundles and shutdown, on real servers on 127.0.0.1."""

import asyncio
import shutil
import signal
import threading
import time

import httpx
import numpy as np

from mcdropout.training import datasets

from .conftest import MODELS, run_server, without_ids

ROWS = datasets.diabetes(0).x_test.tolist()


def _close(a, b, scale) -> bool:
    return bool(np.all(np.abs(np.asarray(a) - np.asarray(b)) <= 1e-6 * np.maximum(np.abs(a), scale)))


async def _fire(url: str, bodies: list[dict], path: str = "/v1/models/diabetes/predict") -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=100)) as client:
        return await asyncio.gather(*(client.post(path, json=body) for body in bodies))


def test_batched_answers_equal_solo_answers_under_64_clients(server, http):
    """Different rows, T, seeds and interval levels: merged runs give every request its solo answer."""
    rng = np.random.default_rng(0)
    bodies = [{"inputs": ROWS[i % 80 : i % 80 + 1 + i % 3], "samples": int(rng.choice([20, 50])),
               "seed": int(rng.choice([0, 1, 2])), "interval": float(rng.choice([0.5, 0.9, 0.95]))} for i in range(64)]
    before = _batched_requests(http)
    together = asyncio.run(_fire(server.url, bodies))
    merged = _batched_requests(http) - before
    for body, answer in zip(bodies, together):
        assert answer.status_code == 200, answer.text
        got = answer.json()
        alone = http.post("/v1/models/diabetes/predict", json=body).json()
        assert (got["seed"], got["samples"], got["interval"]["level"]) == (body["seed"], body["samples"], body["interval"])
        assert len(got["mean"]) == len(body["inputs"])
        scale = np.asarray(alone["std"])
        for key in ("mean", "std"):
            assert _close(got[key], alone[key], scale), key
        assert _close(got["interval"]["lower"], alone["interval"]["lower"], scale)
    assert merged < 64, "no request was merged with another"


def _batched_requests(http) -> float:
    """Engine runs so far (the count of the batch-size histogram) for diabetes."""
    for line in http.get("/metrics").text.splitlines():
        if line.startswith('mcdropout_batch_requests_count{model="diabetes"}'):
            return float(line.split()[-1])
    return 0.0


def test_overload_answers_503_and_loses_nothing(tmp_path):
    with run_server(tmp_path, max_queue="2", batching="false") as server:
        bodies = [{"inputs": ROWS[:50], "samples": 1000, "seed": i} for i in range(24)]
        answers = asyncio.run(_fire(server.url, bodies))
        statuses = [a.status_code for a in answers]
        assert 503 in statuses and 200 in statuses
        for body, answer in zip(bodies, answers):
            if answer.status_code == 503:
                assert answer.headers["retry-after"] == "1"
                assert "overloaded" in answer.json()["error"]
            else:  # each answer belongs to its own request
                assert answer.json()["seed"] == body["seed"] and len(answer.json()["mean"]) == 50
        with httpx.Client(base_url=server.url, timeout=60) as http:
            retried = [http.post("/v1/models/diabetes/predict", json=b) for b, a in zip(bodies, answers)
                       if a.status_code == 503][:3]
            assert all(r.status_code == 200 for r in retried)


def test_deadline_answers_504(tmp_path):
    with run_server(tmp_path, request_timeout_s="0.05") as server:
        answer = httpx.post(f"{server.url}/v1/models/digits/predict",
                            json={"inputs": datasets.digits(0).x_test[:300].tolist(), "samples": 1000}, timeout=60)
        assert answer.status_code == 504
        assert "deadline exceeded" in answer.json()["error"]
        healthy = httpx.post(f"{server.url}/v1/models/diabetes/predict", json={"inputs": ROWS[:1], "samples": 2})
        assert healthy.status_code in (200, 504)


def test_api_keys(tmp_path):
    with run_server(tmp_path, api_keys="alpha, beta") as server:
        url = server.url
        assert httpx.get(f"{url}/v1/models").status_code == 401
        wrong = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer gamma"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        assert "API key" in wrong.json()["error"]
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer beta"}).status_code == 200
        body = {"inputs": ROWS[:1]}
        assert httpx.post(f"{url}/v1/models/diabetes/predict", json=body).status_code == 401
        assert httpx.post(f"{url}/v1/models/diabetes/predict", json=body,
                          headers={"Authorization": "Bearer alpha"}).status_code == 200
        v2 = httpx.get(f"{url}/v2/models/diabetes")
        assert v2.status_code == 401 and set(v2.json()) == {"error"}
        for open_path in ("/v2/health/live", "/v2/health/ready", "/v2"):
            assert httpx.get(f"{url}{open_path}").status_code == 200, open_path
        # /metrics names every model: behind the keys too (MCD_OPEN_METRICS opens it)
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer beta"}).status_code == 200


def test_a_broken_bundle_is_reported_and_the_others_are_served(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(MODELS / "diabetes", models / "diabetes")
    shutil.copytree(MODELS / "digits", models / "broken")
    (models / "broken" / "weights.safetensors").write_bytes(b"not safetensors")
    with run_server(tmp_path, models_dir=str(models)) as server:
        listed = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
        assert listed["diabetes"]["status"] == "ready"
        assert listed["broken"]["status"] == "failed"
        assert "weights.safetensors: cannot read safetensors" in listed["broken"]["error"]
        assert "model broken failed to load" in server.output()
        ready = httpx.get(f"{server.url}/v2/models/broken/ready")
        assert ready.status_code == 503 and ready.json() == {"name": "broken", "ready": False}
        failed = httpx.post(f"{server.url}/v1/models/broken/predict", json={"inputs": [[0]]})
        assert failed.status_code == 503 and "failed to load" in failed.json()["error"]
        assert httpx.post(f"{server.url}/v1/models/diabetes/predict", json={"inputs": ROWS[:1]}).status_code == 200


def test_no_models_means_not_ready(tmp_path):
    with run_server(tmp_path, models_dir=str(tmp_path / "empty")) as server:
        ready = httpx.get(f"{server.url}/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}


def test_graceful_shutdown_finishes_requests_in_flight(tmp_path):
    with run_server(tmp_path) as server:
        result = {}

        def slow():  # about a second of compute on 2 cores
            result["answer"] = httpx.post(f"{server.url}/v1/models/digits/predict",
                                          json={"inputs": datasets.digits(0).x_test[:200].tolist(), "samples": 500},
                                          timeout=60)

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.3)  # the request is in flight
        server.process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert result["answer"].status_code == 200
        assert len(result["answer"].json()["probs"]) == 200
        assert server.process.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once done
        assert "Waiting for connections to close" in server.output() or "Shutting down" in server.output()


def test_opentelemetry_on_changes_no_answer(server, tmp_path):
    """With MCD_OTEL on, predict and infer give the same answers, errors and status codes as without."""
    v2_body = {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": ROWS[0]}],
               "parameters": {"samples": 20, "seed": 4}}
    calls = [
        ("/v1/models/diabetes/predict", {"inputs": ROWS[:2], "samples": 20, "seed": 3}),
        ("/v1/models/diabetes/predict", {"inputs": [[1.0, 2.0]]}),  # wrong feature count: 422
        ("/v1/models/diabetes/predict", {"inputs": ROWS[:1], "colour": "blue"}),  # unknown field: 422
        ("/v1/models/nope/predict", {"inputs": ROWS[:1]}),  # unknown model: 404
        ("/v2/models/diabetes/infer", v2_body),
        ("/v2/models/diabetes/infer", {"inputs": []}),  # no input tensor: 400
    ]
    with run_server(tmp_path, otel="true") as routed:
        for path, body in calls:
            plain, traced = (httpx.post(f"{url}{path}", json=body) for url in (server.url, routed.url))
            assert plain.status_code == traced.status_code, (path, body, plain.text, traced.text)
            assert without_ids(plain.json()) == without_ids(traced.json()), (path, body)
        counted = httpx.get(f"{server.url}/metrics").text
        assert 'route="/v1/models/{name}/predict"' in counted  # the request counter still sees the route


def test_auto_samples_stop_at_the_servers_maximum_and_return_only_real_draws(tmp_path):
    """MCD_MAX_SAMPLES caps samples="auto" below the bundle's own maximum; each row's draws are its own."""
    rows = datasets.digits().x_test[:20].tolist()
    with run_server(tmp_path, max_samples="100") as server, httpx.Client(base_url=server.url, timeout=60) as http:
        answer = http.post("/v1/models/digits/predict",
                           json={"inputs": rows, "samples": "auto", "return_samples": True}).json()
    assert max(answer["samples_used"]) <= 100
    for draws, used in zip(answer["draws"], answer["samples_used"]):
        assert len(draws) == used
        assert all(value is not None for draw in draws for value in draw)
