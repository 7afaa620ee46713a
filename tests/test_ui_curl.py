"""The playground's "same request" curl command is safe to paste into a shell (issue 28.5): feature names that
hold quotes or command substitutions stay names, in a real headless Chromium against the real server."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import MODELS, Server, run_server
from tests.test_ui_browser import WAIT_S, _chrome

HOSTILE = "age'$(touch pwned)'"
HONEST = "patient's age"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("curl-models")
    shutil.copytree(MODELS / "diabetes", models / "diabetes")
    manifest = json.loads((models / "diabetes" / "manifest.json").read_text())
    manifest["input"]["feature_names"][:2] = [HOSTILE, HONEST]
    (models / "diabetes" / "manifest.json").write_text(json.dumps(manifest))
    with run_server(tmp_path_factory.mktemp("curl-server"), models_dir=str(models), reload="false") as running:
        yield running


def test_the_curl_snippet_quotes_names_for_the_shell_and_runs(server: Server, tmp_path) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    browser = _chrome()
    try:
        browser.get(f"{server.url}/ui/#/models/diabetes")
        WebDriverWait(browser, WAIT_S).until(
            lambda b: b.find_element(By.ID, "result").get_attribute("data-state") in ("done", "error")
            and "curl" in b.find_element(By.ID, "curl").text)
        command = browser.find_element(By.ID, "curl").text
        page_answer = browser.execute_script("return window.lastAnswer.body")
    finally:
        browser.quit()
    assert HOSTILE.replace("'", "'\\''") in command  # the name, inside the single-quoted body
    assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0
    ran = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert not (tmp_path / "pwned").exists()
    assert ran.returncode == 0, ran.stderr
    answer = json.loads(ran.stdout)
    assert answer["mean"] == page_answer["mean"]  # the same request: the same seed and samples, the same answer
