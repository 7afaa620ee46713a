"""Operator basics against a real `mcdropout serve`: offline /docs and /redoc, JSON logs at a chosen
level, CORS origins, flat rows for an image model, and a missing extra named with its install command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import MODELS, ROOT, free_port, without_ids

ORIGIN = "http://ui.example.test"


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """`mcdropout serve` of the digits bundle alone, JSON logs at debug level, one CORS origin."""
    folder = tmp_path_factory.mktemp("ops")
    (folder / "models").mkdir()
    (folder / "models" / "digits").symlink_to(MODELS / "digits")
    port = free_port()
    log = folder / "server.log"
    env = {**os.environ, "MCD_CORS_ORIGINS": ORIGIN, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "mcdropout.cli", "serve", "--models-dir", str(folder / "models"), "--port",
             str(port), "--log-level", "debug", "--log-format", "json"],
            cwd=folder, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_same_origin_assets(served, page):
    url, _ = served
    html = httpx.get(url + page).text
    references = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
    references += re.findall(r"""(?:url|spec-url)[:=]\s*["']([^"']+)["']""", html)
    assert references and not [r for r in references if not r.startswith("/") or r.startswith("//")], references
    assert "http://" not in html and "https://" not in html
    for reference in set(references):
        response = httpx.get(url + reference)
        assert response.status_code == 200 and response.content, reference
    assert "/openapi.json" in references


def test_every_schema_reference_of_the_openapi_document_resolves(served):
    """ReDoc refuses a document with a dangling reference ("Invalid reference token")."""
    url, _ = served
    document = httpx.get(url + "/openapi.json").json()
    references = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', json.dumps(document)))
    assert "V2InferInput" in references
    assert references <= set(document["components"]["schemas"])
    assert "$defs" not in json.dumps(document)


def test_logs_are_json_lines_at_the_chosen_level(served):
    url, log = served
    httpx.get(url + "/v1/models")
    time.sleep(0.2)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"] == "uvicorn.access" and "GET /v1/models" in r["message"] for r in records)
    assert any(r["logger"].startswith("mcdropout") for r in records)
    assert not any("color_message" in r for r in records)


def test_cors_answers_the_configured_origin_only(served):
    url, _ = served
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    allowed = httpx.options(url + "/v1/models/digits/predict", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.options(url + "/v1/models/digits/predict", headers={"Origin": "http://other.test", **preflight})
    assert "access-control-allow-origin" not in other.headers
    simple = httpx.get(url + "/v1/models", headers={"Origin": ORIGIN})
    assert simple.headers["access-control-allow-origin"] == ORIGIN


def test_image_model_takes_flat_rows_and_names_its_shape(served):
    url, _ = served
    pixels = np.random.default_rng(0).uniform(0, 16, size=(2, 64)).round(2)
    nested = httpx.post(url + "/v1/models/digits/predict", json={"inputs": pixels.reshape(2, 1, 8, 8).tolist()})
    flat = httpx.post(url + "/v1/models/digits/predict", json={"inputs": pixels.tolist()})
    assert nested.status_code == flat.status_code == 200
    assert without_ids(flat.json()) == without_ids(nested.json()) and len(flat.json()["label"]) == 2
    wrong = httpx.post(url + "/v1/models/digits/predict", json={"inputs": [pixels[0, :63].tolist()]})
    assert wrong.status_code == 422 and wrong.json()["field"] == "inputs[0]"
    assert "64 values" in wrong.json()["error"] and "[1, 8, 8]" in wrong.json()["error"]

    def infer(shape: list[int], data: list[float]) -> httpx.Response:
        tensor = {"name": "input", "datatype": "FP32", "shape": shape, "data": data}
        return httpx.post(url + "/v2/models/digits/infer", json={"inputs": [tensor]})

    v2_flat, v2_nested = infer([2, 64], pixels.ravel().tolist()), infer([2, 1, 8, 8], pixels.ravel().tolist())
    assert v2_flat.status_code == v2_nested.status_code == 200
    assert v2_flat.json()["outputs"] == v2_nested.json()["outputs"]
    v2_wrong = infer([1, 63], pixels[0, :63].tolist())
    assert v2_wrong.status_code == 400 and "[rows, 1, 8, 8]" in v2_wrong.json()["error"]
    assert "[rows, 64]" in v2_wrong.json()["error"]


def test_bad_log_format_setting_is_refused_before_serving():
    done = subprocess.run([sys.executable, "-m", "mcdropout.cli", "serve"], check=False, capture_output=True,
                          text=True,
                          env={**os.environ, "MCD_LOG_FORMAT": "xml", "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 2 and "log format 'xml' is not one of text, json" in done.stderr


# sklearn hidden from the import system, as after `make serve` (the serve extra only).
_WITHOUT_SKLEARN = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "sklearn":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
from mcdropout.cli import main
sys.exit(main(["train", "diabetes", "--out", sys.argv[1], "--quiet"]))
"""


def test_missing_extra_is_named_with_its_install_command(tmp_path):
    done = subprocess.run([sys.executable, "-c", _WITHOUT_SKLEARN, str(tmp_path / "b")], check=False,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "mcdropout train: error: needs the train extra" in done.stderr
    assert "pip install 'mcdropout[train]'" in done.stderr
    assert not (tmp_path / "b").exists()
