"""service.protocol's bound on request heads (size: 431, time: 408), on a real uvicorn server in a thread with
a small echo app: refusals, and everything else untouched (keep-alive, pipelining, bodies by Content-Length or
chunked, bodies and heads split anywhere across reads). Also that the guard stands on uvicorn's public
interface only: a protocol class given as ``http=``, wrapping the class ``--http httptools`` names."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from uvicorn.importer import import_from_string

from service.protocol import BoundedHttpTools

LIMIT = 2048
TIMEOUT = 1.0


class Guard(BoundedHttpTools):
    max_head_bytes = LIMIT
    head_timeout_s = TIMEOUT


async def echo(scope, receive, send) -> None:
    if scope["type"] != "http":  # lifespan
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        return await send({"type": "lifespan.shutdown.complete"})
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = json.dumps({"path": scope["path"], "body": len(body), "headers": len(scope["headers"])}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(answer))]})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(echo, http=Guard, log_level="warning", timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    yield "http://127.0.0.1:%d" % sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)
    sock.close()


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:  # refused and closed before the client finished
        pass


def _read_all(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed (s from now)."""
    began = time.perf_counter()
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data, time.perf_counter() - began


def _answers(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response in ``data``: responses with Content-Length, one after another."""
    answers = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(
            b"content-length:")))
        answers.append((int(head.split(b" ")[1]), rest[:length]))
        data = rest[length:]
    return answers


def _post(path: str, body: bytes, *headers: bytes) -> bytes:
    return (b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n%s\r\n%s"
            % (path.encode(), len(body), b"".join(h + b"\r\n" for h in headers), body))


def _chunked(path: str, *chunks: bytes) -> bytes:
    return (b"POST %s HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" % path.encode()
            + b"".join(b"%x;ext=1\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\nx-trailer: 1\r\n\r\n")


def test_the_guard_wraps_uvicorn_and_subclasses_nothing_of_it():
    assert not any(cls.__module__.startswith("uvicorn") for cls in BoundedHttpTools.__mro__), (
        "service.protocol.BoundedHttpTools must not subclass uvicorn internals")
    wrapped = import_from_string(uvicorn.config.HTTP_PROTOCOLS["httptools"])
    assert BoundedHttpTools.inner_class is wrapped and issubclass(wrapped, asyncio.Protocol), (
        f"uvicorn {uvicorn.__version__}: `--http httptools` no longer names the asyncio.Protocol that"
        " service/protocol.py wraps; it needs updating")


def test_requests_on_a_kept_alive_connection_are_untouched(url):
    """Bodies over the head limit, bodies holding a blank line, chunked bodies, headers near the limit."""
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(3):
            assert client.get("/a").json() == {"path": "/a", "body": 0, "headers": 5}
            assert client.post("/b", content=b"\r\n\r\n" * 50_000).json()["body"] == 200_000
            pieces = [b"x" * 70_000, b"\r\n\r\nGET / HTTP/1.1\r\n"] * 3
            assert client.post("/c", content=iter(pieces)).json()["body"] == len(b"".join(pieces))
            assert client.get("/d", headers={"x-near": "a" * (LIMIT - 300)}).status_code == 200
        assert client.post("/e", content=b"z" * 1000).json()["body"] == 1000


def test_pipelined_requests_split_anywhere_are_all_answered(url):
    stream = (_post("/1", b"\r\n\r\n" + b"p" * 100_000) + _chunked("/2", b"q" * 5000, b"\r\n\r\n", b"r" * 3000)
              + b"GET /3 HTTP/1.1\r\nhost: x\r\nx-fill: " + b"f" * (LIMIT - 200) + b"\r\n\r\n"
              + _post("/4", b"s" * 10) + b"GET /5 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    expected = [(200, {"path": "/1", "body": 100_004, "headers": 2}), (200, {"path": "/2", "body": 8004, "headers": 3}),
                (200, {"path": "/3", "body": 0, "headers": 2}), (200, {"path": "/4", "body": 10, "headers": 2}),
                (200, {"path": "/5", "body": 0, "headers": 2})]
    for piece in (len(stream), 65_536, 1000, 37):
        with _connect(url) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for start in range(0, len(stream), piece):
                sock.sendall(stream[start:start + piece])
                if piece < 1000 and start % (piece * 50) == 0:
                    time.sleep(0.001)  # let the server read a piece at a time
            data, _ = _read_all(sock)
        assert [(status, json.loads(body)) for status, body in _answers(data)] == expected, piece


def test_heads_over_the_limit_are_431_and_closed(url):
    cases = {
        "one header, one read": b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n",
        "a long URL": b"GET /" + b"u" * (LIMIT + 10) + b" HTTP/1.1\r\nhost: x\r\n\r\n",
        "many small headers": b"GET / HTTP/1.1\r\n" + b"".join(b"x-%d: %s\r\n" % (i, b"v" * 40) for i in range(60))
                              + b"\r\n",
        "a head that never ends": b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 1_000_000,
    }
    for case, head in cases.items():
        for piece in (len(head), 500):
            with _connect(url) as sock:
                for start in range(0, len(head), piece):
                    _send(sock, head[start:start + piece])
                data, _ = _read_all(sock)
            assert data.startswith(b"HTTP/1.1 431 ") and b"connection: close" in data, (case, piece, data[:100])
            assert b"over 2048 bytes (MCD_MAX_HEADER_BYTES)" in _answers(data)[0][1], (case, piece)


def test_a_second_head_over_the_limit_on_a_kept_alive_connection_is_431(url):
    with _connect(url) as sock:
        sock.sendall(_post("/ok", b"b" * 50_000))
        time.sleep(0.2)
        _send(sock, b"GET /big HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 10_000 + b"\r\n\r\n")
        data, _ = _read_all(sock)
    assert [status for status, _ in _answers(data)] == [200, 431]


def _trickle(sock: socket.socket, data: bytes, every: float) -> None:
    for byte in data:
        _send(sock, bytes([byte]))
        time.sleep(every)


def test_slow_heads_are_408_and_closed_and_idle_time_between_requests_is_not_counted(url):
    """From the connection's start for its first head; from a later head's first byte on a kept-alive one."""
    head = b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n"

    def nothing(sock):
        return _read_all(sock)

    def trickled(sock):
        threading.Thread(target=_trickle, args=(sock, head, 0.1), daemon=True).start()  # 3 s in all
        return _read_all(sock)

    def kept_alive_then_trickled(sock):
        sock.sendall(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\n")
        time.sleep(1.5 * TIMEOUT)  # idle past the head timeout, within the keep-alive: not counted
        sock.sendall(b"GET /second HTTP/1.1\r\nhost: x\r\n\r\n")
        time.sleep(0.5 * TIMEOUT)
        threading.Thread(target=_trickle, args=(sock, head, 0.1), daemon=True).start()
        return _read_all(sock)  # timed from the third head's first byte, 2 s after the connection opened

    cases = {"a connection that sends nothing": (nothing, [408]), "a trickled head": (trickled, [408]),
             "a kept-alive connection's trickled third head": (kept_alive_then_trickled, [200, 200, 408])}
    socks = {case: _connect(url) for case in cases}
    try:
        with ThreadPoolExecutor(len(cases)) as pool:
            futures = {case: pool.submit(cases[case][0], socks[case]) for case in cases}
            ended = {case: future.result() for case, future in futures.items()}
    finally:
        for sock in socks.values():
            sock.close()
    for case, (data, closed_after) in ended.items():
        statuses = cases[case][1]
        assert [status for status, _ in _answers(data)] == statuses, (case, data)
        assert b"within 1 s (MCD_REQUEST_READ_TIMEOUT_S)" in _answers(data)[-1][1], case
        assert 0.9 * TIMEOUT < closed_after < TIMEOUT + 2, (case, closed_after)


def test_an_upgrade_uvicorn_does_not_take_leaves_the_guard_on(url):
    with _connect(url) as sock:
        sock.sendall(b"GET /up HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n")
        time.sleep(0.2)
        sock.sendall(b"GET /after HTTP/1.1\r\nhost: x\r\n\r\n")
        time.sleep(0.2)
        _send(sock, b"GET /big HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 10_000 + b"\r\n\r\n")
        data, _ = _read_all(sock)
    assert [status for status, _ in _answers(data)] == [200, 200, 431]


def test_a_malformed_request_is_still_uvicorns_400(url):
    with _connect(url) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nbad header\r\n\r\n")
        data, _ = _read_all(sock)
    assert data.startswith(b"HTTP/1.1 400 ")
