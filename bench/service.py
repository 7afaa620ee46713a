"""Service benchmark: throughput and latency on loopback, dynamic batching on and off.

    .venv/bin/python bench/service.py [--seconds 15] [--requests 1000] [--rounds 3] [--baseline DIR]
    .venv/bin/python bench/service.py --scale [--seconds 6] [--rounds 2] [--quick]

Starts the real app with uvicorn on 127.0.0.1 (free ports) twice, with
MCD_BATCHING=true and false, and sends single-row requests for `diabetes` and
`digits` at T=100 from 1, 16 and 64 concurrent clients (each point bounded by a
request count and a time limit), in rounds that alternate between the two
servers so that the machine's drift hits both modes alike. It prints
throughput and p50/p99 latency, the batching speed-up at each concurrency, and
at concurrency 1 the p50 overhead of the HTTP round trip over a direct library
call on the same input, measured in this process in blocks alternating with
the HTTP calls. Server settings come from the environment (e.g.
MCD_TORCH_THREADS=1). With ``--baseline DIR`` (a checkout of another commit, e.g.
``git worktree add /tmp/base <commit>``) the two servers are this checkout and
that one, both batching, and the ratio column compares them. ``--scale`` compares instead the ways
to use more than one core: bench/_scale.py says how.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import uvloop

from _serving import free_port, wait_ready

import mcdropout as mcd
from mcdropout.training import datasets

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 100


def rows(model: str) -> list:
    split = datasets.diabetes(0) if model == "diabetes" else datasets.digits(0)
    return split.x_test[:64].tolist()


class Server:
    def __init__(self, batching: bool, root: Path = ROOT) -> None:
        self.port = free_port()
        env = {**os.environ, "MCD_MODELS_DIR": str(root / "models"), "MCD_BATCHING": str(batching).lower(),
               "MCD_MAX_QUEUE": "1024", "PYTHONPATH": str(root)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning", "--no-access-log"],
            cwd=root, env=env,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_ready(self.url, self.process)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: writes pre-built requests, reads answers by Content-Length.

    A load generator as lean as wrk's, so that it takes little of the two cores it shares with the
    server (aiohttp spent about 200 us of CPU per request here, a third of the server's own time).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        declared = _CONTENT_LENGTH.search(self.buffer, 0, end)
        if declared is None:
            raise RuntimeError(f"an answer without Content-Length: {bytes(self.buffer[:end])!r}")
        length = int(declared.group(1))
        if len(self.buffer) < end + 4 + length:
            return
        status = int(self.buffer[9:12])
        del self.buffer[:end + 4 + length]
        self.answer.set_result(status)

    def connection_lost(self, error: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error or ConnectionError("the server closed the connection"))

    async def send(self, request: bytes) -> int:
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.answer


_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def predict_requests(port: int, model: str, path: str | None = None) -> list[bytes]:
    """One pre-built HTTP request per test row (to ``path``, default the v1 predict route)."""
    requests = []
    for row in rows(model):
        body = json.dumps({"inputs": [row], "samples": SAMPLES}).encode()
        head = (f"POST {path or f'/v1/models/{model}/predict'} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        requests.append(head.encode() + body)
    return requests


async def load(port: int, model: str, concurrency: int, requests: int, seconds: float, path: str | None = None
               ) -> dict:
    """Closed loop: each client sends its next request when the last is answered."""
    prepared = predict_requests(port, model, path)
    latencies: list[float] = []
    errors = 0
    sent = 0
    loop = asyncio.get_running_loop()
    connections = [(await loop.create_connection(_Connection, "127.0.0.1", port))[1] for _ in range(concurrency)]
    await connections[0].send(prepared[0])  # warm-up
    stop_at = time.perf_counter() + seconds

    async def client(connection: _Connection, index: int) -> None:
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < stop_at:
            sent += 1
            start = time.perf_counter()
            errors += await connection.send(prepared[(index + sent) % len(prepared)]) != 200
            latencies.append(time.perf_counter() - start)

    started = time.perf_counter()
    await asyncio.gather(*(client(connection, i) for i, connection in enumerate(connections)))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.transport.close()
    return {"latencies": latencies, "errors": errors, "rps": len(latencies) / elapsed}


def summarise(rounds: list[dict]) -> dict:
    """Several rounds of one point: the median throughput, latency percentiles over every request."""
    latencies = [value for r in rounds for value in r["latencies"]]
    return {"requests": len(latencies), "errors": sum(r["errors"] for r in rounds),
            "rps": statistics.median(r["rps"] for r in rounds),
            "p50_ms": 1e3 * float(np.percentile(latencies, 50)), "p99_ms": 1e3 * float(np.percentile(latencies, 99))}


def single_p50_ms(port: int, model: str, blocks: int = 15, calls: int = 20) -> tuple[float, float]:
    """p50 of one request at a time over HTTP (one keep-alive connection, the least client overhead
    Python allows) and of a direct library call on the same row in this process, in alternating
    blocks so that both see the same machine."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    body = json.dumps({"inputs": rows(model)[:1], "samples": SAMPLES, "seed": 0})
    headers = {"content-type": "application/json"}
    bundle = mcd.load_bundle(ROOT / "models" / model, device="cpu")
    row = np.asarray(rows(model)[:1], dtype=np.float32)

    def over_http() -> None:
        connection.request("POST", f"/v1/models/{model}/predict", body, headers)
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200

    def direct() -> None:
        bundle.predict(row, samples=SAMPLES, seed=0)

    times: dict[Callable, list[float]] = {over_http: [], direct: []}
    for block in range(blocks + 1):
        for call, spent in times.items():
            for _ in range(calls):
                start = time.perf_counter()
                call()
                if block:  # the first block warms up
                    spent.append(time.perf_counter() - start)
    connection.close()
    return 1e3 * statistics.median(times[over_http]), 1e3 * statistics.median(times[direct])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="time limit per point and mode")
    parser.add_argument("--requests", type=int, default=1000,
                        help="request limit per point and mode (x concurrency/16 above 16)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per point, each a share of the limits")
    parser.add_argument("--baseline", type=Path, help="a checkout of another commit: compare its server with this"
                        " one's (both batching) instead of batching on and off")
    parser.add_argument("--scale", action="store_true", help="instead: the single process, --workers 2, Ray Serve"
                        " with 2 replicas and LitServe (bench/_scale.py; --seconds and --rounds apply)")
    parser.add_argument("--quick", action="store_true", help="with --scale: 1 s per point, one round")
    args = parser.parse_args()
    if args.scale:
        from _scale import compare

        return compare(load, summarise, seconds=1.0 if args.quick else args.seconds,
                       rounds=1 if args.quick else args.rounds)
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, python"
          f" {platform.python_version()}; client and server share the machine")
    print(f"# single-row requests, T={SAMPLES}; closed-loop clients; per point and mode <= {args.seconds:g} s"
          f" in {args.rounds} rounds alternating between the two servers; req/s is the rounds' median")
    if args.baseline is None:
        servers = {"on": Server(True), "off": Server(False)}  # both up: rounds alternate
    else:
        print(f"# this checkout ({_commit(ROOT)}) against the baseline {args.baseline} ({_commit(args.baseline)})")
        servers = {"this": Server(True), "baseline": Server(True, args.baseline.resolve())}
    first, second = servers
    try:
        single = {(model, mode): single_p50_ms(server.port, model) for model in ("diabetes", "digits")
                  for mode, server in servers.items()}
        results = {}
        for model in ("diabetes", "digits"):
            for concurrency in (1, 16, 64):
                count = max(1, args.requests * max(1, concurrency // 16) // args.rounds)
                rounds: dict[str, list[dict]] = {mode: [] for mode in servers}
                for _ in range(args.rounds):
                    for mode, server in servers.items():
                        rounds[mode].append(uvloop.run(
                            load(server.port, model, concurrency, count, args.seconds / args.rounds)))
                for mode in servers:
                    results[(model, concurrency, mode)] = summarise(rounds[mode])
    finally:
        for server in servers.values():
            server.stop()
    column = "batching" if args.baseline is None else "server"
    print(f"\n| model | clients | {column} | requests | errors | req/s | p50 ms | p99 ms | req/s vs {second} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (model, concurrency, mode), r in sorted(results.items(), key=lambda item: item[0][2] != first):
        ratio = r["rps"] / results[(model, concurrency, second)]["rps"]
        print(f"| {model} | {concurrency} | {mode} | {r['requests']} | {r['errors']}"
              f" | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {ratio:.2f}x |")
    print(f"\n| model | {column} | library p50 ms | HTTP p50 ms (keep-alive, one at a time) | overhead ms |")
    print("|---|---|---|---|---|")
    for (model, mode), (over_http, direct) in single.items():
        print(f"| {model} | {mode} | {direct:.2f} | {over_http:.2f} | {over_http - direct:.2f} |")


def _commit(root: Path) -> str:
    done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
