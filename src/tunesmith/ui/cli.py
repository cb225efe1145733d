"""`tunesmith ui`: serve the web UI for a workspace until Ctrl-C."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Callable

from tunesmith.errors import ConfigError
from tunesmith.ui.config import API_KEY_ENV, UiConfig


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                          hint="pick another --port, or stop the process using it") from None
    sock.listen(128)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(cfg: UiConfig, *, announce: Callable[[str], None] = print) -> None:
    """Serve the UI for `cfg.workspace` until interrupted (`tunesmith ui` and the Python API)."""
    import uvicorn

    from tunesmith.ui.app import build_ui_app

    app = build_ui_app(cfg)
    sock = _bind(cfg.host, cfg.port)
    if not _is_loopback(cfg.host) and cfg.api_key is None and not os.environ.get(API_KEY_ENV):
        announce(f"warning: the UI listens on {cfg.host} without an API key: anyone who can reach this "
                 "port can read the workspace's runs and generate with the server; set --api-key")
    try:
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        announce(f"tunesmith ui: http://{shown}:{bound_port}/ui/ (workspace {Path(cfg.workspace).resolve()})")
        uvicorn.Server(uvicorn.Config(app, log_level=cfg.log_level, lifespan="off")).run(sockets=[sock])
    finally:
        sock.close()
