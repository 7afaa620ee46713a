"""``POST /v1/models/{name}/acquire`` on a real server: the library's picks through the client (blocking and
async), through ``mcdropout acquire --engine remote`` and through the playground's panel (headless Chromium),
and every bad value a 4xx naming its field."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

import mcdropout as mcd
from mcdropout.acquisition import METHODS
from mcdropout.cli import main
from mcdropout.client import AsyncClient, Client, InvalidInput
from mcdropout.training import datasets
from service.codecs import acquire as codec

from .conftest import MODELS, Server
from .test_ui_browser import WAIT_S, _chrome, _open_model

SPLIT = datasets.breast_cancer(0)
POOL = np.concatenate([SPLIT.x_test, SPLIT.x_train])[:120].astype(np.float32)
URL = "/v1/models/breast-cancer/acquire"


@pytest.fixture(scope="module")
def bundle():
    return mcd.load_bundle(MODELS / "breast-cancer")


def test_the_client_gets_the_librarys_picks(server, bundle):
    expected = mcd.acquire(bundle, POOL, 4, samples=20, seed=3)
    with Client(server.url) as client:
        picks = client.acquire("breast-cancer", POOL, 4, samples=20, seed=3)
    assert picks.indices.tolist() == expected.indices.tolist()
    np.testing.assert_allclose(picks.scores, expected.scores, rtol=1e-12)
    np.testing.assert_allclose(picks.bald, expected.bald, rtol=1e-12)
    assert (picks.method, picks.samples, picks.seed) == ("batchbald", 20, 3)

    power = mcd.acquire(bundle, POOL, 5, "power", samples=20, seed=3, beta=2.0)

    async def asynchronous():
        async with AsyncClient(server.url) as client:
            return await client.acquire("breast-cancer", POOL, 5, method="power", samples=20, seed=3, beta=2.0)

    picks = asyncio.run(asynchronous())
    assert picks.indices.tolist() == power.indices.tolist()
    assert picks.raw["parameters"]["beta"] == 2.0


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"k": 0}, "k", "expected a positive whole number"),
    ({"k": 121}, "k", "asked for 121 rows from a pool of 120"),
    ({"k": "3"}, "k", "expected a positive whole number"),
    ({"method": "coreset"}, "method", "unknown method 'coreset'"),
    ({"samples": "auto"}, "samples", "needs a fixed T"),
    ({"samples": 1}, "samples", "must be an integer from 2"),
    ({"seed": -1}, "seed", "must be an integer from 0"),
    ({"beta": 0}, "beta", "expected a positive number"),
    ({"candidates": 1}, "candidates", "expected a whole number >= k"),
    ({"configurations": 10**6}, "configurations", f"at most {codec.MAX_CONFIGURATIONS}"),
    ({"temperature": 2}, "temperature", "unknown field"),
    ({"inputs": [[0.0] * 29]}, "inputs[0]", ""),
])
def test_bad_values_answer_422_naming_the_field(http, change, field, message):
    body = {"inputs": POOL.tolist(), "k": 3, **change}
    answer = http.post(URL, json=body)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field and message in answer.json()["error"]


def test_batchbald_of_a_regression_model_and_a_pool_over_the_row_limit_are_refused(http, server):
    answer = http.post("/v1/models/diabetes/acquire", json={"inputs": [[0.0] * 10] * 5, "k": 2})
    assert answer.status_code == 422 and answer.json()["field"] == "method", answer.text
    assert "'batchbald' scores class probabilities; model 'diabetes' is a regression model" in answer.json()["error"]
    too_many = np.zeros((1001, POOL.shape[1]))  # MCD_MAX_ROWS is 1000 by default
    answer = http.post(URL, json={"inputs": too_many.tolist(), "k": 2})
    assert answer.status_code == 422 and answer.json()["field"] == "inputs", answer.text
    with Client(server.url) as client, pytest.raises(InvalidInput, match="picked from as a whole") as refused:
        client.acquire("breast-cancer", too_many, 2)  # refused before it is sent
    assert refused.value.field == "inputs"


def test_remote_engine_picks_what_the_local_engine_picks(server, tmp_path):
    frame = pd.DataFrame(POOL.astype(np.float64), columns=SPLIT.feature_names)
    frame.insert(0, "pid", [f"p{i}" for i in range(len(frame))])
    source = tmp_path / "pool.parquet"
    frame.to_parquet(source)
    settings = ["--k", 4, "--samples", 20, "--seed", 3, "--id-column", "pid", "--chunk-rows", 1000, "--quiet"]
    local, remote = tmp_path / "local.csv", tmp_path / "remote.csv"
    assert main(["acquire", str(MODELS / "breast-cancer"), str(source), "--out", str(local), *map(str, settings)]) == 0
    assert main(["acquire", "breast-cancer", str(source), "--out", str(remote), "--engine", "remote", "--url",
                 server.url, *map(str, settings)]) == 0
    expected, got = pd.read_csv(local), pd.read_csv(remote)
    assert got.row.tolist() == expected.row.tolist() and got.pid.tolist() == expected.pid.tolist()
    np.testing.assert_allclose(got.score, expected.score, rtol=1e-12)


def test_the_documented_methods_are_the_librarys():
    assert codec.METHODS == METHODS


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chrome = _chrome()
    try:
        yield chrome
    finally:
        chrome.quit()


def _pick(browser: WebDriver) -> dict:
    before = browser.execute_script("return window.picks || 0")
    browser.find_element(By.ID, "acquire").click()
    WebDriverWait(browser, WAIT_S).until(lambda b: b.execute_script("return window.picks || 0") > before and
                                         b.find_element(By.ID, "acquire-result").get_attribute("data-state")
                                         in ("done", "error"))
    return browser.execute_script("return window.lastPicks")


def test_a_classifier_page_picks_rows_from_pasted_rows(browser: WebDriver, server: Server):
    _open_model(browser, server, "breast-cancer")
    names = ",".join(SPLIT.feature_names)
    pasted = names + "\n" + "\n".join(", ".join(repr(float(v)) for v in row) for row in POOL[:12])  # a header, rows
    browser.find_element(By.ID, "pool").send_keys(pasted)
    k = browser.find_element(By.ID, "acquire-k")
    k.clear()
    k.send_keys("3")
    Select(browser.find_element(By.ID, "acquire-method")).select_by_value("bald")
    answer = _pick(browser)
    assert answer["ok"], answer
    samples, seed = answer["body"]["samples"], answer["body"]["seed"]  # the page's T and seed fields
    expected = mcd.acquire(mcd.load_bundle(MODELS / "breast-cancer"), POOL[:12], 3, "bald", samples=samples,
                           seed=seed)
    assert answer["body"]["indices"] == expected.indices.tolist()
    shown = [int(row.get_attribute("data-row"))
             for row in browser.find_elements(By.CSS_SELECTOR, "#picks tr[data-row]")]
    assert shown == expected.indices.tolist()

    k.clear()
    k.send_keys("13")  # more than the 12 pasted rows: the server's 422 names k, and the page marks the field
    answer = _pick(browser)
    assert answer["status"] == 422 and answer["body"]["field"] == "k"
    assert "bad" in k.get_attribute("class")
    assert "asked for 13 rows from a pool of 12" in browser.find_element(By.ID, "acquire-result").text


def test_a_regression_page_has_no_picking_panel(browser: WebDriver, server: Server):
    _open_model(browser, server, "diabetes")
    assert browser.find_elements(By.ID, "acquire-panel") == []
