"""Shared pieces of the UI's browser and HTTP tests: where Chromium is, the test key, and a
uvicorn thread for any ASGI app."""

from __future__ import annotations

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
