"""The /ui playground in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium)
against the real server on 127.0.0.1, serving the shipped models with digits and diabetes calibrated."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service as DriverService
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from mcdropout.training import datasets
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
def server(tmp_path_factory, calibrated_models) -> Iterator[Server]:
    with run_server(tmp_path_factory.mktemp("ui-server"), models_dir=str(calibrated_models)) as running:
        yield running


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


def _shown_answer(browser: WebDriver) -> dict:
    return browser.execute_script("return window.lastAnswer.body")


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
        calibration = model["calibration"]
        shown = "uncalibrated" if calibration is None else f"{', '.join(calibration['methods'])} · {calibration['rows']} rows"
        assert shown in text
    assert rows["digits"].count("conformal_sets") == 1  # the calibrated copy


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
            shaded = browser.find_elements(By.CSS_SELECTOR, "svg#band rect.train-range")
            assert len(shaded) == len(info["training"]["data"].get("train_ranges", []))
    assert f"/v1/models/{name}/predict" in browser.find_element(By.ID, "curl").text
    assert "from mcdropout.client import Client" in browser.find_element(By.ID, "python").text
    _check_scales(browser, server, name, info, seen["body"])


def _check_scales(browser: WebDriver, server: Server, name: str, info: dict, answer: dict) -> None:
    """Each uncertainty statistic of the answer is drawn once, its marker in the section of the model's
    held-out percentiles that the value falls in."""
    WebDriverWait(browser, 60).until(lambda b: b.find_element(By.ID, "scales").get_attribute("data-state") == "done")
    scales = httpx.get(f"{server.url}/ui/scales/{name}", timeout=60).json()
    assert scales["available"] and scales["rows"] == info["metrics"]["test_rows"]
    row = len(answer["mean"]) - 1 if info["input_shape"] == [1] else 0
    if info["task"] == "classification":
        values = {name: (answer[name][row], scales["statistics"][name][0])
                  for name in ("entropy", "mutual_information", "variation_ratio")}
    else:
        values = {f"std-{k}": (answer["std"][row][k], scales["statistics"]["std"][k]) for k in range(len(info["outputs"]))}
        values |= {f"epistemic_std-{k}": (answer["epistemic_variance"][row][k] ** 0.5, scales["statistics"]["epistemic_std"][k])
                   for k in range(len(info["outputs"]))}
    drawn = browser.find_elements(By.CSS_SELECTOR, "#scales svg.scale")
    assert sorted(plot.get_attribute("id") for plot in drawn) == sorted(f"scale-{stat}" for stat in values)
    bar_left, bar_width = 10, 700  # the scale's bar in its SVG (scale() in app.js)
    sections = np.cumsum([0, 0.27, 0.27, 0.2, 0.12, 0.14])
    for stat, (value, percentiles) in values.items():
        plot = browser.find_element(By.ID, f"scale-{stat}")
        assert float(plot.get_attribute("data-value")) == pytest.approx(value, rel=1e-12, abs=1e-300)
        section = int(np.searchsorted(np.array(percentiles)[[50, 90, 99, 100]], value, side="left"))
        expected = ["typical: at most the median", "above the median", "high: above p90", "very high: above p99",
                    "very high: above p99"][section]
        assert plot.get_attribute("data-level") == expected
        marker = plot.find_element(By.CSS_SELECTOR, "path.marker").get_attribute("d")
        x = float(marker.split("L")[2].split(",")[0])  # the triangle's tip
        low, high = sections[section], sections[section + 1]
        assert bar_left + bar_width * low - 1e-6 <= x <= bar_left + bar_width * high + 1e-6, (stat, value, x)


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


def test_a_calibrated_classifier_shows_its_prediction_set_and_abstention(browser: WebDriver, server: Server) -> None:
    _open_model(browser, server, "digits")
    seen = browser.execute_script("return {request: window.lastRequest, answer: window.lastAnswer}")
    assert seen["request"]["set_level"] == 0.9 and seen["request"]["max_risk"] == 0.05  # the page's defaults
    answer = seen["answer"]["body"]
    members = answer["prediction_set_names"][0]
    assert browser.find_element(By.CSS_SELECTOR, "#prediction-set b").text == "{" + ", ".join(members) + "}"
    marked = browser.find_elements(By.CSS_SELECTOR, "svg#probs rect.prob.in-set")
    assert sorted(bar.get_attribute("data-class") for bar in marked) == sorted(members)
    assert len(members) == answer["set_size"][0]
    shown = browser.find_element(By.CSS_SELECTOR, "#abstain b").text
    assert shown == ("abstain" if answer["abstain"][0] else "accept")
    assert "set_level=0.9" in browser.find_element(By.ID, "python").text

    # A risk below what the calibration rows can certify is refused, naming the smallest allowed.
    smallest = httpx.get(f"{server.url}/v1/models/digits").json()["calibration"]["min_max_risk"]
    assert 0 < smallest <= 0.05
    _set(browser, "#max_risk", "0.0001")
    seen = _predict(browser)
    direct = httpx.post(f"{server.url}/v1/models/digits/predict", json=seen["request"])
    assert direct.status_code == 422 and direct.json()["field"] == "max_risk" and f">= {smallest}" in direct.json()["error"]
    assert browser.find_element(By.CSS_SELECTOR, '[data-error-for="max_risk"]').text == direct.json()["error"]
    _set(browser, "#max_risk", "0.05")

    _set(browser, "#set_level", "1.5")
    seen = _predict(browser)
    direct = httpx.post(f"{server.url}/v1/models/digits/predict", json=seen["request"])
    assert direct.status_code == 422 and direct.json()["field"] == "set_level"
    assert browser.find_element(By.CSS_SELECTOR, '[data-error-for="set_level"]').text == direct.json()["error"]

    _set(browser, "#set_level", "")
    _set(browser, "#max_risk", "")
    seen = _predict(browser)
    assert "set_level" not in seen["request"] and "prediction_set" not in seen["answer"]["body"]
    assert not browser.find_elements(By.ID, "prediction-set") and not browser.find_elements(By.ID, "abstain")


def test_a_calibrated_regression_model_says_which_method_made_its_interval(browser: WebDriver, server: Server) -> None:
    _open_model(browser, server, "diabetes")
    label = browser.find_element(By.CSS_SELECTOR, "#interval-method span")
    assert _shown_answer(browser)["interval"]["method"] == "conformal" and label.text == "95% interval (conformal)"
    browser.find_element(By.CSS_SELECTOR, '#interval_method option[value="gaussian"]').click()
    seen = _predict(browser)
    assert seen["request"]["interval_method"] == "gaussian" and seen["answer"]["body"]["interval"]["method"] == "gaussian"
    assert browser.find_element(By.CSS_SELECTOR, "#interval-method span").text == "95% interval (gaussian)"


def test_the_scales_are_the_percentiles_of_what_the_server_serves_for_the_held_out_rows(server: Server) -> None:
    """/ui/scales of a calibrated regression model and a calibrated classifier equal the percentiles of the
    answers /v1 gives for their test rows (the model's T, seed 0): the served numbers, temperature and
    sigma-scaling included."""
    for name, split in (("diabetes", datasets.diabetes(0)), ("digits", datasets.digits(0))):
        scales = httpx.get(f"{server.url}/ui/scales/{name}", timeout=60).json()
        answer = httpx.post(f"{server.url}/v1/models/{name}/predict", timeout=60,
                            json={"inputs": split.x_test.tolist(), "seed": 0}).json()
        assert scales["rows"] == len(split.x_test) and scales["samples"] == answer["samples"] and scales["seed"] == 0
        if name == "diabetes":
            columns = {"std": np.array(answer["std"]), "epistemic_std": np.sqrt(answer["epistemic_variance"])}
        else:
            columns = {stat: np.array(answer[stat])[:, None] for stat in ("entropy", "mutual_information", "variation_ratio")}
        for stat, values in columns.items():
            np.testing.assert_allclose(scales["statistics"][stat], np.percentile(values, range(101), axis=0).T,
                                       rtol=1e-9, atol=1e-300, err_msg=f"{name} {stat}")


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
