"""Ray Serve benchmark: `mcdropout serve --ray --replicas N` against the single process (`mcdropout serve`).

    .venv/bin/python bench/ray_serve.py [--seconds 8] [--rounds 2] [--replicas 2]

Both servers run at once on 127.0.0.1 (free ports; gRPC off; the Ray one on a local Ray that it starts and
stops), and the rounds alternate between them so that the machine's drift hits both alike. Single-row
`diabetes` requests at T=100 come from 1, 16 and 64 closed-loop keep-alive clients; `GET /v2/health/live`
(no model work) from 64 clients gives the ceiling of the path itself (Serve: the proxy and the handle).

Where a request's time goes through Serve, at 1 client, from per-request medians of what the answers carry:
the client's wait; the proxy's wait for the answer's head (``Server-Timing: serve``); the replica's time in
the app (``Server-Timing: app``). The proxy's own part is the client's wait less the proxy's wait (its HTTP
server, and loopback); the handle's is the proxy's wait less the app's (routing, the Ray actor call carrying
the ASGI messages, both ways). Memory: resident set size of the single process, of each replica, and of
Serve's proxy and controller.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _serving import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = 100
CONCURRENCY = (1, 16, 64)
_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")
_TIMING = re.compile(rb"(?i)\r\nserver-timing: *(\w+);dur=([0-9.]+)")


class Contender:
    def __init__(self, name: str, command: list[str], models: Path, seconds: float) -> None:
        self.name = name
        self.port = free_port()
        env = {**os.environ, "MCD_MODELS_DIR": str(models), "MCD_GRPC_PORT": "0", "MCD_MAX_QUEUE": "1024",
               "MCD_LOG_LEVEL": "warning"}
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.process = subprocess.Popen([*command, "--port", str(self.port), "--models-dir", str(models)],
                                        cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_ready(self.url, self.process, seconds)
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(120)
        except subprocess.TimeoutExpired:
            self.process.kill()
        Path(self.log.name).unlink(missing_ok=True)


def requests(port: int, path: str) -> list[bytes]:
    if path.endswith("/live"):
        return [f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()]
    from mcdropout.training import datasets

    prepared = []
    for row in datasets.diabetes(0).x_test[:64].tolist():
        body = json.dumps({"inputs": [row], "samples": SAMPLES}).encode()
        prepared.append(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return prepared


async def _ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, dict]:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(int(_LENGTH.search(head).group(1)))
    return int(head[9:12]), {name.decode(): float(value) for name, value in _TIMING.findall(head)}


async def load(port: int, path: str, clients: int, seconds: float) -> dict:
    """Closed loop: each client sends its next request when the last is answered."""
    prepared = requests(port, path)
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(clients)]
    await _ask(*streams[0], prepared[0])  # warm-up
    waits: list[float] = []
    timings: list[dict] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client(index: int, reader, writer) -> None:
        nonlocal errors
        sent = index
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            status, timing = await _ask(reader, writer, prepared[sent % len(prepared)])
            waits.append(time.perf_counter() - started)
            timings.append(timing)
            errors += status != 200
            sent += clients

    started = time.perf_counter()
    await asyncio.gather(*(client(i, *stream) for i, stream in enumerate(streams)))
    elapsed = time.perf_counter() - started
    for _, writer in streams:
        writer.close()
    return {"waits": waits, "timings": timings, "errors": errors, "rps": len(waits) / elapsed}


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory(contender: Contender) -> dict[str, list[float]]:
    """RSS in MB of the process, or of each Serve replica, proxy and controller under it."""
    if "ray" not in contender.name:
        return {"process": [_rss_mb(contender.process.pid)]}
    kinds = {"replica": b"ray::ServeReplica", "proxy": b"ray::ProxyActor", "controller": b"ray::ServeController"}
    found: dict[str, list[float]] = {kind: [] for kind in kinds}
    for pid in _descendants(contender.process.pid):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            for kind, prefix in kinds.items():
                if command.startswith(prefix):
                    found[kind].append(_rss_mb(pid))
        except OSError:
            continue
    return found


def _percentile(values: list[float], q: float) -> float:
    return 1e3 * float(np.percentile(values, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one point of one round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=2)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "mcdropout.cli", "serve"]
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder) / "models"
        models.mkdir()
        (models / "diabetes").symlink_to(ROOT / "models" / "diabetes")
        contenders: list[Contender] = []
        try:
            contenders.append(Contender("single process", cli, models, 120))
            for attempt in range(3):  # a local Ray gives its raylet a fixed 30 s to start: a busy machine can exceed it
                try:
                    contenders.append(Contender(f"ray serve x{args.replicas}",
                                                [*cli, "--ray", "--replicas", str(args.replicas)], models, 600))
                    break
                except RuntimeError as error:
                    print(f"the Ray contender did not start ({error}); trying again", file=sys.stderr)
                    if attempt == 2:
                        raise
            report(contenders, args)
        finally:
            for contender in contenders:
                contender.stop()


def report(contenders: list[Contender], args: argparse.Namespace) -> None:
    points = [("/v1/models/diabetes/predict", c) for c in CONCURRENCY] + [("/v2/health/live", 64)]
    results: dict[tuple[str, str, int], list[dict]] = {}
    for _ in range(args.rounds):
        for path, clients in points:
            for contender in contenders:
                outcome = asyncio.run(load(contender.port, path, clients, args.seconds))
                results.setdefault((contender.name, path, clients), []).append(outcome)
    single, ray = (c.name for c in contenders)
    print(f"# {platform.node()} ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f}; T={SAMPLES},"
          f" single-row diabetes, {args.rounds} rounds x {args.seconds:g} s, medians of rounds")
    print("| request | clients | single req/s (p50 ms) | Ray Serve req/s (p50 ms) | Ray / single | per replica"
          " req/s |")
    print("|---|---|---|---|---|---|")
    for path, clients in points:
        row = []
        for name in (single, ray):
            rounds = results[(name, path, clients)]
            waits = [w for r in rounds for w in r["waits"]]
            errors = sum(r["errors"] for r in rounds)
            row.append((statistics.median(r["rps"] for r in rounds), _percentile(waits, 50), errors))
        label = "predict" if "predict" in path else "live (no model work)"
        print(f"| {label} | {clients} | {row[0][0]:,.0f} ({row[0][1]:.1f}) | {row[1][0]:,.0f} ({row[1][1]:.1f}) |"
              f" {row[1][0] / row[0][0]:.2f}x | {row[1][0] / args.replicas:,.0f} |"
              + (f" errors: {row[0][2]}, {row[1][2]}" if row[0][2] or row[1][2] else ""))
    timings = [t for r in results[(ray, points[0][0], 1)] for t in r["timings"]]
    waits = [w * 1e3 for r in results[(ray, points[0][0], 1)] for w in r["waits"]]
    single_p50 = _percentile([w for r in results[(single, points[0][0], 1)] for w in r["waits"]], 50)
    app = statistics.median(t.get("app", float("nan")) for t in timings)
    serve_wait = statistics.median(t.get("serve", float("nan")) for t in timings)
    client = statistics.median(waits)
    print(f"\nWhere the time goes through Serve, 1 client, p50 ms: client {client:.2f} = proxy's own"
          f" {client - serve_wait:.2f} + handle {serve_wait - app:.2f} + app {app:.2f}"
          f" (the single process: {single_p50:.2f} for HTTP and app)")
    for contender in contenders:
        sizes = {kind: ", ".join(f"{mb:.0f}" for mb in values) for kind, values in memory(contender).items()}
        print(f"RSS MB, {contender.name}: " + "; ".join(f"{kind} {mb}" for kind, mb in sizes.items()))


if __name__ == "__main__":
    main()
