"""Memory and time bounded by settings, not by requests: returned samples capped before any work, large
bodies decoded off the event loop, request heads and slow clients bounded, work of requests whose client
left or whose deadline passed dropped before it runs, one compute lane per model. Real servers on
127.0.0.1; bounded in count and time."""

from __future__ import annotations

import asyncio
import os
import re
import runpy
import socket
import statistics
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch

import mcdropout as mcd
from service.decoding import Decoder

from .conftest import MODELS, run_server

SLOW = textwrap.dedent('''
    import time

    from torch import nn


    class Slow(nn.Module):
        """Sleeps ``sleep`` s on a batch holding a row whose first value is over 100: a slow request on demand."""

        def __init__(self, in_features=4, sleep=3.0):
            super().__init__()
            self.sleep = sleep
            self.drop = nn.Dropout(0.5)
            self.head = nn.Linear(in_features, 1)

        def forward(self, x):
            if bool((x[..., 0] > 100).any()):
                time.sleep(self.sleep)
            return self.head(self.drop(x))
''')
RETURNED = 5000  # MCD_MAX_RETURNED_VALUES of the server below
MAX_SAMPLES = 200


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """`mcdropout serve` (its HTTP protocol bounds request heads) with short limits, serving diabetes, digits and
    'slow' (a bundle whose model.py sleeps on a marked row), one lane each."""
    root = tmp_path_factory.mktemp("limits")
    (root / "models").mkdir()
    for name in ("diabetes", "digits"):
        (root / "models" / name).symlink_to(MODELS / name)
    (root / "slow.py").write_text(SLOW)
    torch.manual_seed(0)
    model = runpy.run_path(str(root / "slow.py"))["Slow"](4)
    mcd.save_bundle(model, root / "models" / "slow", task="regression", input_shape=[4],
                    config={"in_features": 4, "sleep": 3.5}, code=root / "slow.py")
    with run_server(root, cli=True, models_dir=str(root / "models"), trust_bundle_code="1", reload="false",
                    torch_threads="1", request_timeout_s="1", max_returned_values=str(RETURNED),
                    max_samples=str(MAX_SAMPLES), max_header_bytes="4096", request_read_timeout_s="1",
                    keep_alive_s="1") as server:
        yield server.url


def _metric(url: str, name: str, **labels: str) -> float:
    text = CLIENT.get(f"{url}/metrics").text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and _labels(line) == wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _labels(line: str) -> str:
    inside = line[line.index("{") + 1:line.index("}")]
    return ",".join(sorted(part for part in re.findall(r'\w+="[^"]*"', inside)))


CLIENT = httpx.Client(timeout=60)  # one client: a new one per call costs an SSL context, up to 0.3 s on a busy machine


def _predict(url: str, name: str, body: dict, timeout: float = 60) -> httpx.Response:
    return CLIENT.post(f"{url}/v1/models/{name}/predict", json=body, timeout=timeout)


DIGIT = [[float((i * 7) % 16) for i in range(64)]]


def test_returned_samples_over_the_limit_are_refused_before_any_work(url):
    drawn = _metric(url, "mcdropout_samples_total", model="digits")
    # 10 rows x 100 samples x 10 classes = 10,000 values > 5,000
    refused = _predict(url, "digits", {"inputs": DIGIT * 10, "samples": 100, "return_samples": True})
    assert refused.status_code == 422 and refused.json()["field"] == "return_samples"
    assert "5,000" in refused.json()["error"] and "MCD_MAX_RETURNED_VALUES" in refused.json()["error"]
    # 'auto' counts the server's maximum T: 3 rows x 200 x 10 = 6,000
    auto = _predict(url, "digits", {"inputs": DIGIT * 3, "samples": "auto", "return_samples": True})
    assert auto.status_code == 422 and "'auto'" in auto.json()["error"]
    assert _metric(url, "mcdropout_samples_total", model="digits") == drawn  # nothing was computed
    # within the limit: answered, and 'auto' draws no more than the server's maximum
    one = _predict(url, "digits", {"inputs": DIGIT, "samples": "auto", "return_samples": True})
    assert one.status_code == 200, one.text
    assert 2 <= len(one.json()["draws"][0]) == one.json()["samples_used"][0] <= MAX_SAMPLES
    fine = _predict(url, "diabetes", {"inputs": [[0.01] * 10] * 10, "samples": 100, "return_samples": True})
    assert fine.status_code == 200 and len(fine.json()["draws"]) == 10 and len(fine.json()["draws"][0]) == 100


def test_work_of_gone_clients_and_missed_deadlines_is_dropped(url):
    """The lane is held by a slow request (3.5 s) past the 1 s deadline; behind it, one request whose client
    leaves and one that gets its 504: neither is computed when the lane frees."""
    marked = {"inputs": [[500.0, 1.0, 1.0, 1.0]], "samples": 4, "seed": 1}
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_predict, url, "slow", marked)
        time.sleep(0.5)
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            _predict(url, "slow", {"inputs": [[1.0, 2.0, 3.0, 4.0]], "samples": 4, "seed": 2}, timeout=0.5)
        late = _predict(url, "slow", {"inputs": [[1.0, 2.0, 3.0, 4.0]], "samples": 4, "seed": 3})
        assert late.status_code == 504 and "MCD_REQUEST_TIMEOUT_S" in late.json()["error"]
        assert first.result().status_code == 504  # running when its deadline passed: answered 504, computed
    deadline = time.monotonic() + 15
    while _metric(url, "mcdropout_dropped_requests_total", model="slow", reason="deadline") < 1:
        assert time.monotonic() < deadline, CLIENT.get(f"{url}/metrics").text
        time.sleep(0.1)
    assert _metric(url, "mcdropout_dropped_requests_total", model="slow", reason="disconnected") == 1
    assert _metric(url, "mcdropout_dropped_requests_total", model="slow", reason="deadline") == 1
    assert _metric(url, "mcdropout_samples_total", model="slow") == 4  # the first request's 1 row x 4 only


def test_a_cheap_model_is_not_queued_behind_an_expensive_one(url):
    """1000 digits rows at T=200 keep digits' lane busy for seconds (past the 1 s deadline: answered 504, still
    computed); diabetes answers meanwhile."""
    runs = _metric(url, "mcdropout_compute_seconds_count", model="digits")

    def computing() -> bool:
        return _metric(url, "mcdropout_compute_seconds_count", model="digits") == runs

    heavy = {"inputs": DIGIT * 1000, "samples": MAX_SAMPLES, "seed": 5}
    with ThreadPoolExecutor(1) as pool:
        started = time.perf_counter()
        pool.submit(_predict, url, "digits", heavy)
        time.sleep(0.3)
        cheap = []
        while len(cheap) < 5 and computing():
            began = time.perf_counter()
            assert _predict(url, "diabetes", {"inputs": [[0.01] * 10], "samples": 10}).status_code == 200
            cheap.append(time.perf_counter() - began)
        overlapped = computing()
        deadline = time.monotonic() + 60
        while computing():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        busy = time.perf_counter() - started
    assert cheap and overlapped, f"the expensive run ({busy:.2f} s) ended before the cheap requests: no overlap"
    # On one shared lane the first cheap request would wait for most of the expensive run.
    assert max(cheap) < busy / 4, (cheap, busy)


def _wrong_body(values_per_row: int) -> bytes:
    row = "[" + ",".join(["0.1234567"] * values_per_row) + "]"
    return ('{"inputs": [' + ",".join([row] * 1000) + "]}").encode()


def test_large_bodies_are_decoded_off_the_event_loop(url):
    body = _wrong_body(450)  # 4.5 MB: 1000 diabetes rows of 450 values
    polls: list[float] = []
    answers: list[tuple[int, float]] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not done.is_set():
                began = time.perf_counter()
                assert client.get("/v2/health/live").status_code == 200
                polls.append(time.perf_counter() - began)
                time.sleep(0.01)

    def send() -> None:
        began = time.perf_counter()
        response = CLIENT.post(f"{url}/v1/models/diabetes/predict", content=body,
                               headers={"content-type": "application/json"})
        answers.append((response.status_code, time.perf_counter() - began))
        assert response.json()["field"] == "inputs[0]"

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: send(), range(4)))
    finally:
        done.set()
        poller.join()
    assert [status for status, _ in answers] == [422] * 4
    slowest = max(seconds for _, seconds in answers)
    # Parsed on the event loop, every poll during the 4 parses waited for the one under way (about half a
    # parse on average, all of them in turn: the slowest answer's time); off it, a poll is a few ms.
    assert len(polls) >= 10
    assert statistics.median(polls) < slowest / 20 and sorted(polls)[int(0.9 * len(polls))] < slowest / 4, (
        statistics.median(polls), max(polls), slowest)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_all(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed (s from now)."""
    began = time.perf_counter()
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.perf_counter() - began


def test_a_head_over_the_limit_is_431_and_closed(url):
    with _connect(url) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n")
        data, _ = _read_all(sock)
    assert data.startswith(b"HTTP/1.1 431 ") and b"MCD_MAX_HEADER_BYTES" in data
    assert httpx.get(f"{url}/v2/health/live").status_code == 200


SLOW_CLIENTS = {
    "a head that never ends": b"POST /v1/models/diabetes/predict HTTP/1.1\r\nhost: x\r\n",
    "a connection that sends nothing": b"",
    "a body that stalls": b"POST /v1/models/diabetes/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                          b"content-length: 1000\r\n\r\n{\"inputs\": ",
    "an idle kept-alive connection": b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\n\r\n",
}


def test_slow_and_idle_clients_are_answered_and_closed(url):
    """MCD_REQUEST_READ_TIMEOUT_S=1 and MCD_KEEP_ALIVE_S=1: each connection is closed within seconds."""
    socks = {case: _connect(url) for case in SLOW_CLIENTS}
    try:
        for case, sent in SLOW_CLIENTS.items():
            socks[case].sendall(sent)
        with ThreadPoolExecutor(len(socks)) as pool:
            ended = dict(zip(socks, pool.map(_read_all, socks.values())))
    finally:
        for sock in socks.values():
            sock.close()
    for case, (data, closed_after) in ended.items():
        status = b"200" if case == "an idle kept-alive connection" else b"408"
        assert data.split(b" ")[1:2] == [status], (case, data)
        assert status == b"200" or b"MCD_REQUEST_READ_TIMEOUT_S" in data
        assert 0.8 < closed_after < 8, (case, closed_after)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_the_decode_worker_exits_when_idle():
    """Its memory goes back after MCD_DECODE_WORKER_IDLE_S without a large body; the next one starts another."""

    async def scenario() -> tuple[int, int]:
        decoder = Decoder(threshold=0, idle_s=0.3)
        try:
            first = await decoder.run(1, os.getpid)
            assert first != os.getpid() and _alive(first)
            deadline = time.monotonic() + 20
            while _alive(first) or decoder.running:
                assert time.monotonic() < deadline, "the idle worker did not exit"
                await asyncio.sleep(0.05)
            return first, await decoder.run(1, os.getpid)
        finally:
            decoder.close()

    first, second = asyncio.run(scenario())
    assert second not in (first, os.getpid())
