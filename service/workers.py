"""The worker processes of ``mcdropout serve --workers N``: repository loads and unloads reach every one.

Each worker is a process of uvicorn's supervisor with its own models, batchers and compute lanes
(service/state.py). A model folder that changes is seen by every worker's own poller (MCD_RELOAD). What the
repository API changes is shared through a folder the launcher makes (``MCDROPOUT_WORKERS_DIR``, removed when
the server stops):

- ``control.json``: the latest load or unload given through the API per model, numbered in the order they were
  given (a generation), e.g. ``{"generation": 7, "models": {"digits": {"action": "unload", "generation": 7}}}``;
  changed under an exclusive lock of ``control.lock`` and replaced whole, so no reader sees half of it;
- ``worker-<pid>.json``: each worker's state: the generation it has applied and the versions it serves.

The worker that answers a load or unload applies it, records it, applies whatever other workers recorded
before it, and answers once every live worker's state shows that generation (each worker reads the record
every 0.2 s): a 200 means every worker has it. Past MCD_REQUEST_TIMEOUT_S it answers 504 naming the workers
that have not applied it yet (they still will). A worker that starts later (the supervisor replaces one that
died) applies the record before it serves: an unloaded model is never loaded by it.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.inputs import ApiError
from service.processes import alive

if TYPE_CHECKING:
    from fastapi import Request

    from service.state import ServiceState

ENV = "MCDROPOUT_WORKERS_DIR"
CONTROL = "control.json"
_TICK_S = 0.2
_WAIT_TICK_S = 0.05

log = logging.getLogger("mcdropout.service")


class Peers:
    """This worker's side of the shared folder: the control record it applies and the state it reports."""

    def __init__(self, folder: Path, state: ServiceState) -> None:
        self.folder = folder
        self.state = state
        self.pid = os.getpid()
        self.applied = 0  # the record's generation this worker has applied
        self._lock = asyncio.Lock()  # one catch-up at a time (the loop, or a publish)
        self._task: asyncio.Task | None = None
        self._reported: dict[str, Any] | None = None

    @classmethod
    def joining(cls, state: ServiceState) -> Peers | None:
        """This worker's peers when the launcher made the shared folder (``mcdropout serve --workers N``), else
        None. Call before the models load: the models the record has unloaded stay unloaded."""
        folder = os.environ.get(ENV)
        if not folder:
            return None
        peers = cls(Path(folder), state)
        record = read_record(peers.folder)
        state.unloaded.update(name for name, entry in record["models"].items() if entry["action"] == "unload")
        peers.applied = record["generation"]
        return peers

    async def start(self) -> None:
        """Apply what was recorded while the models loaded, report this worker's state, and keep doing so."""
        await self.catch_up()
        await asyncio.to_thread(self.report)
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="mcdropout-workers")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        _status_file(self.folder, self.pid).unlink(missing_ok=True)  # stopping: no longer waited for

    async def publish(self, action: str, name: str, timeout_s: float) -> None:
        """Record ``action`` ("load" or "unload") of ``name`` (already applied here) and return once every live
        worker has applied it; ApiError 504 after ``timeout_s``."""
        generation = await asyncio.to_thread(self._record, action, name)
        await self.catch_up()
        await asyncio.to_thread(self.report)
        deadline = time.monotonic() + timeout_s
        while True:
            behind = [status["pid"] for status in await asyncio.to_thread(worker_states, self.folder)
                      if status["generation"] < generation]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise ApiError(504, f"the {action} of model {name!r} is applied on this worker, and not yet on"
                               f" worker(s) {', '.join(map(str, behind))} after {timeout_s:g} s"
                               " (MCD_REQUEST_TIMEOUT_S); they apply it when they can (GET /workers shows each)")
            await asyncio.sleep(_WAIT_TICK_S)

    async def catch_up(self) -> None:
        """Apply every entry of the record newer than what this worker applied, in the order given."""
        async with self._lock:
            record = await asyncio.to_thread(read_record, self.folder)
            if record["generation"] <= self.applied:
                return
            newer = sorted((entry["generation"], name, entry["action"]) for name, entry in record["models"].items()
                           if entry["generation"] > self.applied)
            for _, name, action in newer:
                await self._apply(action, name)
            self.applied = record["generation"]

    async def _apply(self, action: str, name: str) -> None:
        try:
            if action == "unload":
                await self.state.unload(name)
            else:
                await self.state.reload(name)
        except ApiError as error:  # e.g. its folder went away meanwhile: the state says so; nothing to apply
            log.info("model %s: %s from another worker not applied here: %s", name, action, error.message)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(_TICK_S)
            try:
                await self.catch_up()
                await asyncio.to_thread(self.report)
            except asyncio.CancelledError:
                raise
            except Exception:  # keeps following; what failed is logged
                log.exception("applying the workers' control record failed")

    def _record(self, action: str, name: str) -> int:
        with open(self.folder / "control.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            record = read_record(self.folder)
            record["generation"] += 1
            record["models"][name] = {"action": action, "generation": record["generation"]}
            _write_json(self.folder / CONTROL, record)
            return record["generation"]

    def report(self) -> None:
        """Write this worker's state file when it changed (the poller may have changed what is served)."""
        status = {"pid": self.pid, "generation": self.applied, **served_state(self.state)}
        if status != self._reported:
            _write_json(_status_file(self.folder, self.pid), status)
            self._reported = status


def served_state(state: ServiceState) -> dict[str, Any]:
    """What one worker serves: versions per model, failures, and models unloaded through the API."""
    return {"models": {name: sorted(versions) for name, versions in sorted(state.served.items())},
            "failed": dict(sorted(state.failures.items())), "unloaded": sorted(state.unloaded)}


def read_record(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / CONTROL).read_text())
    except FileNotFoundError:
        return {"generation": 0, "models": {}}


def worker_states(folder: Path) -> list[dict[str, Any]]:
    """Every live worker's state file (a dead worker's is removed), by pid."""
    states = []
    for path in sorted(folder.glob("worker-*.json")):
        try:
            status = json.loads(path.read_text())
        except (OSError, ValueError):  # removed as it stopped
            continue
        if alive(status["pid"]):
            states.append(status)
        else:
            path.unlink(missing_ok=True)
    return sorted(states, key=lambda status: status["pid"])


async def publish(request: Request, action: str, name: str) -> None:
    """For a repository route: share ``action`` of ``name`` with the other workers, if there are any."""
    peers: Peers | None = getattr(request.app.state, "peers", None)
    if peers is not None:
        await peers.publish(action, name, peers.state.settings.request_timeout_s)


def states(request: Request) -> list[dict[str, Any]]:
    """Each worker's state (GET /workers); one process: its own."""
    peers: Peers | None = getattr(request.app.state, "peers", None)
    if peers is None:
        return [{"pid": os.getpid(), "generation": 0, **served_state(request.app.state.service), "this": True}]
    peers.report()
    return [{**status, "this": status["pid"] == peers.pid} for status in worker_states(peers.folder)]


def _status_file(folder: Path, pid: int) -> Path:
    return folder / f"worker-{pid}.json"


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)
