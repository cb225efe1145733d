"""Shared pieces of the UI's browser and HTTP tests: where Chromium is, the test key, and a
uvicorn thread for any ASGI app."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
import uvicorn

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEY = "ui-test-key"
CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1400,1000")


def require_browser() -> None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("the browser tests need selenium: pip install 'tunesmith[dev]'")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("the browser tests need Debian's Chromium: apt-get install chromium chromium-driver "
                    f"({CHROMIUM} and {CHROMEDRIVER} not found)")


class ThreadedApp:
    """Any ASGI app served by uvicorn on 127.0.0.1 in a background thread."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        from serve_helpers import wait_for

        self.thread.start()
        wait_for(lambda: self.server.started, timeout=30, what="the UI server to start")
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


def wait(driver, condition, timeout=60, what="the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message=f"waiting for {what}")


def open_ui(driver, base_url, hash_="#/runs", *, key=KEY):
    """Open the UI with the API key in the tab's session storage, and wait for the page to load."""
    driver.get(f"{base_url}/ui/")
    driver.execute_script("sessionStorage.setItem('tunesmith.apiKey', arguments[0])", key)
    driver.get(f"{base_url}/ui/{hash_}")
    driver.refresh()
    wait(driver, lambda d: d.execute_script("const p = document.querySelector('.page'); return p && p.dataset.ready"),
         what=f"{hash_} to load")
    assert driver.execute_script("return document.querySelector('.page').dataset.ready") == "true", \
        driver.find_element("css selector", ".page").text


def text_of(driver, element_id):
    """An element's text read in one step in the page (the element may be re-rendered meanwhile)."""
    return driver.execute_script("const e = document.getElementById(arguments[0]); return e ? e.textContent : null",
                                 element_id)


def chart_series(driver, canvas_id):
    return json.loads(driver.execute_script(f"return document.getElementById('{canvas_id}').dataset.series || '[]'"))


def coloured_pixels(driver, canvas_id, hex_colour):
    """How many pixels of the canvas are drawn in `hex_colour`: the curve is really on screen."""
    return driver.execute_script("""
        const c = document.getElementById(arguments[0]);
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const [r, g, b] = [1, 3, 5].map((i) => parseInt(arguments[1].slice(i, i + 2), 16));
        let n = 0;
        for (let i = 0; i < data.length; i += 4) if (Math.abs(data[i] - r) < 8 && Math.abs(data[i+1] - g) < 8 && Math.abs(data[i+2] - b) < 8) n++;
        return n;""", canvas_id, hex_colour)
