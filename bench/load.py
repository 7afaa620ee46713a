"""Load benchmark: large bodies and slow clients against one server while its health is polled.

    .venv/bin/python bench/load.py [--bodies 8] [--body-mb 9.9] [--rounds 2] [--slow 400] [--read-timeout 5]
                                   [--tree CHECKOUT]

Starts `mcdropout serve` on 127.0.0.1 (a free port; gRPC off) and, against it, at once:
``--rounds`` rounds of ``--bodies`` concurrent v1 bodies of ``--body-mb`` MB each (diabetes rows of the
wrong length, so each is parsed whole and answered 422), and ``--slow`` connections that trickle a byte
every 0.5 s: half of them their request head, half their body. A separate process polls
``/v2/health/live`` every 10 ms on a kept-alive connection, first for 2 s with no load (the baseline),
then through the load. The server's resident memory (its own process, and with its decode worker) is
sampled every 50 ms. Prints health latency p50/p99/max, idle and loaded; RSS at start, peak and after
the load; how the large bodies and the slow connections were answered. Bounded: under 60 s.
``--tree`` serves another checkout's code (e.g. an older commit's worktree), for a before/after table.
The server's decode worker exits after ``--worker-idle`` s without a large body (MCD_DECODE_WORKER_IDLE_S);
"after" is measured 1.5 s later.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from _serving import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
FEATURES = 10  # diabetes


def poll_health(port: int, ready: multiprocessing.Event, stop: multiprocessing.Event,
                out: multiprocessing.Queue) -> None:
    """In its own process: GET /v2/health/live every 10 ms; send back (start, seconds, status) per poll."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    next_tick = time.perf_counter()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            conn.request("GET", "/v2/health/live")
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            status = 0
        times.append((started, time.perf_counter() - started, status))
        ready.set()
        next_tick += 0.010
        time.sleep(max(0.0, next_tick - time.perf_counter()))
    out.put(times)


class Memory(threading.Thread):
    """Samples the server's RSS (its own, and with its children) every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.samples: list[tuple[float, int, int]] = []
        self.running = True

    def now(self) -> tuple[int, int]:
        own = self.process.memory_info().rss
        children = 0
        for child in self.process.children(recursive=True):
            try:
                children += child.memory_info().rss
            except psutil.Error:
                pass
        return own, own + children

    def run(self) -> None:
        while self.running:
            self.samples.append((time.perf_counter(), *self.now()))
            time.sleep(0.05)


def wrong_body(megabytes: float) -> bytes:
    """A v1 body of ~``megabytes`` MB: 1000 diabetes rows, each with many more values than its 10 features."""
    rng = np.random.default_rng(0)
    per_row = int(megabytes * 1e6 / 1000 / 10)  # "0.1234567," is 10 bytes
    rows = ",".join("[" + ",".join(f"{v:.7f}" for v in rng.random(per_row)) + "]" for _ in range(1000))
    return b'{"inputs": [' + rows.encode() + b"]}"


async def send_body(port: int, body: bytes) -> tuple[int, float]:
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/models/diabetes/predict HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
                 b"content-length: %d\r\n\r\n" % len(body))
    writer.write(body)
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    return int(status_line.split()[1]) if status_line else 0, time.perf_counter() - started


async def trickle(port: int, head: bool, until: float) -> tuple[str, float]:
    """One slow client: its head (``head``) or its body one byte every 0.5 s; what the server did, and when."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/models/diabetes/predict HTTP/1.1\r\nhost: bench\r\n")
    if not head:
        writer.write(b"content-type: application/json\r\ncontent-length: 100000\r\n\r\n{")
    try:
        while time.perf_counter() < until:
            try:
                line = await asyncio.wait_for(reader.readline(), 0.5)
                status = line.split()[1].decode() if line else "closed"
                return status, time.perf_counter() - started
            except asyncio.TimeoutError:
                writer.write(b"x" if head else b" ")
                await writer.drain()
        return "still open", time.perf_counter() - started
    except ConnectionError:
        return "reset", time.perf_counter() - started
    finally:
        writer.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def load(port: int, args: argparse.Namespace, body: bytes) -> tuple[list, list]:
    until = time.perf_counter() + args.read_timeout + 8
    slow = [asyncio.create_task(trickle(port, k % 2 == 0, until)) for k in range(args.slow)]
    answers = []
    for _ in range(args.rounds):
        answers += await asyncio.gather(*(send_body(port, body) for _ in range(args.bodies)))
    return answers, await asyncio.gather(*slow)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bodies", type=int, default=8)
    parser.add_argument("--body-mb", type=float, default=9.9)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slow", type=int, default=400)
    parser.add_argument("--read-timeout", type=float, default=5.0, help="MCD_REQUEST_READ_TIMEOUT_S of the server")
    parser.add_argument("--worker-idle", type=float, default=2.0, help="MCD_DECODE_WORKER_IDLE_S of the server")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose server runs (default: this one)")
    args = parser.parse_args()
    tree = args.tree.resolve()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped: the server is stopped too (finally)
    began = time.perf_counter()
    port = free_port()
    env = {**os.environ, "MCD_MODELS_DIR": str(tree / "models"), "MCD_PORT": str(port), "MCD_GRPC_PORT": "0",
           "MCD_RELOAD": "false", "MCD_LOG_LEVEL": "warning", "MCD_REQUEST_READ_TIMEOUT_S": str(args.read_timeout),
           "MCD_DECODE_WORKER_IDLE_S": str(args.worker_idle), "PYTHONPATH": str(tree)}
    server = subprocess.Popen([sys.executable, "-m", "mcdropout.cli", "serve"], cwd=tree, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server)
        for _ in range(20):  # warm: the routes, the batcher, one engine run per model asked
            httpx.post(f"http://127.0.0.1:{port}/v1/models/diabetes/predict", json={"inputs": [[0.01] * FEATURES]})
        body = wrong_body(args.body_mb)
        time.sleep(1.0)
        memory = Memory(server.pid)
        start_own, start_tree = memory.now()
        memory.start()

        context = multiprocessing.get_context("spawn")
        results = context.Queue()

        def polled(seconds: float | None, during=None):
            ready, stop = context.Event(), context.Event()
            poller = context.Process(target=poll_health, args=(port, ready, stop, results))
            poller.start()
            ready.wait(60)  # the poller's interpreter has started and polled once
            outcome = asyncio.run(during()) if during else time.sleep(seconds)
            stop.set()
            times = results.get(timeout=30)
            poller.join(10)
            return times, outcome

        idle, _ = polled(2.0)
        loaded_from = time.perf_counter()
        loaded, (answers, slow) = polled(None, lambda: load(port, args, body))
        loaded_until = time.perf_counter()
        time.sleep(args.worker_idle + 1.5)  # the server settles; its decode worker exits
        memory.running = False
        memory.join()
        after_own, after_tree = memory.now()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    idle_ms = [seconds * 1000 for _, seconds, _ in idle[1:]]
    load_ms = [seconds * 1000 for started, seconds, _ in loaded if loaded_from <= started <= loaded_until]
    failed = sum(1 for _, _, status in loaded if status != 200)
    peak_own = max(own for _, own, _ in memory.samples)
    peak_tree = max(tree for _, _, tree in memory.samples)
    mb = 1 / 2**20
    print(f"# {platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}; server: mcdropout serve"
          f" from {tree}, MCD_REQUEST_READ_TIMEOUT_S={args.read_timeout:g},"
          f" MCD_DECODE_WORKER_IDLE_S={args.worker_idle:g}")
    print(f"load: {args.rounds} x {args.bodies} concurrent bodies of {len(body) / 1e6:.1f} MB (wrong-shaped rows),"
          f" {args.slow} slow connections (a byte every 0.5 s: {args.slow // 2 + args.slow % 2} heads,"
          f" {args.slow // 2} bodies); health polled every 10 ms from another process\n")
    print("| health /v2/health/live | polls | p50 ms | p99 ms | max ms | failed |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| idle (baseline) | {len(idle_ms)} | {percentile(idle_ms, 50):.2f} | {percentile(idle_ms, 99):.2f} |"
          f" {max(idle_ms):.2f} | 0 |")
    print(f"| under load | {len(load_ms)} | {percentile(load_ms, 50):.2f} | {percentile(load_ms, 99):.2f} |"
          f" {max(load_ms):.2f} | {failed} |")
    print(f"\np99 under load / idle p99: {percentile(load_ms, 99) / percentile(idle_ms, 99):.1f}x;"
          f" target p99 < 100 ms: {'met' if percentile(load_ms, 99) < 100 else 'NOT met'}\n")
    print(f"| server RSS (MB) | start | peak | after ({args.worker_idle + 1.5:g} s) | after / start |")
    print("|---|---:|---:|---:|---:|")
    print(f"| server process | {start_own * mb:.0f} | {peak_own * mb:.0f} | {after_own * mb:.0f} |"
          f" {after_own / start_own:.2f} |")
    print(f"| with its children (decode worker) | {start_tree * mb:.0f} | {peak_tree * mb:.0f} | {after_tree * mb:.0f} |"
          f" {after_tree / start_tree:.2f} |")
    statuses = sorted({status for status, _ in answers})
    seconds = [s for _, s in answers] or [float("nan")]
    print(f"\nlarge bodies: {len(answers)} answered with status {statuses}; each in {min(seconds):.2f}-"
          f"{max(seconds):.2f} s (send + parse + answer)")
    outcomes: dict[str, list[float]] = {}
    for status, after in slow:
        outcomes.setdefault(status, []).append(after)
    for status, afters in sorted(outcomes.items()):
        print(f"slow connections ended by {status!r}: {len(afters)}, after {min(afters):.1f}-{max(afters):.1f} s")
    print(f"\nwhole run: {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
