"""A real browser (Debian's chromium, driven by Selenium through chromium-driver) on a real server's page.

Without chromium the browser tests skip with the reason, except under CI (CI=true), where they fail: CI's
.ci/run installs chromium and chromium-driver, so their absence there is a broken set-up, not a skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("FACEBANK_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("FACEBANK_CHROMEDRIVER", "/usr/bin/chromedriver"))
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",  # containers often have a small /dev/shm
    "--window-size=1280,1400",
)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must have it (apt-get install -y chromium chromium-driver)")
    pytest.skip(reason)


def require_browser() -> None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            _unavailable(f"the browser tests need {path} (Debian packages chromium and chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _unavailable("the browser tests need the selenium package (the dev extra)")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless chromium, one per test, that cannot reach anything but loopback."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in CHROMIUM_ARGS:
        options.add_argument(argument)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    # The driver's path given: Selenium Manager never runs, so nothing is looked up or downloaded.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def screenshots(tmp_path: Path) -> Iterator[Path]:
    """Where a test saves a screenshot of each step (under pytest's tmp folder, for a person to look at)."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    yield folder
