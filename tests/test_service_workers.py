"""`mcdropout serve --workers 2`: answers equal across workers, metrics summed, repository changes reaching every
worker (a replaced worker too), gRPC on every worker, and SIGTERM draining every worker; real servers on
127.0.0.1, free ports."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

import mcdropout as mcd
from mcdropout._serve_workers import worker_environment
from mcdropout.training import datasets

from .conftest import MODELS, free_port, run_server

ROWS = datasets.diabetes(0).x_test[:50].tolist()
PREDICT = "/v1/models/diabetes/predict"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """diabetes and digits only: two workers start sooner."""
    folder = tmp_path_factory.mktemp("worker-models")
    for name in ("diabetes", "digits"):
        (folder / name).symlink_to(MODELS / name)
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory, models):
    grpc_port = free_port()
    with run_server(tmp_path_factory.mktemp("workers"), cli=True, start_s=180, workers="2", models_dir=str(models),
                    grpc_port=str(grpc_port), reload_interval_s="0.5") as server:
        _wait_for_workers(server.url, 2)
        server.grpc_port = grpc_port
        yield server


def _wait_for_workers(url: str, count: int, seconds: float = 90) -> list[dict]:
    """/workers once it lists ``count`` workers (each reports once its models are loaded)."""
    deadline = time.monotonic() + seconds
    while True:
        workers = httpx.get(f"{url}/workers", timeout=10).json()
        if len(workers) == count:
            return workers
        assert time.monotonic() < deadline, f"{count} workers did not report within {seconds:g} s: {workers}"
        time.sleep(0.2)


async def _fire(url: str, bodies: list[dict], path: str = PREDICT, stagger_s: float = 0.0,
                started: list | None = None) -> list[httpx.Response]:
    """Every body on a connection of its own (``Connection: close``), so that the kernel hands them to
    whichever worker accepts first: both get some. ``stagger_s``: between the starts of two requests;
    ``started`` gets an item as each request starts."""
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=32)) as client:

        async def post(index: int, body: dict) -> httpx.Response:
            await asyncio.sleep(index * stagger_s)
            if started is not None:
                started.append(index)
            return await client.post(path, json=body, headers={"connection": "close"})

        return await asyncio.gather(*(post(index, body) for index, body in enumerate(bodies)))


def _predicted_per_worker(pids: list[int]) -> dict[int, float]:
    """Each worker's own count of answered diabetes predictions, read from its prometheus_client file."""
    folder = _environment(pids[0])["PROMETHEUS_MULTIPROC_DIR"]
    counts = {}
    for pid in pids:
        file = Path(folder) / f"counter_{pid}.db"  # made at a worker's first count
        metrics = MultiProcessCollector.merge([str(file)]) if file.exists() else []
        counts[pid] = sum(sample.value for metric in metrics for sample in metric.samples
                          if sample.name == "mcdropout_requests_total" and sample.labels["model"] == "diabetes"
                          and sample.labels["route"] == "/v1/models/{name}/predict" and sample.labels["status"] == "200")
    return counts


def _environment(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


def _scraped(url: str, line_start: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(line_start):
            return float(line.split()[-1])
    return 0.0


def test_every_worker_answers_each_request_as_the_library_does_and_metrics_sum_over_them(served):
    """200 concurrent requests over 2 workers: each answer equals the library's solo answer for its (row, T, seed)
    (the same float32 engine: only summation-order rounding, 1e-6 relative); both workers answered some, and
    /metrics, whichever worker serves it, counts them all."""
    pids = [worker["pid"] for worker in _wait_for_workers(served.url, 2)]
    counter = 'mcdropout_requests_total{model="diabetes",route="/v1/models/{name}/predict",status="200"}'
    before, before_each = _scraped(served.url, counter), _predicted_per_worker(pids)
    bodies = [{"inputs": [ROWS[i % len(ROWS)]], "samples": 100, "seed": i % 5} for i in range(200)]
    answers = asyncio.run(_fire(served.url, bodies))
    bundle = mcd.load_bundle(MODELS / "diabetes", device="cpu")
    for body, answer in zip(bodies, answers):
        assert answer.status_code == 200, answer.text
        alone = bundle.predict(np.asarray(body["inputs"], dtype=np.float32), samples=100, seed=body["seed"])
        got = answer.json()
        assert np.allclose(got["mean"], alone.mean.numpy(), rtol=1e-6, atol=1e-6)
        assert np.allclose(got["std"], alone.std.numpy(), rtol=1e-5, atol=1e-6)
    each = {pid: count - before_each[pid] for pid, count in _predicted_per_worker(pids).items()}
    assert all(count > 0 for count in each.values()), f"a worker answered none: {each}"
    assert sum(each.values()) == 200
    assert _scraped(served.url, counter) - before == 200


GRPC_CALLS = """
import json, sys
import numpy as np
import tritonclient.grpc as grpcclient
port, row = json.loads(sys.stdin.read())
means = []
for _ in range(4):  # fresh channels: new connections, spread over the workers by SO_REUSEPORT
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = grpcclient.InferInput("input", [1, 10], "FP32")
    tensor.set_data_from_numpy(np.asarray([row], dtype=np.float32))
    answer = client.infer("diabetes", [tensor], parameters={"samples": 100, "seed": 3})
    means.append(answer.as_numpy("mean").ravel().tolist())
    client.close()
print(json.dumps(means))
"""


def test_grpc_runs_on_every_worker_on_one_port(served):
    """Each worker opens the gRPC port (SO_REUSEPORT): both say so, and calls over fresh channels are answered
    as REST answers them. The gRPC client runs in a process of its own: tritonclient.grpc's protos cannot
    share one process with kserve's, which other test modules import."""
    assert served.output().count(f"gRPC Open Inference Protocol on 127.0.0.1:{served.grpc_port}") == 2
    rest = httpx.post(f"{served.url}{PREDICT}", json={"inputs": ROWS[:1], "samples": 100, "seed": 3}).json()
    done = subprocess.run([sys.executable, "-c", GRPC_CALLS], input=json.dumps([served.grpc_port, ROWS[0]]),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    for mean in json.loads(done.stdout):
        assert np.allclose(mean, rest["mean"], rtol=1e-6)


def test_an_unload_is_answered_once_every_worker_has_it_and_a_replaced_worker_keeps_it(served):
    """The unload's 200 comes after every worker applied it: no request afterwards, whichever worker takes it,
    finds the model. A worker killed and replaced by the supervisor starts without it; a load brings it back
    on every worker."""
    ready = "/v2/models/digits/ready"
    assert httpx.post(f"{served.url}/v2/repository/models/digits/unload", json={}).status_code == 200
    assert {a.status_code for a in asyncio.run(_fire_get(served.url, ready, 20))} == {404}
    workers = _wait_for_workers(served.url, 2)
    assert all(w["unloaded"] == ["digits"] and "digits" not in w["models"] for w in workers), workers

    killed = workers[0]["pid"]
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + 90
    while True:  # the supervisor starts a replacement; it reports once it has loaded its models
        workers = _wait_for_workers(served.url, 2)
        if killed not in [w["pid"] for w in workers]:
            break
        assert time.monotonic() < deadline, "the killed worker was not replaced within 90 s"
        time.sleep(0.5)
    assert all(w["unloaded"] == ["digits"] and "digits" not in w["models"] for w in workers), workers
    assert {a.status_code for a in asyncio.run(_fire_get(served.url, ready, 20))} == {404}
    folder = Path(_environment(workers[0]["pid"])["PROMETHEUS_MULTIPROC_DIR"])
    assert not (folder / f"gauge_livesum_{killed}.db").exists()  # the killed worker's queue depth is dropped
    assert 'model="digits"' not in httpx.get(f"{served.url}/metrics").text  # unloaded: its series are left out

    assert httpx.post(f"{served.url}/v2/repository/models/digits/load", json={}).status_code == 200
    assert {a.status_code for a in asyncio.run(_fire_get(served.url, ready, 20))} == {200}
    assert all(w["models"]["digits"] == [1] and not w["unloaded"] for w in _wait_for_workers(served.url, 2))


async def _fire_get(url: str, path: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.get(path, headers={"connection": "close"}) for _ in range(count)))


def test_a_bundle_added_to_the_folder_reaches_every_worker(served, models):
    """Each worker's own poller picks up a new bundle (hot reload): within a few reload intervals every worker
    serves it, and so answers it whichever worker takes the request."""
    shutil.copytree(MODELS / "diabetes", models / "diabetes-copy")
    deadline = time.monotonic() + 60
    while not all("diabetes-copy" in w["models"] for w in _wait_for_workers(served.url, 2)):
        assert time.monotonic() < deadline, "the new bundle did not reach every worker within 60 s"
        time.sleep(0.2)
    body = {"inputs": ROWS[:1], "samples": 100, "seed": 3}
    answers = asyncio.run(_fire(served.url, [body] * 10, "/v1/models/diabetes-copy/predict"))
    assert all(answer.status_code == 200 for answer in answers), [answer.text for answer in answers]
    first = answers[0].json()
    for answer in answers:  # merged into runs of other sizes: equal up to float32 summation order
        assert np.allclose(answer.json()["mean"], first["mean"], rtol=1e-6)
        assert np.allclose(answer.json()["std"], first["std"], rtol=1e-5)


def test_the_launcher_splits_torch_threads_and_removes_the_shared_folder(monkeypatch):
    from mcdropout import _serve_workers

    monkeypatch.delenv("MCD_TORCH_THREADS", raising=False)
    monkeypatch.setattr(_serve_workers, "cores", lambda: 8)
    with worker_environment(3) as folder:
        assert os.environ["MCD_TORCH_THREADS"] == "2"  # 3 workers x 2 threads <= 8 cores
        assert Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]) == folder / "metrics"
        assert (folder / "control").is_dir() and oct(folder.stat().st_mode & 0o777) == "0o700"
    assert not folder.exists() and "MCD_TORCH_THREADS" not in os.environ
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    monkeypatch.setenv("MCD_TORCH_THREADS", "4")  # the setting overrides the split
    with worker_environment(4):
        assert os.environ["MCD_TORCH_THREADS"] == "4"
    with worker_environment(1) as folder:  # one process: as before, nothing shared
        assert folder is None and "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_sigterm_drains_every_worker(served):
    """SIGTERM to the server while both workers hold requests: every request in flight is answered, then every
    worker and the server exit. (Last in this module: it stops the module's server.)"""
    pids = [worker["pid"] for worker in _wait_for_workers(served.url, 2)]
    answers: list[httpx.Response] = []
    bodies = [{"inputs": datasets.digits(0).x_test[:100].tolist(), "samples": 300, "seed": i} for i in range(16)]
    # one connection every 20 ms: a burst of connections can all be taken by the worker that wakes first
    started: list[int] = []
    sending = threading.Thread(target=lambda: answers.extend(asyncio.run(
        _fire(served.url, bodies, "/v1/models/digits/predict", stagger_s=0.02, started=started))))
    sending.start()
    deadline = time.monotonic() + 60
    while True:  # every request sent, each worker holding some (a connection of its own: not yet answered)
        held = _in_flight(pids)
        if len(started) == len(bodies) and all(held.values()):
            break
        assert sending.is_alive() and time.monotonic() < deadline, f"the requests did not reach both workers: {held}"
        time.sleep(0.01)
    time.sleep(0.1)  # their bodies read: a connection accepted but not yet read is closed by a stopping server
    served.process.send_signal(signal.SIGTERM)
    sending.join(90)
    assert [answer.status_code for answer in answers] == [200] * len(bodies), [a.text for a in answers]
    assert all(len(answer.json()["probs"]) == 100 for answer in answers)
    assert served.process.wait(60) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)


def _in_flight(pids: list[int]) -> dict[int, int]:
    """Established TCP connections per worker (its sockets in /proc/net/tcp), the requests it holds."""
    established = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01":  # ESTABLISHED
            established.add(fields[9])  # inode
    counts = {}
    for pid in pids:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        counts[pid] = len(inodes & established)
    return counts
