"""`tunesmith ui`: serve the web UI for a workspace until Ctrl-C."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from tunesmith.serve.listen import bind_socket, is_loopback
from tunesmith.ui.config import API_KEY_ENV, UiConfig


def run(cfg: UiConfig, *, announce: Callable[[str], None] = print) -> None:
    """Serve the UI for `cfg.workspace` until interrupted (`tunesmith ui` and the Python API)."""
    import uvicorn

    from tunesmith.ui.app import build_ui_app

    app = build_ui_app(cfg)
    sock = bind_socket(cfg.host, cfg.port, backlog=128)
    if not is_loopback(cfg.host) and cfg.api_key is None and not os.environ.get(API_KEY_ENV):
        announce(f"warning: the UI listens on {cfg.host} without an API key: anyone who can reach this "
                 "port can read the workspace's runs and generate with the server; set --api-key")
    try:
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        announce(f"tunesmith ui: http://{shown}:{bound_port}/ui/ (workspace {Path(cfg.workspace).resolve()})")
        uvicorn.Server(uvicorn.Config(app, log_level=cfg.log_level, lifespan="off")).run(sockets=[sock])
    finally:
        sock.close()
