"""``mcdropout serve --workers N``: what the worker processes share, set up before uvicorn starts them.

The workers are uvicorn's own (``uvicorn.run(..., workers=N)``): its supervisor binds the port once, starts N
processes that each accept on it, replaces a worker that dies, restarts them one by one on SIGHUP, and on
SIGTERM or Ctrl-C sends each worker SIGTERM, which drains it (requests in flight are answered, queued batches
finish) before it exits. Chosen over gunicorn with uvicorn workers because it needs no other dependency and
runs the very server configuration of one process (the bounded HTTP protocol, header and keep-alive limits,
graceful shutdown); what gunicorn adds (hooks, max-requests recycling) the service does not need: the one
hook a multiprocess Prometheus set-up wants, marking a dead worker's live gauges, the workers do themselves
(service/metrics.py).

Here, in the launcher, only the environment the workers inherit: a fresh private folder with
``metrics/`` (PROMETHEUS_MULTIPROC_DIR, prometheus_client's multiprocess mode: /metrics sums every worker)
and ``control/`` (MCDROPOUT_WORKERS_DIR: repository loads and unloads shared, service/workers.py), removed
when the server stops; and torch's threads split so that workers x threads <= cores, unless
MCD_TORCH_THREADS is set. This module imports neither the service nor torch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WORKERS_DIR = "MCDROPOUT_WORKERS_DIR"
METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's cpuset sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """torch's intra-op threads per worker by default: the cores shared out, at least one."""
    return max(1, cores() // workers)


@contextmanager
def worker_environment(workers: int) -> Iterator[Path | None]:
    """Set the environment ``workers`` processes inherit; yields the shared folder (None for one process,
    whose environment is left as it is). The folder is removed afterwards."""
    if workers <= 1:
        yield None
        return
    saved = {name: os.environ.get(name) for name in (WORKERS_DIR, METRICS_DIR, "MCD_TORCH_THREADS")}
    folder = Path(tempfile.mkdtemp(prefix="mcdropout-workers-"))  # mode 0700: this user's only
    try:
        for name, variable in (("metrics", METRICS_DIR), ("control", WORKERS_DIR)):
            (folder / name).mkdir()
            os.environ[variable] = str(folder / name)  # a stale PROMETHEUS_MULTIPROC_DIR would add old counts
        os.environ.setdefault("MCD_TORCH_THREADS", str(threads_per_worker(workers)))
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
