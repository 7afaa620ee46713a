"""The model repository against a real server: versions, their routes, hot reload, the repository API."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from .conftest import MODELS, run_server

ROW = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]
KEY = {"Authorization": "Bearer secret"}
INTERVAL = 0.2  # MCD_RELOAD_INTERVAL_S: a change is acted on after two scans that agree, ~0.4 s


def put_version(models: Path, name: str, version: int, source: str = "diabetes", manifest_name: str | None = None
                ) -> Path:
    """Copy a shipped bundle to models/<name>/<version>/, written aside and renamed in (as a deploy would)."""
    staging = models / f".staging-{name}-{version}"
    shutil.copytree(MODELS / source, staging)
    if manifest_name is not None:
        manifest = json.loads((staging / "manifest.json").read_text())
        manifest["name"] = manifest_name
        (staging / "manifest.json").write_text(json.dumps(manifest))
    target = models / name / str(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return target


def wait_for(check, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repository")
    models = root / "models"
    shutil.copytree(MODELS / "diabetes", models / "diabetes")  # flat: version 1
    put_version(models, "dia", 1)
    put_version(models, "dia", 2, manifest_name="diabetes_v2")  # served by its folder's name
    (models / "empty").mkdir()
    with run_server(root, models_dir=str(models), reload_interval_s=str(INTERVAL), api_keys="secret") as server:
        with httpx.Client(base_url=server.url, headers=KEY, timeout=30) as client:
            yield models, server, client


def test_versions_are_served_side_by_side_and_the_highest_is_the_default(repo):
    _, _, http = repo
    info = http.get("/v1/models/dia").json()
    assert info["status"] == "ready" and info["model_version"] == 2
    assert [(v["version"], v["status"]) for v in info["versions"]] == [(1, "ready"), (2, "ready")]
    assert http.get("/v1/models/dia", params={"version": "1"}).json()["model_version"] == 1
    default = http.post("/v1/models/dia/predict", json={"inputs": [ROW], "seed": 3}).json()
    first = http.post("/v1/models/dia/predict", params={"version": 1}, json={"inputs": [ROW], "seed": 3}).json()
    assert (default["model"], default["model_version"], first["model_version"]) == ("dia", 2, 1)
    assert default["mean"] == first["mean"]  # the same weights in both folders
    flat = http.get("/v1/models/diabetes").json()
    assert flat["model_version"] == 1 and [v["version"] for v in flat["versions"]] == [1]
    missing = http.post("/v1/models/dia/predict", params={"version": 7}, json={"inputs": [ROW]})
    assert missing.status_code == 404 and missing.json()["field"] == "version"
    bad = http.post("/v1/models/dia/predict", params={"version": "two"}, json={"inputs": [ROW]})
    assert bad.status_code == 422 and "positive integer" in bad.json()["error"]


def test_oip_version_routes(repo):
    _, _, http = repo
    metadata = http.get("/v2/models/dia/versions/1").json()
    assert metadata["name"] == "dia" and metadata["versions"] == ["1", "2"]
    assert http.get("/v2/models/dia").json()["versions"] == ["1", "2"]
    assert http.get("/v2/models/dia/versions/2/ready").json() == {"name": "dia", "ready": True}
    request = {"inputs": [{"name": "input", "shape": [1, 10], "datatype": "FP32", "data": ROW}],
               "parameters": {"seed": 3}}
    by_version = http.post("/v2/models/dia/versions/1/infer", json=request).json()
    default = http.post("/v2/models/dia/infer", json=request).json()
    assert (by_version["model_name"], by_version["model_version"], default["model_version"]) == ("dia", "1", "2")
    assert by_version["outputs"][0]["data"] == default["outputs"][0]["data"]
    assert http.get("/v2/models/dia/versions/5").status_code == 404
    assert http.post("/v2/models/dia/versions/5/infer", json=request).status_code == 404
    assert http.get("/v2/models/dia/versions/0/ready").status_code == 400


def test_start_up_says_one_line_per_model_and_the_folder_name_wins(repo):
    _, server, http = repo
    log = server.output()
    lines = [line for line in log.splitlines() if "serving model" in line]
    assert len(lines) == 3, log
    for name, version in (("diabetes", 1), ("dia", 1), ("dia", 2)):
        line = next(line for line in lines if f"model {name} version {version}:" in line)
        assert "regression" in line and "device cpu" in line and "parameters" in line
        assert "calibrated (sigma_scaling, conformal on 66 rows)" in line  # the shipped diabetes bundle
    assert "names it 'diabetes_v2'; served by its folder's name 'dia'" in log
    listed = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert listed["empty"]["status"] == "failed" and "neither a bundle" in listed["empty"]["error"]


def test_hot_reload_of_an_added_replaced_and_broken_version_while_requests_run(repo):
    models, server, http = repo
    statuses: Counter[int] = Counter()
    versions: Counter[int] = Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, headers=KEY, timeout=30) as client:
            while not stop.is_set():
                answer = client.post("/v1/models/dia/predict", json={"inputs": [ROW], "samples": 16})
                statuses[answer.status_code] += 1
                if answer.status_code == 200:
                    versions[answer.json()["model_version"]] += 1

    def default_version() -> int:
        return http.get("/v1/models/dia").json()["model_version"]

    def version_states() -> dict[int, dict]:
        return {v["version"]: v for v in http.get("/v1/models/dia").json()["versions"]}

    workers = [threading.Thread(target=load) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        put_version(models, "dia", 3)  # added
        wait_for(lambda: default_version() == 3, "version 3 served")
        # replaced in place: different weights (digits is not a regression model: use a changed manifest instead)
        manifest = json.loads((models / "dia" / "3" / "manifest.json").read_text())
        manifest["description"] = "replaced"
        (models / "dia" / "3" / "manifest.json").write_text(json.dumps(manifest))
        wait_for(lambda: http.get("/v1/models/dia").json()["description"] == "replaced", "version 3 reloaded")
        # broken replacement: the old files of version 3 stay served, and the failure is reported
        (models / "dia" / "3" / "weights.safetensors").write_bytes(b"not safetensors")
        wait_for(lambda: version_states()[3]["error"], "the broken replacement reported")
        state = version_states()[3]
        assert state["status"] == "ready" and "cannot read safetensors" in state["error"]
        assert default_version() == 3
        # a broken new version: listed as failed, the highest good one stays the default
        broken = put_version(models, "dia", 4)
        (broken / "weights.safetensors").write_bytes(b"")
        wait_for(lambda: 4 in version_states(), "version 4 listed")
        assert version_states()[4]["status"] == "failed" and default_version() == 3
        index = http.post("/v2/repository/index", json={}).json()
        assert {"name": "dia", "version": "4", "state": "UNAVAILABLE"}.items() <= next(
            e for e in index if e["name"] == "dia" and e.get("version") == "4").items()
        # removed: version 3 goes, version 2 is the default again
        shutil.rmtree(models / "dia" / "3")
        wait_for(lambda: default_version() == 2, "version 3 dropped")
        time.sleep(0.3)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert set(statuses) == {200}, statuses
    assert versions[3] > 0 and versions[2] > 0, versions
    shutil.rmtree(models / "dia" / "4")
    wait_for(lambda: 4 not in version_states(), "version 4 gone from the listing")


def test_repository_load_and_unload_behind_the_keys(repo):
    models, server, http = repo
    assert httpx.post(f"{server.url}/v2/repository/index").status_code == 401
    assert httpx.post(f"{server.url}/v2/repository/models/dia/unload").status_code == 401
    ready_only = http.post("/v2/repository/index", json={"ready": True}).json()
    assert {(e["name"], e.get("version")) for e in ready_only} >= {("diabetes", "1"), ("dia", "1"), ("dia", "2")}
    assert all(e["state"] == "READY" for e in ready_only)
    assert http.post("/v2/repository/models/diabetes/unload").json() == {}
    assert http.post("/v1/models/diabetes/predict", json={"inputs": [ROW]}).status_code == 404
    entry = next(e for e in http.post("/v2/repository/index").json() if e["name"] == "diabetes")
    assert entry == {"name": "diabetes", "version": None, "state": "UNAVAILABLE", "reason": "unloaded"}
    time.sleep(3 * INTERVAL)  # the poller leaves an unloaded model alone
    assert http.post("/v1/models/diabetes/predict", json={"inputs": [ROW]}).status_code == 404
    assert http.post("/v2/repository/models/diabetes/load").json() == {}
    assert http.post("/v1/models/diabetes/predict", json={"inputs": [ROW]}).status_code == 200
    assert http.post("/v2/repository/models/nothing/load").status_code == 404
    assert http.post("/v2/repository/models/nothing/unload").status_code == 404
    assert http.post("/v2/repository/models/empty/load").status_code == 400
