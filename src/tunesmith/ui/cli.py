"""`tunesmith ui`: serve the web UI for a workspace until Ctrl-C."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Optional

import typer

from tunesmith.errors import ConfigError


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


def ui(
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help="Directory whose runs, evaluations and datasets are shown (default .)."),
    server: Optional[str] = typer.Option(None, "--server", help="URL of a `tunesmith serve` for the playground and reviews."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", "-p", help="Port (default 8100; 0 picks a free one)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Require Authorization: Bearer KEY (default: $TUNESMITH_API_KEY)."),
    review_db: Optional[Path] = typer.Option(None, "--review-db", help="SQLite file for reviews and votes (default WORKSPACE/.tunesmith/reviews.sqlite)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file."),
    sets: Optional[list[str]] = typer.Option(None, "--set", help="Override a config key: --set key=value (repeatable)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resolved config with defaults and exit."),
) -> None:
    """Browse runs and reports, chat with served models, and run blind A/B reviews in the browser."""
    import uvicorn

    from tunesmith.cli import err_console, resolve_config
    from tunesmith.ui.app import build_ui_app
    from tunesmith.ui.config import API_KEY_ENV, UiConfig

    cfg = resolve_config(UiConfig, config, sets, print_config, workspace=workspace, server=server, host=host,
                         port=port, api_key=api_key, review_db=review_db)
    app = build_ui_app(cfg)
    sock = _bind(cfg.host, cfg.port)
    if not _is_loopback(cfg.host) and cfg.api_key is None and not os.environ.get(API_KEY_ENV):
        err_console.print(f"warning: the UI listens on {cfg.host} without an API key: anyone who can reach this "
                          "port can read the workspace's runs and generate with the server; set --api-key",
                          highlight=False, soft_wrap=True)
    try:
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        err_console.print(f"tunesmith ui: http://{shown}:{bound_port}/ui/ (workspace {Path(cfg.workspace).resolve()})",
                          highlight=False, soft_wrap=True)
        uvicorn.Server(uvicorn.Config(app, log_level=cfg.log_level, lifespan="off")).run(sockets=[sock])
    finally:
        sock.close()
