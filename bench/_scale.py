"""``bench/service.py --scale``: the ways past one core, side by side, in one run with one load generator.

Contenders, all serving the shipped ``diabetes`` bundle (a models folder holding only it) on 127.0.0.1:

- ``single``: ``mcdropout serve`` (one process);
- ``workers-2``: ``mcdropout serve --workers 2``;
- ``ray-2``: ``mcdropout serve --ray --replicas 2`` (skipped, saying so, where ``mcdropout serve --help`` has no
  ``--ray``);
- ``litserve-batched`` / ``litserve-unbatched``: the same weights behind LitServe with a careful user's batched
  MC loop (bench/_litserve_peer.py).

Every contender is started first and stays up; then, at 1, 16 and 64 closed-loop keep-alive clients, single-row
requests at T = 100 go to each in turn, in rounds that interleave the contenders so that the machine's drift
hits all alike. Per point: req/s (the rounds' median), p50 and p99 latency over every request, the CPU the
contender's processes used (cores: CPU seconds over wall seconds), and at the end each one's memory: the
resident set of each worker (a worker: the single process, each ``--workers`` process, each Ray Serve replica
actor, each LitServe process), and of all its processes. Then the targets, as ratios within this run.
Bounded: startup (90 s at most each) plus contenders x 3 concurrencies x ``seconds``.
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import torch
import uvloop
from _serving import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "diabetes"
CONCURRENCIES = (1, 16, 64)


class Contender:
    def __init__(self, name: str, command: list[str], ready_path: str, path: str | None, models: Path) -> None:
        self.name, self.path, self.ready_path = name, path, ready_path
        self.port = free_port()
        env = {**os.environ, "MCD_MODELS_DIR": str(models), "MCD_MAX_QUEUE": "1024", "MCD_GRPC_PORT": "0",
               "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([*command, "--port", str(self.port)], cwd=ROOT, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self.tree = psutil.Process(self.process.pid)

    def wait_ready(self, seconds: float = 90.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} was not ready within {seconds:g} s")

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.tree, *self.tree.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.processes():
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def memory(self) -> tuple[list[float], float, int]:
        """RSS (MB) of each worker, of every process together, and the process count."""
        processes = self.processes()
        rss = {p.pid: p.memory_info().rss / 2**20 for p in processes}
        if self.name == "single":
            workers = [self.tree.pid]
        elif self.name.startswith("ray"):
            workers = [p.pid for p in processes if p.name().startswith("ray::ServeReplica")
                       or "ServeReplica" in " ".join(p.cmdline()[:1])]
        elif self.name.startswith("litserve"):
            workers = list(rss)
        else:  # uvicorn's supervisor: its workers are the spawned children
            workers = [p.pid for p in self.tree.children() if "spawn_main" in " ".join(p.cmdline())]
        return [rss[pid] for pid in workers if pid in rss], sum(rss.values()), len(processes)

    def stop(self) -> None:
        """SIGTERM to every process it started (its own session), then SIGKILL to what is left: LitServe's
        workers outlive their parent."""
        for sig, seconds in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(seconds)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(1 if sig == signal.SIGTERM else 0)


def contenders(models: Path) -> list[Contender]:
    serve = [sys.executable, "-m", "mcdropout.cli", "serve", "--models-dir", str(models), "--log-level", "warning"]
    peer = [sys.executable, str(ROOT / "bench" / "_litserve_peer.py"), str(models / MODEL)]
    started = [Contender("single", serve, "/v2/health/ready", None, models),
               Contender("workers-2", [*serve, "--workers", "2"], "/v2/health/ready", None, models)]
    helped = subprocess.run([*serve[:4], "--help"], capture_output=True, text=True, cwd=ROOT).stdout
    if "--ray" in helped:
        started.append(Contender("ray-2", [*serve, "--ray", "--replicas", "2"], "/v2/health/ready", None, models))
    else:
        print("# ray-2 skipped: this checkout's `mcdropout serve` has no --ray")
    for batched in (True, False):
        name = "litserve-batched" if batched else "litserve-unbatched"
        started.append(Contender(name, [*peer, *(["--batched"] if batched else [])], "/health", "/predict", models))
    return started


def compare(load, summarise, seconds: float, rounds: int) -> None:
    """``load`` and ``summarise``: bench/service.py's load generator and its summary of rounds."""
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, python"
          f" {platform.python_version()}; load average before: {os.getloadavg()[0]:.1f}")
    print(f"# {MODEL}, single-row requests, T=100, closed-loop keep-alive clients; per point and contender"
          f" <= {seconds:g} s in {rounds} interleaved round(s)")
    with tempfile.TemporaryDirectory() as folder:
        models = Path(folder)
        (models / MODEL).symlink_to(ROOT / "models" / MODEL)
        started = contenders(models)
        try:
            for contender in started:
                contender.wait_ready()
            results, cores = {}, {}
            for concurrency in CONCURRENCIES:
                runs: dict[str, list[dict]] = {c.name: [] for c in started}
                spent = {c.name: [0.0, 0.0] for c in started}
                for _ in range(rounds):
                    for contender in started:
                        cpu, wall = contender.cpu_seconds(), time.perf_counter()
                        runs[contender.name].append(uvloop.run(load(
                            contender.port, MODEL, concurrency, 10**9, seconds / rounds, contender.path)))
                        spent[contender.name][0] += contender.cpu_seconds() - cpu
                        spent[contender.name][1] += time.perf_counter() - wall
                for contender in started:
                    results[(contender.name, concurrency)] = summarise(runs[contender.name])
                    cores[(contender.name, concurrency)] = spent[contender.name][0] / spent[contender.name][1]
            memory = {contender.name: contender.memory() for contender in started}
        finally:
            for contender in started:
                contender.stop()
    print(f"# load average after: {os.getloadavg()[0]:.1f}")
    _report([c.name for c in started], results, cores, memory)


def _report(names: list[str], results: dict, cores: dict, memory: dict) -> None:
    print("\n| contender | clients | requests | errors | req/s | p50 ms | p99 ms | CPU (cores) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        for concurrency in CONCURRENCIES:
            r = results[(name, concurrency)]
            print(f"| {name} | {concurrency} | {r['requests']} | {r['errors']} | {r['rps']:.0f} | {r['p50_ms']:.2f}"
                  f" | {r['p99_ms']:.2f} | {cores[(name, concurrency)]:.2f} |")
    print("\n| contender | RSS per worker MB | RSS all processes MB | processes |")
    print("|---|---|---|---|")
    for name in names:
        each, total, count = memory[name]
        print(f"| {name} | {', '.join(f'{mb:.0f}' for mb in each) or '-'} | {total:.0f} | {count} |")
    peers = [name for name in names if name.startswith("litserve")]
    print("\n| clients | workers-2 / single (req/s) | workers-2 / best LitServe (req/s) | workers-2 p50 - single p50 ms |"
          + (" ray-2 / single (req/s) |" if "ray-2" in names else ""))
    print("|---|---|---|---|" + ("---|" if "ray-2" in names else ""))
    for concurrency in CONCURRENCIES:
        workers, single = results[("workers-2", concurrency)], results[("single", concurrency)]
        best = max(results[(name, concurrency)]["rps"] for name in peers)
        ray = f" {results[('ray-2', concurrency)]['rps'] / single['rps']:.2f}x |" if "ray-2" in names else ""
        print(f"| {concurrency} | {workers['rps'] / single['rps']:.2f}x | {workers['rps'] / best:.2f}x"
              f" | {workers['p50_ms'] - single['p50_ms']:+.2f} |{ray}")
    print("\ntargets: at 64 clients workers-2 >= 1.6x single and >= 5x the best LitServe; at 1 client workers-2's"
          " p50 <= single's + 0.3 ms")
