"""What the service benches share: a free loopback port, and waiting for a server they started."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, seconds: float = 60.0) -> None:
    """Return once ``url``'s /v2/health/ready answers 200; RuntimeError when ``process`` exits or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not become ready within {seconds:g} s")
        time.sleep(0.1)
