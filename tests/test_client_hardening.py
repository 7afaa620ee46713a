"""Every bad answer is a typed error; Retry-After is capped; ``timeout`` bounds the whole call.

A stand-in server on 127.0.0.1 answers what each test scripts, with a real model description.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mcdropout.client import AsyncClient, BadAnswer, Client, InvalidInput, Overloaded, TimedOut

INFO = {"name": "m", "status": "ready", "task": "regression", "input_shape": [2], "outputs": ["y"],
        "max_rows": 100}
ANSWER = {"model": "m", "version": "1", "task": "regression", "samples": 10, "samples_used": [10], "seed": 0,
          "outputs": ["y"], "mean": [[1.0]], "std": [[0.5]], "variance": [[0.25]], "epistemic_variance": [[0.05]],
          "aleatoric_variance": [[0.2]], "interval": {"level": 0.95, "lower": [[0.0]], "upper": [[2.0]]}}


class _Scripted(BaseHTTPRequestHandler):
    predict: tuple[int, dict, bytes] = (200, {}, b"")  # status, headers, body of the predict route
    drip = False  # send the body a byte every 0.2 s
    calls = 0

    def do_GET(self) -> None:
        self._send(200, {}, json.dumps(INFO).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).calls += 1
        self._send(*self.predict)

    def _send(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.drip and self.command == "POST":
            for index in range(len(body)):
                self.wfile.write(body[index:index + 1])
                self.wfile.flush()
                time.sleep(0.2)
        else:
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def stand_in():
    _Scripted.drip, _Scripted.calls = False, 0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _answer(status: int, body, headers: dict | None = None) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    _Scripted.predict = (status, headers or {}, raw)


@pytest.mark.parametrize("body", [{}, [], b"not json", b"[" * 5000 + b"]" * 5000, {**ANSWER, "mean": "x"},
                                  {**ANSWER, "samples_used": [10, 10, 10]}])
def test_a_200_that_is_not_the_answer_is_a_bad_answer(stand_in, body):
    _answer(200, body)
    with Client(stand_in, retries=0) as client, pytest.raises(BadAnswer) as error:
        client.predict("m", [[0.0, 1.0]])
    assert error.value.status == 200 and len(str(error.value)) < 600
    excerpt = error.value.excerpt  # the answer's start: its text, or the JSON it parsed to
    shown = body.decode() if isinstance(body, bytes) else repr(body)
    assert excerpt and shown.startswith(excerpt), excerpt


THREE_ROWS = {**ANSWER, **{key: ANSWER[key] * 3 for key in ("samples_used", "mean", "std", "variance",
                                                            "epistemic_variance", "aleatoric_variance")},
              "interval": {"level": 0.95, "lower": [[0.0]] * 3, "upper": [[2.0]] * 3}}


def test_the_row_count_of_the_answer_is_checked(stand_in):
    _answer(200, THREE_ROWS)
    with Client(stand_in, retries=0) as client, pytest.raises(BadAnswer, match="3 row"):
        client.predict("m", [[0.0, 1.0]])
    _answer(200, ANSWER)
    with Client(stand_in, retries=0) as client:
        assert client.predict("m", [[0.0, 1.0]]).mean.shape == (1, 1)


def test_a_422_whose_field_is_not_a_string(stand_in):
    _answer(422, {"error": "bad", "field": {"deep": [1, 2]}})
    with Client(stand_in, retries=0) as client, pytest.raises(InvalidInput) as error:
        client.predict("m", [[0.0, 1.0]])
    assert error.value.field is None and error.value.status == 422


@pytest.mark.parametrize("retry_after", ["inf", "3600", "nan", "soon"])
def test_retry_after_is_capped_by_max_backoff(stand_in, retry_after):
    _answer(503, {"error": "overloaded"}, {"Retry-After": retry_after})
    started = time.monotonic()
    with Client(stand_in, retries=2, backoff=0.01, max_backoff=0.2) as client, pytest.raises(Overloaded):
        client.predict("m", [[0.0, 1.0]])
    assert time.monotonic() - started < 2.0 and _Scripted.calls == 3


def test_async_retry_after_is_capped_too(stand_in):
    _answer(503, {"error": "overloaded"}, {"Retry-After": "inf"})

    async def call():
        async with AsyncClient(stand_in, retries=1, backoff=0.01, max_backoff=0.1) as client:
            await client.predict("m", [[0.0, 1.0]])

    started = time.monotonic()
    with pytest.raises(Overloaded):
        asyncio.run(call())
    assert time.monotonic() - started < 2.0


def test_timeout_bounds_the_whole_call_against_a_dripping_server(stand_in):
    """The answer arrives a byte every 0.2 s (about 80 s in all): every read is quick, the call is not."""
    _answer(200, ANSWER)
    _Scripted.drip = True
    started = time.monotonic()
    with Client(stand_in, timeout=1.0, retries=0) as client, pytest.raises(TimedOut):
        client.predict("m", [[0.0, 1.0]])
    assert time.monotonic() - started < 3.0

    async def call():
        async with AsyncClient(stand_in, timeout=1.0, retries=0) as client:
            await client.predict("m", [[0.0, 1.0]])

    started = time.monotonic()
    with pytest.raises(TimedOut):
        asyncio.run(call())
    assert time.monotonic() - started < 3.0


def test_an_answer_over_max_answer_bytes(stand_in):
    _answer(200, ANSWER)
    with Client(stand_in, retries=0, max_answer_bytes=100) as client, pytest.raises(BadAnswer, match="max_answer"):
        client.predict("m", [[0.0, 1.0]])
