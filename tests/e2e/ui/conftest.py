"""Browser tests of the web UI: Debian's Chromium, headless, driven by Selenium.

The workspace is real (data prepare -> train -> eval, built once); the model server is a real
`tunesmith serve` on the embedded model with the trained adapter, with an API key, and the UI runs
both ways: mounted at /ui on that server, and standalone (`tunesmith ui --server URL`).
Set TUNESMITH_UI_SCREENSHOTS=DIR to save a PNG of each page (docs/images holds the committed ones).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from ui_helpers import CHROME_FLAGS, CHROMEDRIVER, CHROMIUM, KEY, ThreadedApp, require_browser


@pytest.fixture(scope="session")
def workspace() -> Path:
    require_browser()
    from workspace_builder import built_workspace

    return built_workspace()


@pytest.fixture(scope="session")
def serve(workspace):
    """`tunesmith serve` with the trained adapter as `sft`, an API key, and /ui on the workspace."""
    from serve_helpers import LiveServer

    from tunesmith.serve.config import ServeConfig
    from tunesmith.ui.config import WORKSPACE_ENV

    before = os.environ.get(WORKSPACE_ENV)
    os.environ[WORKSPACE_ENV] = str(workspace)
    try:
        with LiveServer(ServeConfig(adapters={"sft": str(workspace / "runs" / "sft")}, api_key=KEY)) as live:
            yield live
    finally:
        if before is None:
            os.environ.pop(WORKSPACE_ENV, None)
        else:
            os.environ[WORKSPACE_ENV] = before


@pytest.fixture(scope="session")
def standalone_ui(workspace, serve):
    """`tunesmith ui --workspace WS --server URL --api-key KEY`."""
    from tunesmith.ui.app import build_ui_app
    from tunesmith.ui.config import UiConfig

    with ThreadedApp(build_ui_app(UiConfig(workspace=workspace, server=serve.url, api_key=KEY))) as ui:
        yield ui


@pytest.fixture(scope="session")
def browser():
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="tunesmith-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shoot(browser):
    """shoot(name, at=None): a screenshot of the page into $TUNESMITH_UI_SCREENSHOTS, when set;
    from the top of the page, or scrolled to the element with id `at`."""
    target = os.environ.get("TUNESMITH_UI_SCREENSHOTS")

    def take(name: str, at: str | None = None) -> None:
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            browser.execute_script("window.scrollTo(0, 0)")
            if at is not None:
                browser.execute_script("document.getElementById(arguments[0]).closest('section').scrollIntoView()", at)
            browser.save_screenshot(str(Path(target) / f"ui-{name}.png"))

    return take
