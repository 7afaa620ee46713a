"""Service benchmark: throughput and latency on loopback, dynamic batching on and off.

    .venv/bin/python bench/service.py [--seconds 15] [--requests 400]

Starts the real app with uvicorn on 127.0.0.1 (a free port) once with
MCD_BATCHING=true and once with false, and sends single-row requests for
`diabetes` and `digits` at T=100 from 1, 16 and 64 concurrent clients (each
point bounded by a request count and a time limit). It prints throughput and
p50/p99 latency, the batching speed-up at each concurrency, and at concurrency
1 the p50 overhead of the HTTP round trip over a direct library call on the
same input, measured in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import torch

import mcdropout as mcd
from mcdropout import datasets

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 100


def rows(model: str) -> list:
    split = datasets.diabetes(0) if model == "diabetes" else datasets.digits(0)
    return split.x_test[:64].tolist()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, batching: bool) -> None:
        self.port = free_port()
        env = {**os.environ, "MCD_MODELS_DIR": str(ROOT / "models"), "MCD_BATCHING": str(batching).lower(),
               "MCD_MAX_QUEUE": "1024"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning", "--no-access-log"],
            cwd=ROOT, env=env,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("the server did not become ready")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


async def load(url: str, model: str, concurrency: int, requests: int, seconds: float) -> dict:
    """Closed loop: each client sends its next request when the last is answered (aiohttp: light on CPU)."""
    inputs = rows(model)
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.perf_counter() + seconds
    path = f"{url}/v1/models/{model}/predict"

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < stop_at:
            sent += 1
            body = {"inputs": [inputs[(index + sent) % len(inputs)]], "samples": SAMPLES}
            start = time.perf_counter()
            async with session.post(path, json=body) as answer:
                await answer.read()
                errors += answer.status != 200
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async with session.post(path, json={"inputs": inputs[:1], "samples": SAMPLES}) as warm:
            await warm.read()
        started = time.perf_counter()
        await asyncio.gather(*(client(session, i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / elapsed,
            "p50_ms": 1e3 * float(np.percentile(latencies, 50)), "p99_ms": 1e3 * float(np.percentile(latencies, 99))}


def http_p50_ms(port: int, model: str, repeats: int = 300) -> float:
    """One keep-alive connection, one request at a time: the least client overhead Python allows."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    body = json.dumps({"inputs": rows(model)[:1], "samples": SAMPLES, "seed": 0})
    headers = {"content-type": "application/json"}
    times = []
    for index in range(repeats + 10):
        start = time.perf_counter()
        connection.request("POST", f"/v1/models/{model}/predict", body, headers)
        answer = connection.getresponse()
        answer.read()
        if index >= 10:
            times.append(time.perf_counter() - start)
        assert answer.status == 200
    connection.close()
    return 1e3 * statistics.median(times)


def library_p50_ms(model: str, repeats: int = 200) -> float:
    """A direct library call on the same single row, in this process."""
    bundle = mcd.load_bundle(ROOT / "models" / model, device="cpu")
    row = np.asarray(rows(model)[:1], dtype=np.float32)
    bundle.predict(row, samples=SAMPLES, seed=0)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        bundle.predict(row, samples=SAMPLES, seed=0)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="time limit per point")
    parser.add_argument("--requests", type=int, default=400, help="request limit per point (x concurrency/16 above 16)")
    args = parser.parse_args()
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, python"
          f" {platform.python_version()}; client and server share the machine")
    print(f"# single-row requests, T={SAMPLES}; closed-loop clients; each point <= {args.seconds:g} s")
    results = {}
    single = {}
    for batching in (True, False):
        server = Server(batching)
        try:
            if batching:
                single = {model: http_p50_ms(server.port, model) for model in ("diabetes", "digits")}
            for model in ("diabetes", "digits"):
                for concurrency in (1, 16, 64):
                    count = args.requests * max(1, concurrency // 16)
                    results[(model, concurrency, batching)] = asyncio.run(
                        load(server.url, model, concurrency, count, args.seconds))
        finally:
            server.stop()
    print("\n| model | clients | batching | requests | errors | req/s | p50 ms | p99 ms | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (model, concurrency, batching), r in results.items():
        speedup = r["rps"] / results[(model, concurrency, False)]["rps"]
        print(f"| {model} | {concurrency} | {'on' if batching else 'off'} | {r['requests']} | {r['errors']}"
              f" | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {speedup:.1f}x |")
    print("\n| model | library p50 ms | HTTP p50 ms (keep-alive, one at a time, batching on) | overhead ms |")
    print("|---|---|---|---|")
    for model in ("diabetes", "digits"):
        direct = library_p50_ms(model)
        print(f"| {model} | {direct:.2f} | {single[model]:.2f} | {single[model] - direct:.2f} |")


if __name__ == "__main__":
    main()
