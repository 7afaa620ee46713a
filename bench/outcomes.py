"""Outcome ingestion and the answer store's cost on predict.

    .venv/bin/python bench/outcomes.py [--rounds 4] [--rows 20000] [--blocks 15]

Starts the real app twice on 127.0.0.1: the answer store on (MCD_STORE=true, a fresh SQLite file, retention
MCD_STORE_MAX_ROWS = --rows) and off (MCD_STORE=false). Then:

1. predict latency with no outcomes posted: single-row `diabetes` requests at T=100, one at a time over a
   keep-alive connection, in blocks alternating between the two servers so that both see the same machine;
   p50 and p99 of each, and their ratio (store on / off);
2. outcome ingestion on the store-on server, in rounds: --rows rows answered (1000-row requests, T=2), then
   their outcomes posted in requests of 5000; rows/s counts the POSTs' wall time only. After each round:
   the server's resident memory and the rows the store holds, which retention keeps at --rows per model
   however many rounds run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _serving import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
MODEL = "diabetes"
PER_POST = 5000


class Server:
    def __init__(self, store: bool, folder: Path, rows: int) -> None:
        self.port = free_port()
        self.store = folder / "answers.sqlite3"
        env = {**os.environ, "MCD_MODELS_DIR": str(ROOT / "models"), "MCD_RELOAD": "false",
               "MCD_STORE": str(store).lower(), "MCD_STORE_PATH": str(self.store),
               "MCD_STORE_MAX_ROWS": str(rows), "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(self.port),
             "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=env)
        try:
            wait_ready(f"http://127.0.0.1:{self.port}", self.process, seconds=300)
        except RuntimeError:
            self.process.kill()
            raise
        self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def post(self, path: str, body: object) -> dict:
        self.connection.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        answer = self.connection.getresponse()
        content = answer.read()
        assert answer.status == 200, content[:300]
        return json.loads(content)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stored(self) -> tuple[int, int]:
        with sqlite3.connect(self.store) as connection:
            return tuple(connection.execute(f"SELECT COUNT(*) FROM {table} WHERE model = ?", (MODEL,)).fetchone()[0]
                         for table in ("answers", "outcomes"))

    def stop(self) -> None:
        self.connection.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def latencies(servers: dict[str, Server], blocks: int, calls: int = 20) -> dict[str, list[float]]:
    row = np.random.default_rng(0).normal(scale=0.05, size=(1, 10)).tolist()
    spent: dict[str, list[float]] = {name: [] for name in servers}
    for block in range(blocks + 1):
        for name, server in servers.items():
            for _ in range(calls):
                start = time.perf_counter()
                server.post(f"/v1/models/{MODEL}/predict", {"inputs": row, "samples": 100, "seed": 0})
                if block:  # the first block warms up
                    spent[name].append(time.perf_counter() - start)
    return spent


def ingest_round(server: Server, rows: int, rng: np.random.Generator) -> float:
    """Answer ``rows`` rows, then post their outcomes; the rows/s of the posts."""
    entries = []
    for start in range(0, rows, 1000):
        x = rng.normal(scale=0.05, size=(min(1000, rows - start), 10)).round(4).tolist()
        answer = server.post(f"/v1/models/{MODEL}/predict", {"inputs": x, "samples": 2})
        entries += [{"id": answer["id"], "row": i, "y": float(y)} for i, y in enumerate(rng.normal(150, 50, len(x)))]
    time.sleep(1.0)  # the background writer has written them (it flushes every 0.25 s)
    start = time.perf_counter()
    accepted = 0
    for first in range(0, len(entries), PER_POST):
        accepted += server.post(f"/v1/models/{MODEL}/outcomes", entries[first:first + PER_POST])["accepted"]
    seconds = time.perf_counter() - start
    assert accepted == rows, (accepted, rows)
    return rows / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="ingestion rounds")
    parser.add_argument("--rows", type=int, default=20000, help="rows per round, and MCD_STORE_MAX_ROWS")
    parser.add_argument("--blocks", type=int, default=15, help="alternating latency blocks of 20 calls each")
    args = parser.parse_args()
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()};"
          " client and servers share the machine")
    with tempfile.TemporaryDirectory() as folder:
        servers: dict[str, Server] = {}
        try:
            servers["store on"] = Server(True, Path(folder), args.rows)
            servers["store off"] = Server(False, Path(folder) / "off", args.rows)
            spent = latencies(servers, args.blocks)
            rng = np.random.default_rng(1)
            rounds = []
            for number in range(1, args.rounds + 1):
                rate = ingest_round(servers["store on"], args.rows, rng)
                rounds.append((number, rate, servers["store on"].rss_mb(), *servers["store on"].stored()))
        finally:
            for server in servers.values():
                server.stop()
    print(f"\n## predict latency, no outcomes posted: single-row {MODEL}, T=100, one at a time\n")
    print("| server | calls | p50 ms | p99 ms | p50 vs store off |")
    print("|---|---|---|---|---|")
    off = statistics.median(spent["store off"])
    for name, values in spent.items():
        p50, p99 = statistics.median(values), float(np.percentile(values, 99))
        print(f"| {name} | {len(values)} | {1e3 * p50:.2f} | {1e3 * p99:.2f} | {p50 / off:.3f}x |")
    print(f"\n## outcome ingestion: {args.rows} rows a round, posted {PER_POST} a request;"
          f" MCD_STORE_MAX_ROWS={args.rows}\n")
    print("| round | outcomes/s | server RSS MB | answer rows kept | outcomes kept |")
    print("|---|---|---|---|---|")
    for number, rate, rss, answers, outcomes in rounds:
        print(f"| {number} | {rate:,.0f} | {rss:.0f} | {answers:,} | {outcomes:,} |")


if __name__ == "__main__":
    main()
