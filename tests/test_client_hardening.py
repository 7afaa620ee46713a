"""Every bad answer is a typed error; Retry-After is capped; ``timeout`` bounds the whole call.

A stand-in server on 127.0.0.1 answers what each test scripts, with a real model description.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mcdropout.client import MAX_ANSWER_BYTES, AsyncClient, BadAnswer, Client, InvalidInput, Overloaded, TimedOut

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


@pytest.fixture()
def header_dripper():
    """A raw server on 127.0.0.1 that answers every request with a status line sent a byte every 0.1 s:
    each read is quick, the headers never end (for 60 s)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            line = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 600
            for index in range(len(line)):
                if stop.is_set():
                    return
                try:
                    conn.sendall(line[index:index + 1])
                except OSError:
                    return
                time.sleep(0.1)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    server.close()


def test_timeout_is_a_deadline_while_the_headers_drip(header_dripper):
    """Issue 28 item 13: the blocking client held timeout=3 for 30 s while a server dripped header bytes
    (httpx's timeouts are per read); the deadline now cuts every read, in both clients."""
    started = time.monotonic()
    with Client(header_dripper, timeout=1.0, retries=0) as client, pytest.raises(TimedOut):
        client.models()
    assert time.monotonic() - started < 2.5

    async def call():
        async with AsyncClient(header_dripper, timeout=1.0, retries=0) as client:
            await client.models()

    started = time.monotonic()
    with pytest.raises(TimedOut):
        asyncio.run(call())
    assert time.monotonic() - started < 2.5


def test_answers_are_capped_by_default_after_decompression(stand_in):
    """Issue 28 item 13: with no cap a gzip bomb (300 KB on the wire) was taken in whole; the default cap
    (256 MiB, decompressed) stops it, in both clients."""
    assert Client(stand_in).max_answer_bytes == AsyncClient(stand_in).max_answer_bytes == MAX_ANSWER_BYTES \
        == 256 * 2**20
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    body = bomb.compress(b" " * (MAX_ANSWER_BYTES + 2**24)) + bomb.flush()
    assert len(body) < 2**20
    _answer(200, body, {"content-encoding": "gzip"})
    started = time.monotonic()
    with Client(stand_in, retries=0, timeout=30) as client, pytest.raises(BadAnswer, match="max_answer_bytes"):
        client.predict("m", [[0.0, 1.0]])

    async def call():
        async with AsyncClient(stand_in, retries=0, timeout=30, max_answer_bytes=2**20) as client:
            await client.predict("m", [[0.0, 1.0]])

    with pytest.raises(BadAnswer, match="max_answer_bytes"):
        asyncio.run(call())
    assert time.monotonic() - started < 20
    with pytest.raises(ValueError, match="max_answer_bytes"):
        Client(stand_in, max_answer_bytes=0)


CLASSIFICATION = {"model": "m", "version": "1", "task": "classification", "samples": 10, "samples_used": [10],
                  "seed": 0, "classes": ["a", "b"], "probs": [[0.5, 0.5]], "label": [0], "class_name": ["a"],
                  "entropy": [0.69], "expected_entropy": [0.6], "mutual_information": [0.09],
                  "variation_ratio": [0.5]}
TWO_OUTPUTS = {**ANSWER, **{key: [[1.0, 2.0]] for key in ("mean", "std", "variance", "epistemic_variance",
                                                          "aleatoric_variance")},
               "interval": {"level": 0.95, "lower": [[0.0, 0.0]], "upper": [[2.0, 2.0]]}}


@pytest.mark.parametrize("body, message", [
    (CLASSIFICATION, "a classification answer for a regression model"),
    ({**ANSWER, "outputs": ["z"]}, "outputs ['z'], the model's are ['y']"),
    (TWO_OUTPUTS, "mean has shape (1, 2), expected (1, 1)"),
])
def test_an_answer_that_does_not_fit_the_model_is_a_bad_answer(stand_in, body, message):
    """Issue 28 item 13: a classification answer to a regression model was taken as a result."""
    _answer(200, body)
    with Client(stand_in, retries=0) as client, pytest.raises(BadAnswer, match=re.escape(message)):
        client.predict("m", [[0.0, 1.0]])

    async def call():
        async with AsyncClient(stand_in, retries=0) as client:
            await client.predict("m", [[0.0, 1.0]])

    with pytest.raises(BadAnswer, match=re.escape(message)):
        asyncio.run(call())


@pytest.mark.parametrize("encoding, wbits", [("gzip", 31), ("deflate", 15), ("deflate", -15)])
def test_a_compressed_answer_is_read(stand_in, encoding, wbits):
    """A gzip or deflate answer (a proxy compressing) is decoded once: it was decoded twice, a DecodingError."""
    packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
    _answer(200, packer.compress(json.dumps(ANSWER).encode()) + packer.flush(), {"content-encoding": encoding})
    with Client(stand_in, retries=0) as client:
        assert client.predict("m", [[0.0, 1.0]]).mean.tolist() == [[1.0]]

    async def call():
        async with AsyncClient(stand_in, retries=0) as client:
            return await client.predict("m", [[0.0, 1.0]])

    assert asyncio.run(call()).mean.tolist() == [[1.0]]


def test_a_gzip_bomb_never_holds_much_more_than_the_cap(stand_in):
    """Decoded here, a network read at a time no more than the cap + 1 byte: httpx's decoder turned one
    64 KiB read into ~64 MB before the cap was looked at."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    _answer(200, bomb.compress(b" " * 200 * 2**20) + bomb.flush(), {"content-encoding": "gzip"})
    tracemalloc.start()
    try:
        with Client(stand_in, retries=0, max_answer_bytes=2**20) as client, \
                pytest.raises(BadAnswer, match="max_answer_bytes"):
            client.predict("m", [[0.0, 1.0]])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, peak


def test_an_encoding_the_client_did_not_ask_for_is_a_bad_answer(stand_in):
    _answer(200, b"\x00" * 20, {"content-encoding": "br"})
    with Client(stand_in, retries=0) as client, pytest.raises(BadAnswer, match="content-encoding 'br'"):
        client.predict("m", [[0.0, 1.0]])


def test_the_deadline_holds_through_a_proxy_from_the_environment(header_dripper, monkeypatch):
    """httpx mounts its own transport for HTTP_PROXY: it is bounded by the deadline too (the dripping
    server stands in for a proxy that drips)."""
    monkeypatch.setenv("HTTP_PROXY", header_dripper)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    started = time.monotonic()
    with Client("http://models.invalid", timeout=1.0, retries=0) as client, pytest.raises(TimedOut):
        client.models()
    assert time.monotonic() - started < 2.5
