"""The /ui playground in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium)
against the real server on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import MODELS, Server, run_server

SHIPPED = sorted(path.name for path in MODELS.iterdir() if path.is_dir() and not path.name.startswith("."))
WAIT_S = 20


def _chrome() -> WebDriver:
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary and driver, "the browser tests need Debian's chromium and chromium-driver (make test installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,800", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    browser = webdriver.Chrome(service=DriverService(driver), options=options)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    return browser


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chrome = _chrome()
    try:
        yield chrome
    finally:
        chrome.quit()


def _open_model(browser: WebDriver, server: Server, name: str) -> None:
    browser.get(f"{server.url}/ui/#/models/{name}")
    browser.refresh()  # a hash change alone on the same document would not reload the page
    _wait_answer(browser, 0)


def _wait_answer(browser: WebDriver, before: int) -> dict:
    WebDriverWait(browser, WAIT_S).until(lambda b: (b.execute_script("return window.predictions || 0") > before
                                                     and b.find_element(By.ID, "result").get_attribute("data-state")
                                                     in ("done", "error")))
    return browser.execute_script("return {request: window.lastRequest, answer: window.lastAnswer}")


def _predict(browser: WebDriver) -> dict:
    before = browser.execute_script("return window.predictions || 0")
    browser.find_element(By.ID, "predict").click()
    return _wait_answer(browser, before)


def _set(browser: WebDriver, css: str, value: str) -> None:
    field = browser.find_element(By.CSS_SELECTOR, css)
    field.clear()
    field.send_keys(value)


def test_the_model_list_renders_every_shipped_model(browser: WebDriver, server: Server) -> None:
    browser.get(f"{server.url}/ui/")
    WebDriverWait(browser, WAIT_S).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model-list tr[data-model]"))
    rows = {row.get_attribute("data-model"): row.text for row in
            browser.find_elements(By.CSS_SELECTOR, "#model-list tr[data-model]")}
    assert sorted(rows) == SHIPPED
    listed = httpx.get(f"{server.url}/v1/models").json()["models"]
    for model in listed:
        text = rows[model["name"]]
        assert model["version"] in text and model["task"] in text and "ready" in text
        assert model["description"][:40] in text


@pytest.mark.parametrize("name", SHIPPED)
def test_each_model_page_opens_on_an_example_prediction_with_its_plot(browser: WebDriver, server: Server,
                                                                         name: str) -> None:
    info = httpx.get(f"{server.url}/v1/models/{name}").json()
    _open_model(browser, server, name)
    seen = browser.execute_script("return window.lastAnswer")
    assert seen["ok"], seen
    assert browser.find_element(By.ID, "answer-samples").text == str(info["default_samples"])
    shape = info["input_shape"]
    if info["task"] == "classification":
        bars = browser.find_elements(By.CSS_SELECTOR, "svg#probs rect.prob")
        assert len(bars) == len(info["classes"])
        dots = browser.find_elements(By.CSS_SELECTOR, "svg#probs circle")
        assert len(dots) == len(info["classes"]) * info["default_samples"]  # one per class per sample
    else:
        bars = browser.find_elements(By.CSS_SELECTOR, "svg#histogram rect.bar")
        assert bars and sum(float(bar.get_attribute("height")) > 0 for bar in bars) >= 2
        if shape == [1]:
            assert browser.find_elements(By.CSS_SELECTOR, "svg#band path")
    assert f"/v1/models/{name}/predict" in browser.find_element(By.ID, "curl").text
    assert "from mcdropout.client import Client" in browser.find_element(By.ID, "python").text


def test_drawing_a_digit_on_the_canvas_shows_its_class_probabilities(browser: WebDriver, server: Server) -> None:
    _open_model(browser, server, "digits")
    browser.find_element(By.ID, "clear").click()
    canvas = browser.find_element(By.ID, "draw")
    cell = canvas.size["width"] / 8
    # A vertical stroke down column 4: a "1". Offsets are from the canvas' centre.
    column_x = int((4.5 - 4) * cell)
    stroke = ActionChains(browser).move_to_element_with_offset(canvas, column_x, int(-3.5 * cell)).click_and_hold()
    for row in range(8):
        stroke.move_to_element_with_offset(canvas, column_x, int((row + 0.5 - 4) * cell))
    stroke.release().perform()
    seen = _predict(browser)
    image = seen["request"]["inputs"][0][0]
    assert [image[row][4] for row in range(8)] == [16] * 8
    assert sum(value > 0 for line in image for value in line) <= 3 * 8  # the stroke and its edges only
    answer = seen["answer"]["body"]
    assert seen["answer"]["ok"] and len(answer["probs"][0]) == 10
    assert abs(sum(answer["probs"][0]) - 1) < 1e-5
    shown = browser.find_element(By.ID, "probs").text
    assert all(name in shown for name in answer["classes"])
    assert answer["class_name"][0] in browser.find_element(By.ID, "result").text


def test_changing_t_changes_samples_in_the_answer(browser: WebDriver, server: Server) -> None:
    _open_model(browser, server, "breast-cancer")
    _set(browser, "#samples", "17")
    seen = _predict(browser)
    assert seen["request"]["samples"] == 17
    assert seen["answer"]["body"]["samples"] == 17 and len(seen["answer"]["body"]["draws"][0]) == 17
    assert browser.find_element(By.ID, "answer-samples").text == "17"


def test_a_bad_value_shows_the_servers_error_next_to_its_field(browser: WebDriver, server: Server) -> None:
    _open_model(browser, server, "diabetes")
    _set(browser, 'input[data-field="instances[0].bmi"]', "abc")
    seen = _predict(browser)
    direct = httpx.post(f"{server.url}/v1/models/diabetes/predict", json=seen["request"])
    assert direct.status_code == 422 and direct.json()["field"] == "instances[0].bmi"
    beside = browser.find_element(By.CSS_SELECTOR, '[data-error-for="instances[0].bmi"]')
    assert beside.text == direct.json()["error"]
    assert "bad" in browser.find_element(By.CSS_SELECTOR, 'input[data-field="instances[0].bmi"]').get_attribute("class")

    _set(browser, 'input[data-field="instances[0].bmi"]', "0.01")
    _set(browser, "#samples", "1")
    _predict(browser)
    message = browser.find_element(By.CSS_SELECTOR, '[data-error-for="samples"]').text
    assert message.startswith("samples: must be an integer from 2 to")
    assert browser.find_element(By.CSS_SELECTOR, '[data-error-for="instances[0].bmi"]').text == ""


def test_no_request_leaves_127_0_0_1(browser: WebDriver, server: Server) -> None:
    """Runs last in this module: every request the browser made in the tests above is in its log."""
    _open_model(browser, server, "heteroscedastic-1d")
    urls = [json.loads(entry["message"])["message"]["params"]["request"]["url"]
            for entry in browser.get_log("performance")
            if json.loads(entry["message"])["message"]["method"] == "Network.requestWillBeSent"]
    urls += browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert any("/v1/models/heteroscedastic-1d/predict" in url for url in urls)
    hosts = {urlsplit(url).hostname for url in urls if urlsplit(url).scheme not in ("data", "blob")}
    assert hosts == {"127.0.0.1"}, hosts


def test_with_api_keys_the_key_field_is_sent_and_a_failed_bundle_shows_its_reason(tmp_path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "digits").symlink_to(MODELS / "digits")
    (models / "broken").mkdir()
    (models / "broken" / "manifest.json").write_text("{}")
    with run_server(tmp_path, api_keys="ui-secret", models_dir=str(models)) as keyed:
        reason = httpx.get(f"{keyed.url}/v1/models/broken", headers={"Authorization": "Bearer ui-secret"}).json()
        chrome = _chrome()
        try:
            chrome.get(f"{keyed.url}/ui/")
            WebDriverWait(chrome, WAIT_S).until(lambda b: b.find_elements(By.ID, "error"))
            assert "API key" in chrome.find_element(By.ID, "error").text
            chrome.find_element(By.ID, "api-key").send_keys("ui-secret\n")
            WebDriverWait(chrome, WAIT_S).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model-list tr[data-model]"))
            rows = {row.get_attribute("data-model"): row.text
                    for row in chrome.find_elements(By.CSS_SELECTOR, "#model-list tr[data-model]")}
            assert sorted(rows) == ["broken", "digits"] and "ready" in rows["digits"]
            assert reason["status"] == "failed" and "failed" in rows["broken"] and reason["error"] in rows["broken"]
        finally:
            chrome.quit()
