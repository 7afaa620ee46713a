"""Issue 28 item 9: an unloaded or removed model frees its memory, its compute-lane thread (and torch's
OpenMP threads of that thread) and its metric series.

A real server (uvicorn) over a models folder of its own: 20 model names, each a ~34 MB bundle, are copied
in, loaded, asked once, unloaded and removed, one after the other. Before the fix each name kept its
bundle (the queue-depth gauge's callback held its batcher), its lane thread and its OpenMP threads.
"""

from __future__ import annotations

import re
import shutil
import time

import httpx
import psutil
import pytest

from mcdropout.bundle import architectures, save_bundle

from .conftest import run_server

HIDDEN = [2048, 2048, 2048]  # ~8.4 M float32 parameters: ~34 MB of weights a load
CYCLES = 20


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory):
    config = {"in_features": 10, "out_features": 1, "hidden": HIDDEN, "dropout": 0.1}
    model = architectures.build("mlp", config)
    return save_bundle(model, tmp_path_factory.mktemp("bundles") / "big", task="regression", input_shape=[10],
                       architecture="mlp", config=config)


def _usage(pid: int) -> tuple[float, int]:
    process = psutil.Process(pid)
    return process.memory_info().rss / 2**20, process.num_threads()


def _cycle(http: httpx.Client, models, big_bundle, name: str) -> None:
    shutil.copytree(big_bundle, models / name)
    assert http.post(f"/v2/repository/models/{name}/load").status_code == 200
    answer = http.post(f"/v1/models/{name}/predict", json={"inputs": [[0.0] * 10] * 4, "samples": 20})
    assert answer.status_code == 200, answer.text
    assert http.post(f"/v2/repository/models/{name}/unload").status_code == 200
    shutil.rmtree(models / name)


def _settle(pid: int, threads_at_most: int, seconds: float = 10.0) -> tuple[float, int]:
    """The server's usage once its retired batchers have closed (they close in the background)."""
    deadline = time.monotonic() + seconds
    while True:
        rss, threads = _usage(pid)
        if threads <= threads_at_most or time.monotonic() > deadline:
            return rss, threads
        time.sleep(0.1)


def test_unloaded_and_removed_models_free_memory_threads_and_series(tmp_path, big_bundle):
    models = tmp_path / "models"
    models.mkdir()
    with run_server(tmp_path, models_dir=str(models), reload="false", max_model_params="100000000") as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        pid = server.process.pid
        for warm in range(3):  # allocator pools, torch's first-use state, the first OpenMP team
            _cycle(http, models, big_bundle, f"warm{warm}")
        rss0, threads0 = _settle(pid, 0, 2.0)
        for index in range(CYCLES):
            _cycle(http, models, big_bundle, f"m{index}")
        rss1, threads1 = _settle(pid, threads0)
        print(f"RSS {rss0:.0f} -> {rss1:.0f} MiB, threads {threads0} -> {threads1} after {CYCLES} names")
        metrics = http.get("/metrics").text
        for _ in range(CYCLES // 2):  # one name loaded and unloaded again and again
            _cycle(http, models, big_bundle, "same")
        rss2, threads2 = _settle(pid, threads0)
        print(f"RSS {rss1:.0f} -> {rss2:.0f} MiB, threads {threads1} -> {threads2} after {CYCLES // 2} reloads")
        for index in range(5):  # removed from the folder while served, no unload: the same
            name = f"gone{index}"
            shutil.copytree(big_bundle, models / name)
            assert http.post(f"/v2/repository/models/{name}/load").status_code == 200
            assert http.post(f"/v1/models/{name}/predict", json={"inputs": [[0.0] * 10]}).status_code == 200
            shutil.rmtree(models / name)
            assert http.post(f"/v2/repository/models/{name}/load").status_code == 404  # rescanned: removed
        rss3, threads3 = _settle(pid, threads0)
        print(f"RSS {rss2:.0f} -> {rss3:.0f} MiB, threads {threads2} -> {threads3} after 5 removals")
        removed = http.get("/metrics").text
        # a name served again is measured again: its series come back, counting from zero
        shutil.copytree(big_bundle, models / "same")
        assert http.post("/v2/repository/models/same/load").status_code == 200
        assert http.post("/v1/models/same/predict", json={"inputs": [[0.0] * 10]}).status_code == 200
        deadline = time.monotonic() + 10  # a batch is observed just after its answers are sent
        while "compute_seconds_count{model=\"same\"}" not in (again := http.get("/metrics").text):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    # Before: +1 lane thread and +1 OpenMP thread a name (+40 here), and each name's 34 MB bundle kept (+680 MB).
    assert threads1 <= threads0 + 2, (threads0, threads1)
    assert rss1 - rss0 < 150, (rss0, rss1)
    # series of unloaded names are gone, their request counts included (see ServiceMetrics.forget)
    kept = sorted(set(re.findall(r'model="(m\d+|warm\d)"', metrics)))
    assert kept == [], kept
    assert threads2 <= threads0 + 2 and rss2 - rss0 < 150, (rss0, rss2, threads0, threads2)
    assert threads3 <= threads0 + 2 and rss3 - rss0 < 150, (rss0, rss3, threads0, threads3)
    assert not re.search(r'mcdropout_\w+{[^}]*model="gone\d"', removed)
    assert 'mcdropout_queue_depth{model="same"} 0.0' in again
    assert 'mcdropout_compute_seconds_count{model="same"} 1.0' in again
    counted = re.search(r'mcdropout_requests_total{model="same",route="/v1/models/{name}/predict",status="200"} (\S+)',
                        again)
    assert counted and float(counted[1]) == 1.0, counted
