"""`tunesmith serve`: load the model, bind the port, serve until SIGTERM/SIGINT, drain, exit.

On the first SIGTERM or Ctrl-C the server keeps its port open but answers new requests with 503
(so a load balancer moves traffic elsewhere instead of seeing refused connections), lets the
requests in flight finish, and exits with status 0 once none is left, or after `drain_timeout`
seconds whatever is left. A second signal exits at once, without waiting for any thread.
uvicorn's own handling would close the port first and cut streams after a timeout.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Callable, Optional

import uvicorn

from tunesmith.serve.config import ServeConfig
from tunesmith.serve.listen import bind_socket, is_loopback
from tunesmith.serve.app import build_app
from tunesmith.serve.state import ServeState, create_state, resolve_api_key
from tunesmith.serve.threads import apply_thread_limits
from tunesmith.serve.timeouts import header_protocol

# The header block of one request (h11's default is 16 KiB as well); a larger one gets 431/400.
MAX_HEADER_BYTES = 16 * 1024

log = logging.getLogger("tunesmith.serve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServeState):
        super().__init__(config)
        self.serve_state = state

        self.drain_deadline: Optional[float] = None

    def handle_exit(self, sig: int, frame) -> None:
        state = self.serve_state
        if state.draining:
            # Exit now: a thread stuck in a model call or a hostile template must not keep the
            # process alive, and Python's exit would wait for every worker thread.
            log.warning("received %s again: exiting now", signal.Signals(sig).name)
            logging.shutdown()
            os._exit(128 + sig)
        state.draining = True
        self.drain_deadline = time.monotonic() + state.cfg.drain_timeout
        log.info("received %s: refusing new requests, finishing %d in flight (for at most %g s)",
                 signal.Signals(sig).name, state.active_requests, state.cfg.drain_timeout)

    async def on_tick(self, counter: int) -> bool:
        state = self.serve_state
        if state.draining and state.active_requests == 0 and state.engine.idle:
            self.should_exit = True
        elif state.draining and self.drain_deadline is not None and time.monotonic() > self.drain_deadline:
            log.warning("drain timeout (%g s) passed with %d request(s) in flight; exiting",
                        state.cfg.drain_timeout, state.active_requests)
            self.should_exit = self.force_exit = True
        return await super().on_tick(counter)


def uvicorn_config(app, cfg: ServeConfig) -> uvicorn.Config:
    """uvicorn's settings for `tunesmith serve`: h11 with a header deadline, short keep-alive,
    bounded header size, and a bounded wait for tasks once the server decides to exit."""
    return uvicorn.Config(app, log_level=cfg.log_level, access_log=cfg.log_level == "debug", lifespan="on",
                          http=header_protocol(cfg.header_timeout), timeout_keep_alive=5,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES, timeout_graceful_shutdown=5)


def run(cfg: ServeConfig, *, announce: Optional[Callable[[str], None]] = None) -> None:
    """Serve `cfg` until stopped. `announce` receives one line with the URL once the port is bound."""
    say = announce or (lambda line: print(line, file=sys.stderr, flush=True))
    logging.basicConfig(level=cfg.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    resolve_api_key(cfg)  # an empty key is refused before any work
    sock = bind_socket(cfg.host, cfg.port)
    try:
        apply_thread_limits(cfg.threads)
        state = create_state(cfg)
        if not is_loopback(cfg.host) and not state.api_key:
            log.warning("serving on %s without an API key: anyone who can reach this port can use the model; "
                        "set --api-key or TUNESMITH_API_KEY", cfg.host)
        app = build_app(state=state)
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        names = ", ".join([state.base.name, *state.registry.names()])
        say(f"tunesmith serve: http://{shown}:{port}/v1 (models: {names})")
        DrainingServer(uvicorn_config(app, cfg), state).run(sockets=[sock])
    finally:
        sock.close()
