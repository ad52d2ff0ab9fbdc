"""A real headless browser for tests that look at what a user sees: Debian's ``chromium``
driven through ``chromium-driver`` by selenium, one per test session. Registered as a pytest
plugin by ``tests/conftest.py``; tests that ask for ``browser`` are skipped, with the reason,
only where chromium or chromedriver is not installed (``apt-get install chromium
chromium-driver``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import free_port

VIEWPORT = (1280, 900)  # CSS pixels: the width every page must fit
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)


def _which(names: tuple[str, ...]) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


def _missing() -> str:
    parts = []
    if _which(CHROMIUM_NAMES) is None:
        parts.append("chromium")
    if _which(DRIVER_NAMES) is None:
        parts.append("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        parts.append("the selenium package")
    return " and ".join(parts)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium at ``VIEWPORT``, with the console log kept (``get_log("browser")``)."""
    missing = _missing()
    if missing:
        pytest.skip(f"{missing} not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(CHROMIUM_NAMES)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--hide-scrollbars", "--force-device-scale-factor=1",
                 f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(_which(DRIVER_NAMES)))
    try:
        driver.set_page_load_timeout(60)
        fit_viewport(driver)
        yield driver
    finally:
        driver.quit()


def fit_viewport(driver: Any, height: int | None = None) -> None:
    """Make the page's viewport exactly ``VIEWPORT`` wide (and ``height`` tall)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": VIEWPORT[0], "height": height or VIEWPORT[1], "deviceScaleFactor": 1,
        "mobile": False})


def console_errors(driver: Any) -> list[dict]:
    """The console entries logged since the last call that are errors (SEVERE)."""
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def screenshot(driver: Any, path: Path, full_page: bool = False) -> Path:
    """Save a PNG of the viewport, or of the whole page, and print where it is."""
    if full_page:
        height = int(driver.execute_script(
            "return Math.ceil(document.documentElement.scrollHeight)"))
        fit_viewport(driver, min(height, 16000))
        try:
            path.write_bytes(_capture(driver))
        finally:
            fit_viewport(driver)
    else:
        path.write_bytes(_capture(driver))
    print(f"screenshot: {path}")
    return path


def _capture(driver: Any) -> bytes:
    import base64

    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    return base64.b64decode(shot["data"])


@contextmanager
def mlflow_ui(backend_uri: str, folder: Path) -> Iterator[str]:
    """``mlflow server`` on a free local port against ``backend_uri``; yields its URL."""
    port = free_port()
    log = (folder / "mlflow-ui.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
         "--default-artifact-root", str(folder / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError("mlflow server did not start: "
                                   + (folder / "mlflow-ui.log").read_text()[-2000:])
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its workers, nothing else
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
