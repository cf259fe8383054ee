"""Headless Chromium for the web catalog's tests: Debian's `chromium` and `chromium-driver`
(.ci/run installs them), driven through Selenium; nothing is downloaded.

Screenshots go to `test-artifacts/screenshots/` at the repository root (CI keeps the folder).
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--force-device-scale-factor=1", "--window-size=1280,1000"]


@contextlib.contextmanager
def chromium() -> Iterator:
    """A Selenium driver on the system Chromium with a fresh profile; quit (and the profile
    removed) on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(binary):
            raise RuntimeError(f"{binary} is missing: .ci/run installs Debian's chromium and chromium-driver")
    with tempfile.TemporaryDirectory(prefix="lakeimg-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.set_page_load_timeout(60)
            driver.set_script_timeout(60)
            yield driver
        finally:
            driver.quit()


def screenshot(driver, name: str) -> Path:
    """Save the page as test-artifacts/screenshots/NAME.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait_for_viewer(driver, timeout_s: float = 60.0) -> None:
    """Until the deep-zoom viewer has drawn every visible tile; fails as soon as a tile fails."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(
        lambda d: d.execute_script("var v = window.lakeimgViewer;"
                                   " return !!(v && ((v.info() && v.ready()) || v.errors() > 0))"))
    errors = driver.execute_script("return window.lakeimgViewer.errors()")
    assert errors == 0, f"{errors} tile(s) failed to load"


_READ_CANVAS = """
var c = document.getElementById('viewer-canvas');
var d = c.getContext('2d').getImageData(0, 0, arguments[0], arguments[1]).data;
var parts = [];
for (var i = 0; i < d.length; i += 4) { parts.push(String.fromCharCode(d[i], d[i + 1], d[i + 2])); }
return btoa(parts.join(''));
"""


def canvas_rgb(driver, width: int, height: int) -> np.ndarray:
    """The viewer canvas' top-left `width` x `height` pixels as an RGB uint8 array (HWC)."""
    data = base64.b64decode(driver.execute_script(_READ_CANVAS, width, height))
    return np.frombuffer(data, np.uint8).reshape(height, width, 3)
