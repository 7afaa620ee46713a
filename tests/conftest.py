"""Shared fixtures: a real server on 127.0.0.1, started with uvicorn in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def run_server(tmp_path: Path, cli: bool = False, start_s: float = 60, **settings: str) -> Iterator[Server]:
    """uvicorn service.app:app (``cli``: ``mcdropout serve``, gRPC off unless set) on a free port with MCD_*
    settings, live within ``start_s`` seconds; stopped (SIGTERM) afterwards."""
    port = free_port()
    env = {**os.environ, "MCD_MODELS_DIR": str(MODELS), "MCD_STORE_PATH": str(tmp_path / "answers.sqlite3"),
           **{f"MCD_{k.upper()}": str(v) for k, v in settings.items()}}
    if cli:
        command = [sys.executable, "-m", "mcdropout.cli", "serve"]
        env = {"MCD_GRPC_PORT": "0", **env, "MCD_HOST": "127.0.0.1", "MCD_PORT": str(port)}
    else:
        command = [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1", "--port", str(port),
                   "--timeout-graceful-shutdown", "20"]
    log = tmp_path / f"server-{port}.log"
    with open(log, "w") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    server = Server(url, process, log)
    try:
        deadline = time.monotonic() + start_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.output()}")
            try:
                if httpx.get(f"{url}/v2/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start within {start_s:g} s:\n{server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def calibrated_models(tmp_path_factory) -> Path:
    """A models folder of every shipped bundle, with digits and diabetes as copies calibrated on their split's
    calibration rows: calibrated whether or not the shipped ones are (the others are linked as shipped)."""
    from mcdropout._calibrate import calibrate_on_split

    folder = tmp_path_factory.mktemp("calibrated-models")
    for bundle in sorted(MODELS.iterdir()):
        if bundle.name in ("digits", "diabetes"):
            shutil.copytree(bundle, folder / bundle.name)
            calibrate_on_split(folder / bundle.name, samples=20, quiet=True)
        elif bundle.is_dir() and not bundle.name.startswith("."):
            (folder / bundle.name).symlink_to(bundle)
    return folder


def edit_manifest(folder: Path, change) -> Path:
    """Apply ``change`` (a function of the parsed manifest.json) to a bundle folder's manifest, in place."""
    file = folder / "manifest.json"
    manifest = json.loads(file.read_text())
    change(manifest)
    file.write_text(json.dumps(manifest))
    return folder


def without_ids(answer: Any) -> Any:
    """An answer without its answer id (top level, and the echo in v2's parameters): every answer gets a
    fresh id, so two answers of one request are equal but for it."""
    if not isinstance(answer, dict):
        return answer
    kept = {key: value for key, value in answer.items() if key != "id"}
    if isinstance(kept.get("parameters"), dict):
        kept["parameters"] = {key: value for key, value in kept["parameters"].items() if key != "id"}
    return kept
