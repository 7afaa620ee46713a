"""`mcdropout serve --ray` on a local Ray cluster of two nodes (a head and a second node, each started here with
`ray start` on 127.0.0.1 and stopped here): whichever replica serves, the answer is the library's; an updated
model folder reaches every replica; a replica killed under load is replaced, the requests caught in it get 503
with Retry-After, never a hang, and a retry gets the same answer.

One cluster and one deployment (2 replicas of 1 CPU, one per node) serve the whole module: starting them is
most of its time. The Ray processes carry a token of this module's own, so the test finds and stops only them.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

import mcdropout as mcd
from tests.conftest import MODELS, ROOT, free_port

pytest.importorskip("ray.serve")

RAY = str(Path(sys.executable).with_name("ray"))
ROWS = np.random.default_rng(0).normal(0.0, 0.05, size=(20, 10)).round(4)  # diabetes' standardised features
SAMPLES = 50
RELOAD_INTERVAL_S = 1.0
# each node's own ports (two nodes share this machine; Ray's defaults would collide)
AGENTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
          "node-manager-port", "object-manager-port")


@dataclass
class Cluster:
    address: str
    env: dict[str, str]
    token: str
    logs: Path


def _started(process: subprocess.Popen, log: Path, line: str, seconds: float) -> None:
    """Wait until ``log`` holds ``line``; fail with the log when the process exits or time runs out."""
    deadline = time.monotonic() + seconds
    while line not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{' '.join(map(str, process.args))[:200]} did not start:\n"
                               f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def _stop(process: subprocess.Popen, seconds: float = 60) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _own_processes(token: str) -> list[int]:
    """Ray's processes of this module's cluster: those whose environment holds its token."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if f"RAY_AUTH_TOKEN={token}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _replica_processes(token: str) -> list[int]:
    replicas = []
    for pid in _own_processes(token):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::ServeReplica"):
                replicas.append(pid)
        except OSError:
            continue
    return replicas


def _node(arguments: list[str], env: dict[str, str], log: Path, nodes: list[subprocess.Popen],
          ports: tuple[str, ...] = AGENTS) -> None:
    """`ray start --block` of one node on 127.0.0.1, waited for. `ray start` gives its raylet a fixed 30 s to
    register, which a machine busy with other work can exceed (it then exits): up to 3 tries, fresh ports each."""
    for attempt in range(3):
        tried = log.with_suffix(f".{attempt}.log")
        with open(tried, "w") as sink:
            nodes.append(subprocess.Popen([RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                                           "--disable-usage-stats", *arguments, *_ports(*ports)], cwd=ROOT, env=env,
                                          stdout=sink, stderr=subprocess.STDOUT))
        try:
            _started(nodes[-1], tried, "block forever", 120)
            return
        except RuntimeError:
            _stop(nodes.pop())
            if attempt == 2:
                raise


def _ports(*names: str) -> list[str]:
    return [part for name in names for part in (f"--{name}", str(free_port()))]


def _argument(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Ray's socket paths must stay short: a folder directly in the system's temporary folder
    temp = Path(tempfile.mkdtemp(prefix="mcd-ray-"))
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # stopped after the app is gone: nothing to drain
           "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "service.ray_serve:proxy_middlewares"}
    nodes: list[subprocess.Popen] = []
    try:
        _node(["--head", "--include-dashboard", "false", "--temp-dir", str(temp)], env, temp / "head", nodes,
              ("port", "ray-client-server-port", *AGENTS))
        address = f"127.0.0.1:{_argument(nodes[0].args, '--port')}"
        # the second node before the deployment: Serve starts a proxy on every node it sees
        _node(["--address", address, "--temp-dir", str(temp)], env, temp / "node", nodes)
        yield Cluster(address, env, token, temp)
    finally:
        for node in reversed(nodes):
            _stop(node)
        for pid in _own_processes(token):  # any Ray process that outlived its node
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


@dataclass
class Deployment:
    url: str
    models: Path
    process: subprocess.Popen
    log: Path


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, tmp_path_factory) -> Iterator[Deployment]:
    """`mcdropout serve --ray --address ... --replicas 2` of a models folder holding diabetes as version 1."""
    models = tmp_path_factory.mktemp("ray-models")
    shutil.copytree(MODELS / "diabetes", models / "diabetes" / "1")
    port = free_port()
    log = cluster.logs / "serve.log"
    env = {**cluster.env, "MCD_RELOAD_INTERVAL_S": str(RELOAD_INTERVAL_S)}
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "mcdropout.cli", "serve", "--ray", "--address", cluster.address, "--replicas", "2",
             "--port", str(port), "--models-dir", str(models)], cwd=ROOT, env=env, stdout=sink,
            stderr=subprocess.STDOUT)
    try:
        _started(process, log, "mcdropout: serving on", 240)
        yield Deployment(f"http://127.0.0.1:{port}", models, process, log)
    finally:
        _stop(process)


@pytest.mark.parametrize("argv, message", [
    (["--replicas", "2"], "go with --ray"),
    (["--ray", "--autoscale", "3:1"], "--autoscale takes MIN:MAX with 0 <= MIN <= MAX"),
    (["--ray", "--replicas", "0"], "--replicas takes N >= 1"),
])
def test_bad_ray_options_are_refused_before_anything_starts(argv, message, capsys):
    from mcdropout.cli import main

    assert main(["serve", *argv]) == 2
    assert message in capsys.readouterr().err


def _body(index: int) -> dict:
    return {"inputs": [ROWS[index % len(ROWS)].tolist()], "samples": SAMPLES, "seed": index % 7}


def _solo(index: int) -> np.ndarray:
    """The library's answer to request ``index`` alone: (mean, std) of its row."""
    local = _bundle().predict(ROWS[index % len(ROWS)][None], samples=SAMPLES, seed=index % 7)
    return np.array([local.mean.numpy().ravel()[0], local.std.numpy().ravel()[0]])


@functools.cache
def _bundle():
    return mcd.load_bundle(MODELS / "diabetes", device="cpu")


def _served(answer: dict) -> np.ndarray:
    return np.array([np.ravel(answer["mean"])[0], np.ravel(answer["std"])[0]])


async def _concurrently(url: str, indices: list[int]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=len(indices))) as client:
        return await asyncio.gather(*(client.post("/v1/models/diabetes/predict", json=_body(i)) for i in indices))


async def _answering(url: str) -> set[str]:
    """The replicas that answer 16 readiness probes on connections of their own: each node's proxy prefers its
    own node's replica, and new connections spread over the proxies (they share the port)."""
    async def probe() -> str | None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return (await client.get("/v2/health/ready")).headers.get("x-mcdropout-replica")

    return {replica for replica in await asyncio.gather(*(probe() for _ in range(16))) if replica}


def test_200_concurrent_requests_over_two_replicas_each_equal_the_librarys_solo_answer(deployed):
    responses = asyncio.run(_concurrently(deployed.url, list(range(200))))
    assert [r.status_code for r in responses] == [200] * 200, [r.text for r in responses if r.status_code != 200]
    replicas = Counter(r.headers["x-mcdropout-replica"] for r in responses)
    assert len(replicas) == 2, replicas  # both replicas answered
    for index, response in enumerate(responses):
        # the same sub-networks, run in another process and batch: equal to float rounding
        np.testing.assert_allclose(_served(response.json()), _solo(index), rtol=1e-6, err_msg=str(index))


def test_an_updated_model_folder_reaches_every_replica_within_the_reload_interval(deployed):
    shutil.copytree(MODELS / "diabetes", deployed.models / "diabetes" / "2.partial")
    (deployed.models / "diabetes" / "2.partial").rename(deployed.models / "diabetes" / "2")  # appears whole
    written = time.monotonic()
    seen: dict[str, float] = {}  # replica -> when it first answered with version 2
    # A version is loaded once two polls agree on its files, then swapped in: two intervals and a load. Bursts of
    # concurrent requests reach both replicas (one connection would stay with its proxy's local replica).
    while len(seen) < 2 and time.monotonic() - written < 30:
        for response in asyncio.run(_concurrently(deployed.url, [3] * 16)):
            assert response.status_code == 200, response.text
            replica, version = response.headers["x-mcdropout-replica"], response.json()["model_version"]
            if replica in seen:
                assert version == 2, "a replica went back to version 1"
            elif version == 2:
                seen[replica] = time.monotonic() - written
                np.testing.assert_allclose(_served(response.json()), _solo(3), rtol=1e-6)
    assert len(seen) == 2, f"replicas serving version 2 after 30 s: {seen}"
    assert max(seen.values()) < 2 * RELOAD_INTERVAL_S + 10, seen


def test_a_replica_killed_under_load_is_replaced_its_requests_get_503_and_a_retry_the_same_answer(deployed,
                                                                                                  cluster):
    before = set(_replica_processes(cluster.token))
    assert len(before) == 2, before
    outcomes: list[tuple[int, httpx.Response | BaseException, float]] = []

    async def load() -> None:
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=deployed.url, timeout=30,
                                     limits=httpx.Limits(max_connections=32)) as client:
            async def client_loop(first: int) -> None:
                index = first
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        body = {**_body(index), "samples": 500}  # slow enough to be caught in the replica
                        outcome = await client.post("/v1/models/diabetes/predict", json=body)
                    except httpx.HTTPError as error:  # a timeout (a hang) or a dropped connection
                        outcome = error
                    outcomes.append((index, outcome, time.monotonic() - started))
                    index += 32

            loops = [asyncio.create_task(client_loop(first)) for first in range(32)]
            await asyncio.sleep(1.5)
            os.kill(sorted(before)[0], signal.SIGKILL)
            await asyncio.sleep(3)
            stop.set()
            await asyncio.gather(*loops)

    asyncio.run(load())
    failures = [(i, o) for i, o, _ in outcomes if not isinstance(o, httpx.Response)]
    assert not failures, failures[:5]
    statuses = Counter(o.status_code for _, o, _ in outcomes)
    assert set(statuses) <= {200, 503} and statuses[503] >= 1, statuses
    with httpx.Client(base_url=deployed.url, timeout=30) as client:
        for index, response, _ in outcomes:
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1" and "retry" in response.json()["error"]
                response = client.post("/v1/models/diabetes/predict", json={**_body(index), "samples": 500})
                assert response.status_code == 200, response.text
            solo = _bundle().predict(ROWS[index % len(ROWS)][None], samples=500, seed=index % 7)
            np.testing.assert_allclose(_served(response.json()), [solo.mean.item(), solo.std.item()], rtol=1e-6)
    # Serve starts a replica in the killed one's place, and it answers
    known = {o.headers.get("x-mcdropout-replica") for _, o, _ in outcomes}
    deadline = time.monotonic() + 180  # a replica starts in 10-20 s; far longer on a machine busy with other work
    while not asyncio.run(_answering(deployed.url)) - known:
        assert time.monotonic() < deadline, "no new replica answered within 180 s of the kill"
        time.sleep(0.5)
    assert len(_replica_processes(cluster.token)) == 2
