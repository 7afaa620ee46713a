"""Retake the README's screenshots (1280x800) against a running server; needs chromium, chromium-driver and
selenium, as the browser tests do. The shipped bundles are calibrated, so the pictures show their sets,
abstention and conformal intervals::

    mcdropout serve --port 8000 &
    python docs/screenshots/take.py http://127.0.0.1:8000
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

HERE = Path(__file__).resolve().parent
PAGES = ["diabetes", "breast-cancer", "digits", "heteroscedastic-1d", "sequence", "reviews"]  # table x2, image, 1-D, JSON, text


def main(base: str) -> None:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    try:
        browser.get(f"{base}/ui/")
        WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#model-list tr[data-model]"))
        _save(browser, "model-list")
        for name in PAGES:
            browser.get(f"{base}/ui/#/models/{name}")
            browser.refresh()
            WebDriverWait(browser, 60).until(lambda b: b.find_elements(By.CSS_SELECTOR, '#scales[data-state="done"]'))
            _save(browser, f"model-{name}")
    finally:
        browser.quit()


def _save(browser: webdriver.Chrome, name: str) -> None:
    """The screenshot as a 256-colour palette PNG: a third of the size, no visible loss for flat UI colours."""
    path = HERE / f"{name}.png"
    browser.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000")
