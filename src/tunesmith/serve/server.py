"""`tunesmith serve`: load the model, bind the port, serve until SIGTERM/SIGINT, drain, exit.

On the first SIGTERM or Ctrl-C the server keeps its port open but answers new requests with 503
(so a load balancer moves traffic elsewhere instead of seeing refused connections), lets the
requests in flight finish, and exits with status 0 once none is left. A second signal exits at
once. uvicorn's own handling would close the port first and cut streams after a timeout.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
import sys
from typing import Callable, Optional

import uvicorn

from tunesmith.serve.config import ServeConfig
from tunesmith.errors import ServeError
from tunesmith.serve.app import build_app
from tunesmith.serve.state import ServeState, create_state

log = logging.getLogger("tunesmith.serve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServeState):
        super().__init__(config)
        self.serve_state = state

    def handle_exit(self, sig: int, frame) -> None:
        state = self.serve_state
        if state.draining:
            self.should_exit = self.force_exit = True
            return
        state.draining = True
        log.info("received %s: refusing new requests, finishing %d in flight",
                 signal.Signals(sig).name, state.active_requests)

    async def on_tick(self, counter: int) -> bool:
        state = self.serve_state
        if state.draining and state.active_requests == 0 and state.engine.idle:
            self.should_exit = True
        return await super().on_tick(counter)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before the model loads, so a taken port is a clean user error rather than a traceback."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                         hint="pick another --port, or stop the process using it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(cfg: ServeConfig, *, announce: Optional[Callable[[str], None]] = None) -> None:
    """Serve `cfg` until stopped. `announce` receives one line with the URL once the port is bound."""
    say = announce or (lambda line: print(line, file=sys.stderr, flush=True))
    logging.basicConfig(level=cfg.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    sock = bind_socket(cfg.host, cfg.port)
    try:
        state = create_state(cfg)
        if not _is_loopback(cfg.host) and not state.api_key:
            log.warning("serving on %s without an API key: anyone who can reach this port can use the model; "
                        "set --api-key or TUNESMITH_API_KEY", cfg.host)
        app = build_app(state=state)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        names = ", ".join([state.base.name, *state.registry.names()])
        say(f"tunesmith serve: http://{shown}:{port}/v1 (models: {names})")
        config = uvicorn.Config(app, log_level=cfg.log_level, access_log=cfg.log_level == "debug",
                                lifespan="on", timeout_keep_alive=5)
        DrainingServer(config, state).run(sockets=[sock])
    finally:
        sock.close()
